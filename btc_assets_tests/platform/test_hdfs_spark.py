"""HDFS on the local stack: write through the storage resource, read through Spark via hdfs://, a Hadoop Streaming job, and Spark reading Kafka into HDFS."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import psutil
import pytest

from btc_assets.clients.hadoop_streaming import StreamingJob
from btc_assets.clients.storage import StorageError

pytestmark = pytest.mark.beside_the_live_stream  # run in the supervision test's healthy window: conftest.py


def test_storage_write_then_spark_reads_hdfs(resources, spark, unique):
    storage = resources["storage"].storage
    path = storage.path(f"tests/{unique}/prices.csv")
    rows = [f"{minute},{80_000 + minute * 1.5}" for minute in range(1_000)]
    written = storage.replace(path, ("\n".join(rows) + "\n").encode())
    assert storage.fs.status(path).length == written
    assert not storage.fs.exists(path + "._tmp")

    url = storage.url(path)
    assert url.startswith("hdfs://")
    frame = spark.read.csv(url, schema="minute INT, price DOUBLE")
    assert frame.count() == 1_000
    assert frame.agg({"price": "max"}).first()[0] == 80_000 + 999 * 1.5
    storage.fs.delete(storage.path(f"tests/{unique}"), recursive=True)


def test_batch_sessions_run_their_driver_with_the_configured_java_options(spark):
    """BTC_SPARK_DRIVER_JAVA_OPTIONS reaches the driver JVM; 'none' (the default) leaves the JVM's own defaults."""
    from btc_assets import config
    from btc_assets.clients.spark import SparkSettings

    assert config.default("BTC_SPARK_DRIVER_JAVA_OPTIONS") == "none"
    # (Spark fills spark.driver.extraJavaOptions itself with the module opens Java 17 needs)
    assert "TieredStopAtLevel" not in dict(spark.sparkContext.getConf().getAll()).get("spark.driver.extraJavaOptions", "")
    # the JIT the session's JVM really runs: tiered compilation up to C2 (level 4), as the JVM ships
    flag = spark._jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        spark._jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
    assert flag.getVMOption("TieredStopAtLevel").getValue() == "4"
    for unset in ("none", " None ", ""):
        assert "spark.driver.extraJavaOptions" not in SparkSettings(driver_java_options=unset).conf()
    assert SparkSettings(driver_java_options=" -XX:+UseParallelGC ").conf()["spark.driver.extraJavaOptions"] == \
        "-XX:+UseParallelGC"


def test_the_stacks_jvms_keep_their_temporary_files_out_of_tmp(stack):
    """The NameNode's web server unpacks its webapp into the JVM's temporary directory: the daemon's own, not
    /tmp, where every killed daemon used to leave one behind."""
    hadoop = stack.services["hadoop"]
    started = psutil.Process(hadoop.namenode.pid()).create_time()
    assert list(hadoop.namenode.tmp_dir.glob("jetty-*")), sorted(hadoop.namenode.tmp_dir.iterdir())
    port = hadoop._port("namenode_http")
    assert not [path for path in Path("/tmp").glob(f"jetty-*-{port}-*") if path.stat().st_mtime >= started - 1]


def test_missing_path_is_a_clear_error(resources, unique):
    fs = resources["storage"].storage.fs
    assert fs.status(f"/btc/tests/{unique}/absent") is None
    try:
        fs.read(f"/btc/tests/{unique}/absent")
    except StorageError as error:
        assert "absent" in str(error) and "404" in str(error)
    else:
        raise AssertionError("reading a missing file must fail")


def test_hadoop_streaming_job_over_hdfs(resources, tmp_path, unique):
    storage = resources["storage"].storage
    words = ["kafka", "spark", "hdfs", "influx", "kafka", "kafka", "spark"] * 500
    source = storage.path(f"tests/{unique}/words.txt")
    storage.replace(source, ("\n".join(words) + "\n").encode())

    mapper = tmp_path / "wc_mapper.py"
    mapper.write_text(textwrap.dedent("""\
        import sys
        for line in sys.stdin:
            for word in line.split():
                print(f"{word}\\t1")
        print("reporter:counter:test,lines,1", file=sys.stderr)
    """))
    reducer = tmp_path / "wc_reducer.py"
    reducer.write_text(textwrap.dedent("""\
        import sys
        from itertools import groupby
        pairs = (line.rstrip("\\n").split("\\t") for line in sys.stdin)
        for word, group in groupby(pairs, key=lambda pair: pair[0]):
            print(f"{word}\\t{sum(int(count) for _, count in group)}")
    """))
    output = storage.path(f"tests/{unique}/counts")
    counters = resources["mapreduce"].run(StreamingJob(
        mapper=str(mapper), reducer=str(reducer), inputs=[storage.url(source)], output=storage.url(output)))

    parts = [status.path for status in storage.fs.list(output) if status.path.rsplit("/", 1)[-1].startswith("part-")]
    counts = dict(line.split("\t") for part in parts
                  for line in storage.fs.read(part).decode().splitlines())
    assert {word: int(count) for word, count in counts.items()} == {"kafka": 1500, "spark": 1000,
                                                                    "hdfs": 500, "influx": 500}
    assert counters["Map-Reduce Framework.Map input records"] == len(words)
    assert counters["test.lines"] >= 1
    storage.fs.delete(storage.path(f"tests/{unique}"), recursive=True)


def test_spark_reads_kafka_and_writes_hdfs(resources, spark, unique):
    kafka = resources["kafka"]
    topic = f"spark-test-{unique}"
    kafka.ensure_trade_topics([topic])
    producer = kafka.producer()
    for trade_id in range(2_000):
        producer.send(topic, key=str(trade_id).encode(),
                      value=json.dumps({"t": trade_id, "p": str(80_000 + trade_id)}).encode())
    producer.flush()
    producer.close()

    frame = (spark.read.format("kafka")
             .option("kafka.bootstrap.servers", kafka.bootstrap_servers)
             .option("subscribe", topic)
             .option("startingOffsets", "earliest").option("endingOffsets", "latest")
             .load()
             .selectExpr("CAST(get_json_object(CAST(value AS STRING), '$.t') AS BIGINT) AS trade_id",
                         "partition"))
    storage = resources["storage"].storage
    target = storage.url(storage.path(f"tests/{unique}/from-kafka"))
    frame.write.mode("overwrite").parquet(target)

    back = spark.read.parquet(target)
    assert back.count() == 2_000
    assert sorted(row.trade_id for row in back.select("trade_id").collect()) == list(range(2_000))
    assert {row.partition for row in back.select("partition").distinct().collect()} == {0, 1, 2}
    storage.fs.delete(storage.path(f"tests/{unique}"), recursive=True)

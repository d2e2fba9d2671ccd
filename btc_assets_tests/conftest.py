"""Session fixtures: the real local stack (Kafka, HDFS, Spark, InfluxDB), started once per test run."""

from __future__ import annotations

import os
import uuid

import pytest

from btc_assets.lib import config


@pytest.fixture(scope="session")
def stack():
    """The local stack, up for the whole session; stopped at the end only if this session started it.

    ``BTC_KEEP_STACK=1`` leaves it running for the next run (faster local iteration).
    """
    from btc_assets.lib.stack.manager import LocalStack

    local = LocalStack()
    started_here = not local.is_up()
    local.up()
    local.apply_env()
    config.load_profile_env()
    yield local
    if started_here and os.environ.get("BTC_KEEP_STACK") != "1":
        from btc_assets.lib.stream_service import StreamServices

        StreamServices(local.paths.state_dir).stop_all()
        local.down()


@pytest.fixture(scope="session")
def resources(stack):
    """The code location's resources with their EnvVars resolved against the running stack."""
    from btc_assets.defs.resources import (InfluxResource, KafkaResource, MapReduceResource, SparkResource,
                                           StorageResource)

    env = os.environ
    return {
        "storage": StorageResource(filesystem_url=env["BTC_HDFS_URL"], webhdfs_url=env["BTC_WEBHDFS_URL"],
                                   user=env.get("BTC_HDFS_USER", ""), root=env["BTC_STORAGE_ROOT"]),
        "kafka": KafkaResource(bootstrap_servers=env["BTC_KAFKA_BOOTSTRAP_SERVERS"],
                               topic_template=env["BTC_KAFKA_TOPIC_TEMPLATE"],
                               partitions=int(env["BTC_KAFKA_PARTITIONS"])),
        "spark": SparkResource(master=env["BTC_SPARK_MASTER"], driver_memory=env["BTC_SPARK_DRIVER_MEMORY"],
                               jars=env["BTC_SPARK_JARS"], packages=env.get("BTC_SPARK_PACKAGES", ""),
                               hdfs_url=env["BTC_HDFS_URL"]),
        "mapreduce": MapReduceResource(framework="local", hadoop_classpath=env["BTC_HADOOP_CLASSPATH"],
                                       streaming_jar=env["BTC_HADOOP_STREAMING_JAR"],
                                       conf_dir=env["HADOOP_CONF_DIR"], hdfs_url=env["BTC_HDFS_URL"]),
        "influx": InfluxResource(url=env["BTC_INFLUX_URL"], org=env["BTC_INFLUX_ORG"],
                                 bucket=env["BTC_INFLUX_BUCKET"], write_token=env["BTC_INFLUX_WRITE_TOKEN"],
                                 read_token=env["BTC_INFLUX_READ_TOKEN"], admin_token=env["BTC_INFLUX_TOKEN"]),
    }


@pytest.fixture(scope="session")
def spark(resources):
    """One Spark session for the whole run (a JVM start costs seconds)."""
    session = resources["spark"].session("btc-pipeline-tests")
    yield session
    session.stop()


@pytest.fixture
def unique():
    """A short unique suffix so tests never collide on topic, bucket or path names."""
    return uuid.uuid4().hex[:10]

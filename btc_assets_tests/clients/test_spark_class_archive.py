"""Spark drivers map their classes from the local stack's class-data archive (``BTC_SPARK_CLASS_ARCHIVE``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from btc_assets.clients.spark import SparkSettings

# A session as the stream job builds it (its ParallelGC options after the archive's), a first query, and -Xshare:on:
# the JVM refuses to start unless it can map the archive with this classpath, so an archive that does not fit
# fails here instead of silently costing seconds at every start.
SESSION = """
import sys
from btc_assets.clients.spark import SparkSettings, build_session
spark = build_session(SparkSettings(app_name="btc-archive-test", jars=sys.argv[1], class_archive=sys.argv[2],
                                    driver_java_options="-XX:+UseParallelGC -Xshare:on -Xlog:class+load=info:file="
                                                        + sys.argv[3]))
assert spark.range(1000).selectExpr("id % 7 AS k").groupBy("k").count().count() == 7
spark.stop()
"""


def test_spark_drivers_map_their_classes_from_the_stacks_archive(stack, tmp_path):
    archive = os.environ["BTC_SPARK_CLASS_ARCHIVE"]
    assert archive and Path(archive).is_file(), "the stack's provisioning dumps one into its cache"
    loaded = tmp_path / "classes.log"
    result = subprocess.run([sys.executable, "-c", SESSION, os.environ["BTC_SPARK_JARS"], archive, str(loaded)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    spark_classes = [line for line in loaded.read_text().splitlines() if " org.apache.spark." in line]
    shared = [line for line in spark_classes if "source: shared objects file (top)" in line]
    (context,) = [line for line in spark_classes if " org.apache.spark.SparkContext source:" in line]
    assert "shared objects file (top)" in context, context
    # Nearly all of Spark's classes a first query needs come from the archive, few from the jars (the rest are
    # lambdas and generated code, made at run time whatever the archive).
    from_jars = [line for line in spark_classes if "source: file:" in line or "source: jar:" in line]
    assert len(shared) > 20 * len(from_jars), (len(shared), from_jars[:20])


def test_the_archive_options_come_before_the_users_and_only_for_a_real_file(tmp_path):
    archive = tmp_path / "driver.jsa"
    assert "spark.driver.extraJavaOptions" not in SparkSettings(class_archive=str(archive)).conf()  # no such file
    archive.write_bytes(b"")
    options = SparkSettings(class_archive=str(archive), driver_java_options="-XX:+UseParallelGC").conf()[
        "spark.driver.extraJavaOptions"]
    assert options.startswith(f"-XX:SharedArchiveFile={archive} -Xshare:auto") and options.endswith(" -XX:+UseParallelGC")
    assert SparkSettings(class_archive=str(archive), driver_java_options="none").conf()[
        "spark.driver.extraJavaOptions"].startswith("-XX:SharedArchiveFile=")


def test_archives_of_pyspark_installs_that_are_gone_are_deleted_and_live_ones_kept(tmp_path):
    from btc_localstack.spark import prune_class_archives

    cache = tmp_path / "spark-4.2.0"
    cache.mkdir()
    venv = tmp_path / "checkout" / "pyspark"  # a pyspark install that still exists
    (venv / "jars").mkdir(parents=True)

    def archive(name: str, home: Path | None, age: float) -> Path:
        path = cache / f"driver-classes-{name}.jsa"
        path.write_bytes(b"archive")
        if home is not None:
            Path(f"{path}.home").write_text(str(home))
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    keep = archive("current", venv, 0)
    live = [archive(f"live{index}", venv, 10 * (index + 1)) for index in range(4)]  # the newest first
    gone = archive("gone", tmp_path / "deleted-checkout" / "pyspark", 1)  # its venv was deleted
    unnamed = archive("unnamed", None, 1)  # dumped before the .home files: its install is unknown
    deleted = prune_class_archives(keep)
    assert set(deleted) == {gone, unnamed, live[3]}  # and of the live ones, the newest 3 beside the current stay
    assert keep.exists() and all(path.exists() for path in live[:3])
    assert not gone.exists() and not Path(f"{gone}.home").exists() and not live[3].exists()

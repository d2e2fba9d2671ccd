"""Spark drivers map their classes from the local stack's class-data archive (``BTC_SPARK_CLASS_ARCHIVE``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from btc_assets.clients.spark import SPARK_HOME_MARKER, SparkSettings, spark_home_of

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
    # In a Spark home of the cache, outside the venv: the next venv's drivers map it too.
    assert spark_home_of(archive) is not None and not Path(archive).is_relative_to(sys.prefix), archive
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


def test_every_install_of_one_pyspark_build_shares_one_spark_home_and_its_archive(tmp_path):
    from btc_localstack.spark import link_spark_home, spark_home_path

    def install(where: str, age: float) -> Path:  # a pyspark install: its jars, with its install's times
        home = tmp_path / where / "pyspark"
        for part, name, size in (("jars", "spark-core_2.13-4.0.0.jar", 300), ("jars", "scala-library-2.13.jar", 200),
                                 ("bin", "spark-submit", 10)):
            (home / part).mkdir(parents=True, exist_ok=True)
            (home / part / name).write_bytes(b"x" * size)
            os.utime(home / part / name, (time.time() - age, time.time() - age))
        return home

    first, second = install("checkout-a/.venv", 100), install("checkout-b/.venv", 5)
    cache = tmp_path / "cache" / "4.0.0"
    home = spark_home_path(cache, first, "4.0.0")
    assert spark_home_path(cache, second, "4.0.0") == home  # another venv, other times: the same home
    assert link_spark_home(first, home, "4.0.0") == home
    jar = home / "jars" / "spark-core_2.13-4.0.0.jar"
    dumped_with = jar.stat().st_mtime_ns
    shutil.rmtree(first.parent.parent)  # the venv the home was made from is deleted
    assert link_spark_home(second, home, "4.0.0") == home and jar.stat().st_mtime_ns == dumped_with  # kept as is
    assert (home / "bin" / "spark-submit").is_file() and (home / SPARK_HOME_MARKER).read_text() == "4.0.0"
    (second / "jars" / "spark-core_2.13-4.0.0.jar").write_bytes(b"x" * 301)  # another build of that version
    assert spark_home_path(cache, second, "4.0.0") != home


def test_a_driver_runs_from_the_archives_spark_home_only_when_made_for_this_pyspark(tmp_path):
    import pyspark

    home = tmp_path / "home-0"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "spark-submit").write_text("")
    archive = home / "driver-classes-0.jsa"
    assert spark_home_of(archive) is None  # no marker: not a home the stack made
    (home / SPARK_HOME_MARKER).write_text("0.0.1")
    assert spark_home_of(archive) is None  # made for another pyspark
    (home / SPARK_HOME_MARKER).write_text(pyspark.__version__)
    assert spark_home_of(archive) == home and spark_home_of("") is None


def test_other_builds_homes_beyond_the_last_used_and_the_old_layouts_archives_are_deleted(tmp_path):
    from btc_localstack.spark import prune_spark_homes

    cache = tmp_path / "spark"

    def home(version: str, name: str, age: float) -> Path:
        path = cache / version / f"home-{name}"
        (path / "jars").mkdir(parents=True)
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    keep = home("4.0.0", "current", 50)  # in use, though not the newest
    others = [home("4.0.0", "a", 1), home("3.5.1", "b", 10), home("4.0.0", "c", 20)]  # used last first
    legacy = cache / "4.0.0" / "driver-classes-0123.jsa"  # one archive per venv, before homes
    legacy.write_bytes(b"archive")
    Path(f"{legacy}.home").write_text("/gone/pyspark")
    deleted = prune_spark_homes(keep)
    assert set(deleted) == {others[2], legacy, Path(f"{legacy}.home")}
    assert keep.is_dir() and others[0].is_dir() and others[1].is_dir() and not others[2].exists()
    assert not legacy.exists() and (cache / "4.0.0").is_dir()

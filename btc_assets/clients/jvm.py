"""The one Java check: which JDK the JVM engines and clients (Hadoop, Kafka) run on, and whether it fits; the
HDFS client settings every JVM client of the project (Spark, MapReduce) runs with; and the options that start a
JVM from a class-data sharing archive."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


class JavaError(RuntimeError):
    """No usable JDK; the message says which one was found and what to install or set."""


def java_home() -> Path:
    """The JDK in use: ``JAVA_HOME`` if set, else the one of the ``java`` on PATH."""
    if os.environ.get("JAVA_HOME"):
        home = Path(os.environ["JAVA_HOME"])
        if (home / "bin" / "java").exists():
            return home
        raise JavaError(f"JAVA_HOME={home} has no bin/java; point it at a JDK 17 or unset it")
    java = shutil.which("java")
    if not java:
        raise JavaError("Java is missing: install a JDK 17 (e.g. `apt-get install openjdk-17-jdk-headless`)")
    return Path(java).resolve().parents[1]


def java_major(home: Path) -> int | None:
    """The major version of the JDK at ``home`` (from its ``release`` file), or None if unknown."""
    try:
        text = (home / "release").read_text()
    except OSError:
        return None
    match = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.M)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def java_executable(component: str, minimum: int, maximum: int | None = None, why: str = "") -> Path:
    """``bin/java`` of the JDK in use, if its major version is within ``minimum..maximum``; else a clear error.

    An unknown version (no ``release`` file) is let through: the engine's own start-up then says more.
    """
    home = java_home()
    major = java_major(home)
    if major is not None and (major < minimum or (maximum is not None and major > maximum)):
        wanted = f"Java {minimum}-{maximum}" if maximum else f"Java {minimum}+"
        raise JavaError(f"{component} needs {wanted}{f' ({why})' if why else ''}, but {home} is Java {major}; "
                        "point JAVA_HOME at a JDK 17 (e.g. /usr/lib/jvm/java-17-openjdk-amd64)")
    return home / "bin" / "java"


# Closing an HDFS file asks the NameNode to complete it. When the DataNode's report of the file's last block has not
# reached the NameNode yet, a race every small write runs, the client sleeps 400 ms (Hadoop's default first delay)
# before asking again. A streaming checkpoint writes two small files per micro-batch: measured here, a 200-trade
# batch took 592 ms at p50 with the default and 168 ms with 10 ms (bench/stream_bench.py --stage batches). The
# delay doubles on each try; 11 tries give up after ~20 s, where the defaults (400 ms, 5 tries) gave up after ~12 s.
HDFS_CLIENT_CONF = {
    "dfs.client.block.write.locateFollowingBlock.initial.delay.ms": "10",
    "dfs.client.block.write.locateFollowingBlock.retries": "11",
}


def class_archive_opts(archive: str | Path | None) -> list[str]:
    """JVM options that map classes from a class-data sharing archive (JDK AppCDS: ``BTC_HADOOP_CLASS_ARCHIVE``
    for the MapReduce job, ``BTC_SPARK_CLASS_ARCHIVE`` for Spark drivers, each dumped by the local stack from the
    same jars by the same JVM), instead of loading and verifying them from the jars at every start. Nothing when
    there is no such file; an archive from another JVM or other jars is ignored by the JVM (``-Xshare:auto``),
    which then loads the classes as usual."""
    if not archive or not Path(archive).is_file():
        return []
    return [f"-XX:SharedArchiveFile={archive}", "-Xshare:auto", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]

"""Spark sessions configured for the pipeline: the Kafka connector on the classpath, HDFS as default FS."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from btc_assets.clients.jvm import HDFS_CLIENT_CONF, class_archive_opts


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[2]"
    app_name: str = "btc-pipeline"
    driver_memory: str = "2g"
    jars: str = ""                 # comma-separated local jars (the local stack's Kafka connector)
    packages: str = ""             # Maven coordinates Spark resolves itself (cluster profile)
    ivy_dir: str = ""
    hdfs_url: str = ""             # becomes fs.defaultFS
    driver_host: str = ""          # BTC_SPARK_DRIVER_HOST (see driver_address)
    python: str = ""               # BTC_SPARK_PYTHON: the executors' Python
    executor_memory: str = "1g"    # BTC_SPARK_EXECUTOR_MEMORY (cluster masters)
    cores_max: str = ""            # BTC_SPARK_CORES_MAX (standalone masters)
    driver_java_options: str = ""  # spark.driver.extraJavaOptions ("" or "none": the JVM's defaults)
    class_archive: str = ""        # BTC_SPARK_CLASS_ARCHIVE: the driver JVM maps Spark's classes from it
    extra: dict[str, str] = field(default_factory=dict)

    def driver_address(self) -> dict[str, str]:
        """Where executors reach the driver: loopback in local mode (nothing else can), else ``driver_host``
        or this host's resolved address; the driver listens on every interface then."""
        if self.master.startswith("local"):
            return {"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": self.driver_host or "127.0.0.1"}
        host = self.driver_host or socket.gethostbyname(socket.gethostname())
        bind = "127.0.0.1" if host.startswith("127.") else "0.0.0.0"
        return {"spark.driver.bindAddress": bind, "spark.driver.host": host}

    def conf(self) -> dict[str, str]:
        conf = {
            "spark.master": self.master,
            "spark.app.name": self.app_name,
            "spark.driver.memory": self.driver_memory,
            # Two cores: a few shuffle partitions beat Spark's default 200 tiny tasks.
            "spark.sql.shuffle.partitions": "4",
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            **self.driver_address(),
        }
        if self.jars:
            conf["spark.jars"] = self.jars
        if self.packages:
            conf["spark.jars.packages"] = self.packages
        if self.ivy_dir:
            conf["spark.jars.ivy"] = self.ivy_dir
        if self.hdfs_url:
            conf["spark.hadoop.fs.defaultFS"] = self.hdfs_url
        conf.update({f"spark.hadoop.{key}": value for key, value in HDFS_CLIENT_CONF.items()})
        if not self.master.startswith("local"):
            conf["spark.executor.memory"] = self.executor_memory
            # The project, shipped to the executors the way spark-submit --py-files ships it.
            conf["spark.submit.pyFiles"] = str(project_archive())
            if self.cores_max:
                conf["spark.cores.max"] = self.cores_max
        if self.python:
            conf["spark.pyspark.python"] = self.python
        # The archive's options before the user's, so a user's -Xshare or -Xlog wins.
        users = self.driver_java_options.strip()
        java_options = class_archive_opts(self.class_archive) + ([users] if users and users.lower() != "none" else [])
        if java_options:
            conf["spark.driver.extraJavaOptions"] = " ".join(java_options)
        conf.update(self.extra)
        return conf


def project_archive() -> Path:
    """``btc_assets`` as a zip for ``--py-files``/``spark.submit.pyFiles``: built once per content, in the temp dir."""
    package = Path(__file__).resolve().parents[1]
    files = sorted(path for path in package.rglob("*.py") if "__pycache__" not in path.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    target = Path(tempfile.gettempdir()) / f"btc_assets-{digest.hexdigest()[:12]}.zip"
    if not target.exists():
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, Path("btc_assets") / path.relative_to(package))
        partial.rename(target)
    return target


def build_session(settings: SparkSettings):
    """Get or create the process's SparkSession with these settings."""
    from pyspark.sql import SparkSession

    # pyspark takes the executors' Python from PYSPARK_PYTHON when the context starts (not from
    # spark.pyspark.python): BTC_SPARK_PYTHON if set; in local mode this interpreter's environment (XGBoost's
    # training task needs its packages), not whatever python3 is first on PATH.
    if settings.python:
        os.environ["PYSPARK_PYTHON"] = settings.python
    elif settings.master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in settings.conf().items():
        builder = builder.config(key, value)
    return builder.getOrCreate()

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

# In a Spark home the local stack made for a pyspark build (btc_localstack.spark.link_spark_home): its version.
SPARK_HOME_MARKER = ".pyspark-version"


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


def spark_home_of(archive: str | Path | None) -> Path | None:
    """The Spark home a driver archive was dumped from when the local stack made it for this very pyspark
    (``SPARK_HOME_MARKER`` beside the archive): the archive maps only with that home's jars on the classpath."""
    import pyspark

    if not archive:
        return None
    home = Path(archive).parent
    try:
        made_for = (home / SPARK_HOME_MARKER).read_text().strip()
    except OSError:
        return None
    return home if made_for == pyspark.__version__ and (home / "bin" / "spark-submit").is_file() else None


def build_session(settings: SparkSettings):
    """Get or create the process's SparkSession with these settings."""
    from pyspark.sql import SparkSession

    # The driver runs from the Spark home its class-data archive was dumped from (the same pyspark's jars at a
    # path that outlives venvs), unless SPARK_HOME names another Spark: then the JVM ignores the archive.
    home = spark_home_of(settings.class_archive)
    if home is not None:
        os.environ.setdefault("SPARK_HOME", str(home))

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

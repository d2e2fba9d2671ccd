"""Spark sessions configured for the pipeline: the Kafka connector on the classpath, HDFS as default FS."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field


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
        conf.update(self.extra)
        return conf


def build_session(settings: SparkSettings):
    """Get or create the process's SparkSession with these settings."""
    from pyspark.sql import SparkSession

    if settings.master.startswith("local"):
        # Python workers (XGBoost's training task) run in this interpreter's environment, not whatever python3
        # is first on PATH: pyspark reads PYSPARK_PYTHON when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in settings.conf().items():
        builder = builder.config(key, value)
    return builder.getOrCreate()

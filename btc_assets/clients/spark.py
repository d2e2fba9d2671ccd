"""Spark sessions configured for the pipeline: the Kafka connector on the classpath, HDFS as default FS."""

from __future__ import annotations

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
    extra: dict[str, str] = field(default_factory=dict)

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
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
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

    builder = SparkSession.builder
    for key, value in settings.conf().items():
        builder = builder.config(key, value)
    return builder.getOrCreate()

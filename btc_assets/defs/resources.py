"""One Dagster resource per cluster component, and the resource set for the active profile.

Every endpoint and credential is a ``dg.EnvVar``: resolved when a run starts, never at import, so
secrets are not frozen into the definitions or shown in the UI. Connections open lazily on first
use, so loading the code location never touches a cluster.

Profiles (``BTC_PROFILE``): ``local`` reads the endpoints the local stack wrote to its env file
(loaded by ``btc_assets.definitions``); ``cluster`` takes them from the environment (docker compose's
``.env`` or your own services). The resource classes are the same; only configuration differs.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
import subprocess
import tempfile
import time
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from btc_assets.lib import kafka_io
from btc_assets.lib.hdfs import Storage
from btc_assets.lib.influx import Influx
from btc_assets.lib.spark import SparkSettings, build_session


class StorageResource(dg.ConfigurableResource):
    """The storage root of the contract's layout: HDFS (via WebHDFS) or a ``file://`` directory."""

    filesystem_url: str = "hdfs://127.0.0.1:8020"
    webhdfs_url: str = "http://127.0.0.1:9870"
    user: str = ""
    root: str = "/btc"

    _storage: Storage | None = PrivateAttr(default=None)

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = Storage.for_url(self.filesystem_url, self.root, webhdfs_url=self.webhdfs_url,
                                            user=self.user or None)
        return self._storage


class KafkaResource(dg.ConfigurableResource):
    """Kafka: the trade topics (one per symbol), producers, consumers and offsets."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_template: str = "{symbol}-TRADES"
    partitions: int = 3
    replication: int = 1

    def topic(self, symbol: str) -> str:
        from btc_assets.lib.schema import trade_topic

        return trade_topic(symbol, self.topic_template)

    def ensure_topic(self, name: str, partitions: int | None = None) -> bool:
        return kafka_io.ensure_topic(self.bootstrap_servers, name, partitions=partitions or self.partitions,
                                     replication=self.replication)

    def producer(self, **overrides):
        return kafka_io.producer(self.bootstrap_servers, **overrides)

    def consumer(self, *topics: str, **overrides):
        return kafka_io.consumer(self.bootstrap_servers, *topics, **overrides)

    def end_offsets(self, topic: str) -> dict[int, int]:
        return kafka_io.end_offsets(self.bootstrap_servers, topic)


class SparkResource(dg.ConfigurableResource):
    """A Spark session (local mode or a cluster master) with the Kafka connector and HDFS configured."""

    master: str = "local[2]"
    driver_memory: str = "2g"
    jars: str = ""
    packages: str = ""
    ivy_dir: str = ""
    hdfs_url: str = ""

    def settings(self, app_name: str = "btc-pipeline") -> SparkSettings:
        return SparkSettings(master=self.master, app_name=app_name, driver_memory=self.driver_memory,
                             jars=self.jars, packages=self.packages, ivy_dir=self.ivy_dir,
                             hdfs_url=self.hdfs_url)

    def session(self, app_name: str = "btc-pipeline"):
        """The session, created on first use (so runs that never touch Spark never start a JVM)."""
        return build_session(self.settings(app_name))


class MapReduceResource(dg.ConfigurableResource):
    """Hadoop Streaming jobs: LocalJobRunner against HDFS (local profile) or YARN (cluster)."""

    framework: str = "local"
    hadoop_classpath: str = ""
    streaming_jar: str = ""
    conf_dir: str = ""
    hdfs_url: str = "hdfs://127.0.0.1:8020"
    heap: str = "1g"

    def command(self, *, mapper: str, reducer: str | None, inputs: list[str], output: str,
                files: list[str] = (), conf: dict[str, str] | None = None) -> list[str]:
        """The streaming command line; ``mapper``/``reducer`` are Python script paths, shipped with
        ``-files`` and run with this interpreter (local) or ``python3`` on the cluster's nodes."""
        from btc_assets.lib.stack.hadoop import streaming_command

        settings = {"mapreduce.framework.name": self.framework, "fs.defaultFS": self.hdfs_url}
        settings.update(conf or {})
        if self.hadoop_classpath:
            return streaming_command(self.hadoop_classpath, self.conf_dir or None, mapper, reducer, inputs,
                                     output, files=list(files), extra_conf=settings, heap=self.heap)
        # A cluster client: the `hadoop` launcher of the user's Hadoop installation.
        command = ["hadoop", "jar", self.streaming_jar]
        for key, value in settings.items():
            command += ["-D", f"{key}={value}"]
        command += ["-files", ",".join([mapper, *([reducer] if reducer else []), *files])]
        for path in inputs:
            command += ["-input", path]
        command += ["-output", output, "-mapper", f"python3 {Path(mapper).name}"]
        return command + (["-reducer", f"python3 {Path(reducer).name}"] if reducer else [])

    def run(self, log=None, **job) -> dict[str, int]:
        """Run a streaming job to completion; return its counters (``group.name`` -> value)."""
        command = self.command(**job)
        started = time.monotonic()
        env = dict(os.environ)
        if self.conf_dir:
            env["HADOOP_CONF_DIR"] = self.conf_dir
        # LocalJobRunner links the -files into the JVM's working directory: one fresh one per job.
        with tempfile.TemporaryDirectory(prefix="btc-streaming-") as workdir:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=env, cwd=workdir)
            lines = []
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if log is not None and (" map " in line or "Job " in line or "ERROR" in line):
                    log.info(line.rstrip())
            proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"Hadoop Streaming job failed (exit {proc.returncode}) after "
                               f"{time.monotonic() - started:.0f}s. What the scripts printed:\n"
                               + "\n".join(script_output(lines)[-30:])
                               + "\nThe job's last lines:\n" + "\n".join(lines[-8:]))
        return parse_counters(lines)


JVM_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d|\s+at |\t|java\.|Caused by|Streaming Command|\s*\.\.\. \d+ more)")


def script_output(lines: list[str]) -> list[str]:
    """The lines of a job's output that the mapper/reducer wrote (tracebacks), not Hadoop's own logs."""
    return [line for line in lines if line.strip() and not JVM_LINE.match(line)]


def parse_counters(lines: list[str]) -> dict[str, int]:
    """Counters from a Hadoop job's console output: ``{"group.counter": value}``.

    The job prints ``Counters: N`` and then one tab-indented line per group and a doubly indented
    ``name=value`` line per counter.
    """
    counters: dict[str, int] = {}
    group = None
    in_counters = False
    for line in lines:
        if re.search(r"Counters: \d+\s*$", line):
            in_counters, group = True, None
        elif in_counters and line.startswith("\t\t") and group:
            name, _, value = line.strip().rpartition("=")
            if value.isdigit():
                counters[f"{group}.{name}"] = int(value)
        elif in_counters and line.startswith("\t"):
            group = line.strip()
        else:
            in_counters = False
    return counters


class InfluxResource(dg.ConfigurableResource):
    """InfluxDB 2: writes with the write-only token, queries with the read-only token."""

    url: str = "http://127.0.0.1:8086"
    org: str = "btc"
    bucket: str = "btc"
    write_token: str = ""
    read_token: str = ""
    admin_token: str = ""

    def writer(self) -> Influx:
        return Influx(self.url, self.org, self.bucket, self.write_token)

    def reader(self) -> Influx:
        return Influx(self.url, self.org, self.bucket, self.read_token)

    def admin(self) -> Influx:
        if not self.admin_token:
            raise RuntimeError("this operation needs BTC_INFLUX_TOKEN (an all-access token)")
        return Influx(self.url, self.org, self.bucket, self.admin_token)


def build_resources() -> dict[str, Any]:
    """The resource set. Every value is an ``EnvVar`` resolved at run time from the profile's
    environment (``btc_assets.lib.config.load_profile_env`` fills in the defaults and, for the local
    profile, the stack's endpoints and credentials)."""
    env = dg.EnvVar
    return {
        "storage": StorageResource(filesystem_url=env("BTC_HDFS_URL"), webhdfs_url=env("BTC_WEBHDFS_URL"),
                                   user=env("BTC_HDFS_USER"), root=env("BTC_STORAGE_ROOT")),
        "kafka": KafkaResource(bootstrap_servers=env("BTC_KAFKA_BOOTSTRAP_SERVERS"),
                               topic_template=env("BTC_KAFKA_TOPIC_TEMPLATE"),
                               partitions=env.int("BTC_KAFKA_PARTITIONS"),
                               replication=env.int("BTC_KAFKA_REPLICATION")),
        "spark": SparkResource(master=env("BTC_SPARK_MASTER"), driver_memory=env("BTC_SPARK_DRIVER_MEMORY"),
                               jars=env("BTC_SPARK_JARS"), packages=env("BTC_SPARK_PACKAGES"),
                               ivy_dir=env("BTC_SPARK_IVY_DIR"), hdfs_url=env("BTC_HDFS_URL")),
        "mapreduce": MapReduceResource(framework=env("BTC_MAPREDUCE_FRAMEWORK"),
                                       hadoop_classpath=env("BTC_HADOOP_CLASSPATH"),
                                       streaming_jar=env("BTC_HADOOP_STREAMING_JAR"),
                                       conf_dir=env("HADOOP_CONF_DIR"), hdfs_url=env("BTC_HDFS_URL")),
        "influx": InfluxResource(url=env("BTC_INFLUX_URL"), org=env("BTC_INFLUX_ORG"),
                                 bucket=env("BTC_INFLUX_BUCKET"), write_token=env("BTC_INFLUX_WRITE_TOKEN"),
                                 read_token=env("BTC_INFLUX_READ_TOKEN"), admin_token=env("BTC_INFLUX_TOKEN")),
        "binance_history": BinanceHistoryResource(base_url=env("BTC_BINANCE_HISTORY_URL")),
        "stream": StreamResource(),
    }


class BinanceHistoryResource(dg.ConfigurableResource):
    """data.binance.vision (or the emulator): daily trade zips with their SHA-256 checksums."""

    base_url: str = "https://data.binance.vision"
    retries: int = 5
    backoff_seconds: float = 1.0

    def client(self, log=None):
        from btc_assets.lib.history import HistoryClient

        return HistoryClient(base_url=self.base_url, retries=self.retries, backoff_seconds=self.backoff_seconds,
                             log=log or print)


class StreamResource(dg.ConfigurableResource):
    """The long-running stream services (producer, Spark job) and the thresholds the health sensor uses."""

    checkpoint_name: str = "trades"
    stall_seconds: float = 300.0
    cooldown_seconds: float = 600.0

    def services(self):
        from btc_assets.lib.stream_service import StreamServices

        return StreamServices()

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
import sys
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from btc_assets import config

from btc_assets.clients import kafka as kafka_io
from btc_assets.clients.hadoop_streaming import (LINE_BLOCKS_CLASS, StreamingJob, StreamingJobError, line_blocks_jar,
                                                 run_job, streaming_command)
from btc_assets.clients.storage import Storage
from btc_assets.clients.influx import Influx
from btc_assets.clients.spark import SparkSettings, build_session
from btc_assets.defs.pipes import WholeLinesMessageReader


class StorageResource(dg.ConfigurableResource):
    """The storage root of the contract's layout: HDFS (via WebHDFS) or a ``file://`` directory."""

    filesystem_url: str = config.default("BTC_HDFS_URL")
    webhdfs_url: str = config.default("BTC_WEBHDFS_URL")
    user: str = ""
    root: str = config.default("BTC_STORAGE_ROOT")

    _storage: Storage | None = PrivateAttr(default=None)

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = Storage.for_url(self.filesystem_url, self.root, webhdfs_url=self.webhdfs_url,
                                            user=self.user or None)
        return self._storage


class KafkaResource(dg.ConfigurableResource):
    """Kafka: the trade topics (one per symbol), producers, consumers and offsets."""

    bootstrap_servers: str = config.default("BTC_KAFKA_BOOTSTRAP_SERVERS")
    topic_template: str = config.default("BTC_KAFKA_TOPIC_TEMPLATE")
    partitions: int = int(config.default("BTC_KAFKA_PARTITIONS"))
    replication: int = int(config.default("BTC_KAFKA_REPLICATION"))

    def topic(self, symbol: str) -> str:
        from btc_assets.contracts.schema import trade_topic

        return trade_topic(symbol, self.topic_template)

    def ensure_trade_topics(self, topics: list[str]) -> list[str]:
        """The trade topics and their dead-letter topics, created if missing; returns those created."""
        return kafka_io.ensure_trade_topics(self.bootstrap_servers, topics, partitions=self.partitions,
                                            replication=self.replication)

    def producer(self, **overrides):
        return kafka_io.producer(self.bootstrap_servers, **overrides)

    def consumer(self, *topics: str, **overrides):
        return kafka_io.consumer(self.bootstrap_servers, *topics, **overrides)

    def end_offsets(self, topic: str) -> dict[int, int]:
        return kafka_io.end_offsets(self.bootstrap_servers, topic)


class SparkResource(dg.ConfigurableResource):
    """A Spark session (local mode or a cluster master) with the Kafka connector and HDFS configured."""

    master: str = config.default("BTC_SPARK_MASTER")
    driver_memory: str = config.default("BTC_SPARK_DRIVER_MEMORY")
    jars: str = ""
    packages: str = ""
    ivy_dir: str = ""
    hdfs_url: str = ""
    driver_host: str = ""
    python: str = ""
    executor_memory: str = config.default("BTC_SPARK_EXECUTOR_MEMORY")
    cores_max: str = ""
    driver_java_options: str = config.default("BTC_SPARK_DRIVER_JAVA_OPTIONS")
    class_archive: str = ""

    def settings(self, app_name: str = "btc-pipeline") -> SparkSettings:
        return SparkSettings(master=self.master, app_name=app_name, driver_memory=self.driver_memory,
                             jars=self.jars, packages=self.packages, ivy_dir=self.ivy_dir,
                             hdfs_url=self.hdfs_url, driver_host=self.driver_host, python=self.python,
                             executor_memory=self.executor_memory, cores_max=self.cores_max,
                             driver_java_options=self.driver_java_options, class_archive=self.class_archive)

    def session(self, app_name: str = "btc-pipeline"):
        """The session, created on first use (so runs that never touch Spark never start a JVM)."""
        return build_session(self.settings(app_name))


class MapReduceResource(dg.ConfigurableResource):
    """Hadoop Streaming jobs: LocalJobRunner against HDFS (local profile) or YARN (cluster).

    A job runs as a child process through Dagster Pipes (``PipesSubprocessClient`` around
    ``btc_assets.clients.hadoop_streaming``): its progress lines and counters reach the run, and a
    cancelled run kills the JVM. The messages are read whole (``WholeLinesMessageReader``): Dagster's own
    file reader can catch a message half written and lose the rest of the run's messages.
    """

    framework: str = config.default("BTC_MAPREDUCE_FRAMEWORK")
    hadoop_classpath: str = ""
    streaming_jar: str = ""
    conf_dir: str = ""
    hdfs_url: str = config.default("BTC_HDFS_URL")
    heap: str = "1g"
    class_archive: str = ""
    input: str = config.default("BTC_MAPREDUCE_INPUT")

    def line_input(self) -> tuple[dict, str]:
        """How a job over line files reads them: ``StreamingJob`` fields for the block reader (``input=blocks``),
        or none (TextInputFormat) and the reason when it is ``lines`` or the block reader cannot be built."""
        if self.input not in ("blocks", "lines"):
            raise ValueError(f"BTC_MAPREDUCE_INPUT={self.input!r}: use `blocks` or `lines`")
        if self.input == "lines":
            return {}, "BTC_MAPREDUCE_INPUT=lines"
        try:
            classpath = self.hadoop_classpath or self._hadoop_command_classpath()
            jar = line_blocks_jar(classpath)
        except (StreamingJobError, OSError) as error:
            return {}, f"the block reader could not be built, so the job reads line by line: {error}"
        return {"input_format": LINE_BLOCKS_CLASS, "libjars": [str(jar)],
                # Only the block goes to the mapper, not its byte offset (the key).
                "conf": {"stream.map.input.ignoreKey": "true"}}, ""

    @staticmethod
    def _hadoop_command_classpath() -> str:
        """The jars of a Hadoop installation (``hadoop classpath``), to compile the block reader against."""
        import subprocess
        try:
            listed = subprocess.run(["hadoop", "classpath"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise StreamingJobError(f"`hadoop classpath` failed: {error}") from error
        if listed.returncode != 0:
            raise StreamingJobError(f"`hadoop classpath` failed: {listed.stderr.strip()[-300:]}")
        return listed.stdout.strip()

    def command(self, job: StreamingJob) -> list[str]:
        return streaming_command(job, framework=self.framework, hdfs_url=self.hdfs_url,
                                 classpath=self.hadoop_classpath, conf_dir=self.conf_dir,
                                 streaming_jar=self.streaming_jar, heap=self.heap,
                                 class_archive=self.class_archive)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.conf_dir:
            env["HADOOP_CONF_DIR"] = self.conf_dir
        return env

    def run(self, job: StreamingJob, context: dg.AssetExecutionContext | None = None) -> dict[str, int]:
        """Run a streaming job to completion; return its counters (``group.name`` -> value).

        With a Dagster ``context`` the job goes through Pipes; without one (the benchmark, scripts) the
        same runner function is called in this process.
        """
        command = self.command(job)
        if context is None:
            return run_job(command, env=self.env())
        invocation = dg.PipesSubprocessClient(forward_stdio=False, message_reader=WholeLinesMessageReader()).run(
            context=context, command=[sys.executable, "-m", "btc_assets.clients.hadoop_streaming"],
            extras={"command": command}, env=self.env())
        messages = [message for message in invocation.get_custom_messages() if isinstance(message, dict)]
        for message in messages:
            if "error" in message:
                raise StreamingJobError(message["error"])
        counters = [message["counters"] for message in messages if "counters" in message]
        if not counters:
            raise StreamingJobError("the Hadoop Streaming runner reported no counters; see the run's logs")
        return counters[-1]


class InfluxResource(dg.ConfigurableResource):
    """InfluxDB 2: writes with the write-only token, queries with the read-only token."""

    url: str = config.default("BTC_INFLUX_URL")
    org: str = config.default("BTC_INFLUX_ORG")
    bucket: str = config.default("BTC_INFLUX_BUCKET")
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
    environment: the local stack's ``stack.env`` (which lists every setting, defaults included) or the
    cluster's environment (``.env`` from ``.env.example``). A missing variable fails the run by name."""
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
                               ivy_dir=env("BTC_SPARK_IVY_DIR"), hdfs_url=env("BTC_HDFS_URL"),
                               driver_host=env("BTC_SPARK_DRIVER_HOST"), python=env("BTC_SPARK_PYTHON"),
                               executor_memory=env("BTC_SPARK_EXECUTOR_MEMORY"),
                               cores_max=env("BTC_SPARK_CORES_MAX"),
                               driver_java_options=env("BTC_SPARK_DRIVER_JAVA_OPTIONS"),
                               class_archive=env("BTC_SPARK_CLASS_ARCHIVE")),
        "mapreduce": MapReduceResource(framework=env("BTC_MAPREDUCE_FRAMEWORK"),
                                       hadoop_classpath=env("BTC_HADOOP_CLASSPATH"),
                                       streaming_jar=env("BTC_HADOOP_STREAMING_JAR"),
                                       conf_dir=env("HADOOP_CONF_DIR"), hdfs_url=env("BTC_HDFS_URL"),
                                       class_archive=env("BTC_HADOOP_CLASS_ARCHIVE"),
                                       input=env("BTC_MAPREDUCE_INPUT")),
        "influx": InfluxResource(url=env("BTC_INFLUX_URL"), org=env("BTC_INFLUX_ORG"),
                                 bucket=env("BTC_INFLUX_BUCKET"), write_token=env("BTC_INFLUX_WRITE_TOKEN"),
                                 read_token=env("BTC_INFLUX_READ_TOKEN"), admin_token=env("BTC_INFLUX_TOKEN")),
        "binance_history": BinanceHistoryResource(base_url=env("BTC_BINANCE_HISTORY_URL")),
        "market": MarketResource(symbols=env("BTC_SYMBOLS")),
        "stream": StreamResource(stall_seconds=env.int("BTC_STREAM_STALL_SECONDS"),
                                 cooldown_seconds=env.int("BTC_STREAM_RESTART_COOLDOWN_SECONDS")),
    }


class MarketResource(dg.ConfigurableResource):
    """The symbols the pipeline handles (``BTC_SYMBOLS``): every asset takes them from here, one place."""

    symbols: str = config.default("BTC_SYMBOLS")

    @property
    def symbol_list(self) -> list[str]:
        try:
            return config.parse_symbols(self.symbols)
        except ValueError as error:
            raise dg.Failure(str(error)) from None


class BinanceHistoryResource(dg.ConfigurableResource):
    """data.binance.vision (or the emulator): daily trade zips with their SHA-256 checksums."""

    base_url: str = config.default("BTC_BINANCE_HISTORY_URL")
    retries: int = 5
    backoff_seconds: float = 1.0

    def client(self, log=None):
        from btc_assets.history.download import HistoryClient

        return HistoryClient(base_url=self.base_url, retries=self.retries, backoff_seconds=self.backoff_seconds,
                             log=log or print)


class StreamResource(dg.ConfigurableResource):
    """The long-running stream services (producer, Spark job) and the thresholds the health sensor uses."""

    checkpoint_name: str = "trades"
    stall_seconds: int = int(config.default("BTC_STREAM_STALL_SECONDS"))
    cooldown_seconds: int = int(config.default("BTC_STREAM_RESTART_COOLDOWN_SECONDS"))

    def services(self):
        from btc_assets.stream.services import StreamServices

        return StreamServices()


@dg.definitions
def resources() -> dg.Definitions:
    """The resource set, as the defs folder's contribution to the code location."""
    return dg.Definitions(resources=build_resources())

"""Apache Kafka for the local stack: one KRaft node (broker + controller) on 127.0.0.1, from Maven jars.

No Kafka tarball can be downloaded here, so ``infra/local/maven/kafka/pom.xml`` lists the broker's
jars (kafka_2.13 plus the SLF4J -> Log4j 2 binding and the admin tools) and ``provision()`` resolves
them from Maven Central into ``<cache>/kafka/<version>/lib``. Everything the broker writes lives under
``<state>/kafka``:

    server.properties     generated on every start (ports come from the environment)
    log4j2.properties     broker logging: INFO to kafka-server.log (rolled), WARN+ also to kafka.log
    cluster.id            the KRaft cluster id, generated once, before the first format
    data/                 log.dirs (topic partitions and the __cluster_metadata log)
    kafka.pid, kafka.log  the daemon's pid and its stdout/stderr

Storage is formatted on the first start only (when data/meta.properties is missing), so a restart,
clean or after SIGKILL, keeps every topic and message. Automatic topic creation is OFF by default
(producers to an unknown topic fail instead of silently creating a 3-partition topic); set
BTC_STACK_KAFKA_AUTO_CREATE_TOPICS=true to turn it on.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import time
import uuid
from pathlib import Path

from btc_assets.clients.jvm import java_executable, java_home

from .base import (
    REPO_ROOT,
    ManagedProcess,
    Service,
    StackError,
    StackPaths,
    ensure_port_free,
    env_port,
    maven_resolve,
    port_is_open,
    progress,
    run_logged,
)

HOST = "127.0.0.1"
POM = REPO_ROOT / "infra" / "local" / "maven" / "kafka" / "pom.xml"
NODE_ID = 1
BROKER_MAIN = "kafka.Kafka"
# Kafka 4.1 still ships the storage tool as the Scala object kafka.tools.StorageTool in kafka_2.13.
STORAGE_TOOL_MAIN = "kafka.tools.StorageTool"
JVM_HEAP = ["-Xmx512m", "-Xms256m"]
JVM_OPTS = [
    "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def _env_flag(variable: str, default: bool) -> bool:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version the pom pins (its ``kafka.version`` property)."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if not match:
        raise StackError(f"kafka: {pom} has no <kafka.version> property")
    return match.group(1)


def new_cluster_id() -> str:
    """A KRaft cluster id as `kafka-storage random-uuid` prints it: a UUID in URL-safe base64, no padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # would read as an option on the storage tool's command line
            return cluster_id


def _require_kafka_python() -> None:
    if importlib.util.find_spec("kafka") is None:
        raise StackError("kafka: the Python client kafka-python is missing: "
                         "`pip install kafka-python==3.0.12` (or `pip install -e .`)")


class KafkaService(Service):
    """A KRaft Kafka node (combined broker + controller) bound to 127.0.0.1.

    Alone (``quorum`` None) it is the local stack's single node, ``kafka``, on BTC_STACK_KAFKA_PORT.
    In a quorum (``[(node_id, port, controller_port), ...]``, see ``KafkaCluster``) it is ``kafka-<id>``,
    one voter of the controller quorum, with the cluster's replication defaults."""

    name = "kafka"

    def __init__(self, paths: StackPaths, *, node_id: int = NODE_ID,
                 quorum: list[tuple[int, int, int]] | None = None):
        self.node_id = node_id
        self.quorum = quorum
        if quorum is not None:
            self.name = f"kafka-{node_id}"
        super().__init__(paths)
        self.version = kafka_version()
        if quorum is None:
            self.port = env_port("BTC_STACK_KAFKA_PORT", 9092, component="kafka")
            self.controller_port = env_port("BTC_STACK_KAFKA_CONTROLLER_PORT", 9093, component="kafka")
        else:
            self.port, self.controller_port = next((p, c) for n, p, c in quorum if n == node_id)
        if self.port == self.controller_port:
            raise StackError(f"kafka: BTC_STACK_KAFKA_PORT and BTC_STACK_KAFKA_CONTROLLER_PORT are both "
                             f"{self.port}; give the controller another port")
        self.auto_create_topics = _env_flag("BTC_STACK_KAFKA_AUTO_CREATE_TOPICS", False)
        self.process = ManagedProcess(self.name, self.state)

    @property
    def cache(self) -> Path:
        path = self.paths.cache_dir / "kafka"  # every node runs the same jars
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def replication(self) -> int:
        return 1 if self.quorum is None else min(3, len(self.quorum))

    # ----------------------------------------------------------------------------- paths
    @property
    def lib_dir(self) -> Path:
        return self.cache / self.version / "lib"

    @property
    def data_dir(self) -> Path:
        return self.state / "data"

    @property
    def config_file(self) -> Path:
        return self.state / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.state / "log4j2.properties"

    @property
    def cluster_id_file(self) -> Path:
        # A quorum's nodes are formatted with one cluster id.
        return self.state / "cluster.id" if self.quorum is None else self.paths.state_dir / "kafka-cluster.id"

    @property
    def server_log(self) -> Path:
        return self.state / "kafka-server.log"

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    # ----------------------------------------------------------------------------- lifecycle
    def provision(self) -> None:
        self._java()
        jars = maven_resolve(POM, self.lib_dir, component=self.name)
        if not any(jar.name.startswith("kafka_2.13-") for jar in jars):
            raise StackError(f"kafka: {self.lib_dir} holds no kafka_2.13 jar; delete it and provision again")

    def start(self) -> None:
        if self.launch():
            self.wait_ready()

    def launch(self) -> bool:
        """Start the JVM without waiting for it to serve (a quorum's nodes wait for each other); False if running."""
        if self.is_running():
            progress(self.name, f"already running (pid {self.process.pid()}) on {self.bootstrap_servers}")
            return False
        ensure_port_free(HOST, self.port, component=self.name, variable="BTC_STACK_KAFKA_PORT")
        ensure_port_free(HOST, self.controller_port, component=self.name,
                         variable="BTC_STACK_KAFKA_CONTROLLER_PORT")
        self.provision()
        java = self._java()
        _require_kafka_python()  # the readiness probe needs it; fail now rather than time out later
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._server_properties())
        self.log4j_file.write_text(self._log4j_properties())
        self._format_storage_once(java)

        progress(self.name, f"starting Kafka {self.version} (KRaft, node {self.node_id}) on {self.bootstrap_servers}")
        self._began = time.monotonic()
        self.process.start([str(java), *JVM_HEAP, *JVM_OPTS, *self._log_opts(), "-cp", self._classpath(),
                            BROKER_MAIN, str(self.config_file)],
                           env=self._java_env(), cwd=self.state, java_tmp=True)
        return True

    def wait_ready(self) -> None:
        began = getattr(self, "_began", time.monotonic())
        try:
            self.process.wait_until(self._ready, component=self.name,
                                    what=f"Kafka broker on {self.bootstrap_servers}", timeout=START_TIMEOUT_S)
        except StackError:
            self.process.stop(timeout=10, kill=True)  # leave no half-started broker holding the ports
            raise
        progress(self.name, f"ready on {self.bootstrap_servers} in {time.monotonic() - began:.1f}s "
                            f"(pid {self.process.pid()}, log {self.server_log})")

    def stop(self, *, kill: bool = False) -> None:
        pid = self.process.pid()
        if pid is None:
            self.process.stop()  # clears a stale pid file
            return
        progress(self.name, f"{'killing' if kill else 'stopping'} broker (pid {pid})")
        # SIGTERM runs Kafka's shutdown hook: controlled shutdown, logs flushed, clean-shutdown marker.
        self.process.stop(timeout=STOP_TIMEOUT_S, kill=kill)

    def is_running(self) -> bool:
        return self.process.is_running()

    def status(self) -> dict[str, object]:
        return {
            "running": self.is_running(),
            "version": self.version,
            "bootstrap_servers": self.bootstrap_servers,
            "controller": f"{HOST}:{self.controller_port}",
            "pid": self.process.pid(),
            "data_dir": str(self.data_dir),
            "formatted": (self.data_dir / "meta.properties").exists(),
            "cluster_id": self._read_cluster_id(),
            "auto_create_topics": self.auto_create_topics,
            "log": str(self.server_log),
        }

    def env(self) -> dict[str, str]:
        return {"BTC_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}

    def log_files(self) -> list[Path]:
        return sorted(self.state.glob("*.log"))

    # ----------------------------------------------------------------------------- helpers
    def _java(self) -> Path:
        return java_executable(f"kafka: Kafka {self.version}", 17)

    def _java_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CLASSPATH", None)
        env.pop("KAFKA_OPTS", None)
        env["JAVA_HOME"] = str(java_home())
        return env

    def _classpath(self) -> str:
        if not self.lib_dir.is_dir():
            raise StackError(f"kafka: {self.lib_dir} is missing; run provision first")
        return f"{self.lib_dir}/*"  # the JVM expands the wildcard itself

    def _log_opts(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.log4j_file}", f"-Dkafka.logs.dir={self.state}"]

    def _read_cluster_id(self) -> str | None:
        try:
            return self.cluster_id_file.read_text().strip() or None
        except OSError:
            return None

    def _format_storage_once(self, java: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = self._read_cluster_id()
        if cluster_id is None:
            cluster_id = new_cluster_id()
            self.cluster_id_file.write_text(cluster_id + "\n")
        progress(self.name, f"formatting storage in {self.data_dir} (cluster id {cluster_id}; first start only)")
        run_logged([str(java), "-Xmx256m", *self._log_opts(), "-cp", self._classpath(), STORAGE_TOOL_MAIN,
                    "format", "--config", str(self.config_file), "--cluster-id", cluster_id],
                   self.state / "storage-format.log", component=self.name, step="storage format",
                   env=self._java_env(), cwd=self.state, timeout=120)

    def _ready(self) -> bool:
        """True once the broker serves metadata and lists itself (registered and unfenced)."""
        if not port_is_open(HOST, self.port):
            return False  # cheap check first: keeps kafka-python from logging refused connections
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="btc-stack-probe",
                                 request_timeout_ms=5000, bootstrap_timeout_ms=5000)
        try:
            brokers = admin.describe_cluster().get("brokers", [])
            admin.list_topics()
        finally:
            admin.close()
        return any(int(b.get("broker_id", b.get("node_id", -1))) == self.node_id for b in brokers)

    def _server_properties(self) -> str:
        data = self.data_dir
        voters = ",".join(f"{n}@{HOST}:{c}" for n, _, c in (self.quorum or [(self.node_id, self.port, self.controller_port)]))
        rf, isr = self.replication, max(1, self.replication - 1)
        return f"""# Generated by btc_localstack/kafka.py on every start; edits are overwritten.
# A KRaft node, broker and controller in one JVM, bound to {HOST} only; {len(self.quorum or [1])} voter(s).
process.roles=broker,controller
node.id={self.node_id}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{self.port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT

# Storage: topic partitions and the __cluster_metadata log
log.dirs={data}

# Topics: explicit creation only (BTC_STACK_KAFKA_AUTO_CREATE_TOPICS=true turns auto-creation on)
auto.create.topics.enable={str(self.auto_create_topics).lower()}
num.partitions=3
default.replication.factor={rf}
min.insync.replicas={isr}
delete.topic.enable=true
# A single node's one replica per partition: after a SIGKILL there is no other copy to wait for (Kafka
# 4.1's ELR already re-elects it, logged as "unclean election"). With replicas, never lose acked data.
unclean.leader.election.enable={str(rf == 1).lower()}

# Internal topics: replicated like the data, fewer partitions than the default 50
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=10
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={isr}
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={isr}
group.initial.rebalance.delay.ms=0

# Retention: 7 days or 1 GiB per partition, whichever comes first; 128 MiB segments
log.retention.hours=168
log.retention.bytes=1073741824
log.segment.bytes=134217728
log.retention.check.interval.ms=300000

# Keep it light: 2 cores, 512 MiB heap
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
queued.max.requests=200
"""

    def _log4j_properties(self) -> str:
        log = self.server_log
        return f"""# Generated by btc_localstack/kafka.py. INFO and up go to {log.name} (rolled at 10 MiB,
# 3 kept); WARN and up also go to stdout, which ManagedProcess appends to kafka.log.
status = warn
name = btc-stack-kafka

appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
appender.stdout.filter.threshold.type = ThresholdFilter
appender.stdout.filter.threshold.level = warn

appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = {log}
appender.server.filePattern = {log}.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 10MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3

rootLogger.level = INFO
rootLogger.appenderRef.server.ref = SERVER
rootLogger.appenderRef.stdout.ref = STDOUT

logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.requestchannel.name = kafka.network.RequestChannel$
logger.requestchannel.level = WARN
"""


class KafkaCluster(Service):
    """``nodes`` KRaft nodes on one machine (the cluster topology): each a broker and one voter of the
    controller quorum, its own directory under ``<state>/kafka-<id>`` and ports ``base + 2(i-1)`` (client)
    and one above (controller); topics replicated ``min(3, nodes)`` times with ``min.insync.replicas`` one
    less. The nodes start together (a quorum needs a majority to elect a leader) and stop in reverse."""

    name = "kafka"

    def __init__(self, paths: StackPaths, nodes: int = 3, base_port: int | None = None):
        super().__init__(paths)
        if nodes < 1:
            raise StackError(f"kafka: a cluster needs at least one node, not {nodes}")
        base = base_port or env_port("BTC_STACK_KAFKA_PORT", 29092, component="kafka")
        quorum = [(node, base + 2 * (node - 1), base + 2 * (node - 1) + 1) for node in range(1, nodes + 1)]
        self.nodes = [KafkaService(paths, node_id=node, quorum=quorum) for node, _, _ in quorum]

    @property
    def cache(self) -> Path:
        return self.nodes[0].cache

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> KafkaService:
        return next(node for node in self.nodes if node.node_id == node_id)

    def provision(self) -> None:
        self.nodes[0].provision()

    def start(self) -> None:
        launched = [node for node in self.nodes if node.launch()]
        for node in launched:
            node.wait_ready()

    def stop(self, *, kill: bool = False) -> None:
        # All at once: stopped one after another, the last node's controlled shutdown waits for a
        # controller quorum that is already gone, until STOP_TIMEOUT_S ends it with a SIGKILL.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            for stopped in [pool.submit(node.stop, kill=kill) for node in reversed(self.nodes)]:
                stopped.result()

    def is_running(self) -> bool:
        return all(node.is_running() for node in self.nodes)

    def status(self) -> dict[str, object]:
        return {"running": self.is_running(), "bootstrap_servers": self.bootstrap_servers,
                "replication": self.nodes[0].replication,
                "nodes": {node.name: node.status() for node in self.nodes}}

    def env(self) -> dict[str, str]:
        return {"BTC_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                "BTC_KAFKA_REPLICATION": str(self.nodes[0].replication)}

    def log_files(self) -> list[Path]:
        return [path for node in self.nodes for path in node.log_files()]

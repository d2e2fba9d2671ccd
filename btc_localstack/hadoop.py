"""HDFS and MapReduce from Maven Central jars: the local profile's single node, or the cluster topology.

Local profile: one NameNode, one DataNode (replication 1), MapReduce in the LocalJobRunner. Cluster
topology (``HadoopTopology.cluster()``): a NameNode, 3 DataNodes (replication 2), and YARN (a
ResourceManager, 2 NodeManagers, the MapReduce JobHistory server), every daemon a JVM of its own with
its own ports, directories and configuration directory, all on 127.0.0.1.

No Hadoop tarball: ``infra/local/maven/hadoop/pom.xml`` lists the Hadoop artifacts, Maven copies them and
their dependencies into ``<cache>/hadoop/<version>/lib`` once, and the daemons are started straight with
``java -cp <conf>:<lib>/* org.apache.hadoop...``. Everything binds to 127.0.0.1; data, generated config
and logs live under ``<state>/hadoop``. MapReduce jobs (Hadoop Streaming) run inside the submitting JVM
with ``mapreduce.framework.name=local`` and read/write this HDFS, so no YARN is needed.

The Hadoop command lines (``hadoop_java_command``, the streaming job) are the product's own, in
``btc_assets.clients.hadoop_streaming``; this module only configures and runs the daemons, with the values of ``env()``
(``BTC_HADOOP_CLASSPATH``, ``HADOOP_CONF_DIR``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from btc_assets import config
from btc_assets.clients.hadoop_streaming import (JAVA17_FLAGS, StreamingJob, StreamingJobError, hadoop_java,
                                                 hadoop_java_command, line_blocks_jar, streaming_command)
from btc_assets.contracts import bars
from btc_assets.clients.jvm import HDFS_CLIENT_CONF, java_home
from btc_assets.clients.storage import WebHDFS

from .base import (
    REPO_ROOT,
    ManagedProcess,
    ProcessError,
    Service,
    StackError,
    dump_class_archive,
    ensure_port_free,
    env_port,
    maven_resolve,
    port_is_open,
    progress,
    run_logged,
)

HADOOP_VERSION = "3.4.2"
POM = REPO_ROOT / "infra" / "local" / "maven" / "hadoop" / "pom.xml"
HOST = "127.0.0.1"

YARN_POM = REPO_ROOT / "infra" / "local" / "maven" / "hadoop-yarn" / "pom.xml"

NAMENODE_CLASS = "org.apache.hadoop.hdfs.server.namenode.NameNode"
DATANODE_CLASS = "org.apache.hadoop.hdfs.server.datanode.DataNode"
FSSHELL_CLASS = "org.apache.hadoop.fs.FsShell"
RESOURCEMANAGER_CLASS = "org.apache.hadoop.yarn.server.resourcemanager.ResourceManager"
NODEMANAGER_CLASS = "org.apache.hadoop.yarn.server.nodemanager.NodeManager"
HISTORYSERVER_CLASS = "org.apache.hadoop.mapreduce.v2.hs.JobHistoryServer"

# Container sizes on the cluster topology's NodeManagers (each offers NODEMANAGER_MB and 2 vcores): the
# MapReduce ApplicationMaster and every map and reduce task get a 512 MB container with a 384 MB heap.
NODEMANAGER_MB = 2048
TASK_MB = 512
TASK_HEAP = "-Xmx384m"
# A node's processes, as a real node has them: the containers run the node's python3 from its PATH (no
# pyarrow, no numpy, no project virtualenv), not the interpreter that started the stack.
NODE_PATH = "/usr/local/bin:/usr/bin:/bin"

# (env var, default) of every port the two daemons bind, all on 127.0.0.1.
PORTS = {
    "namenode_rpc": ("BTC_STACK_HDFS_PORT", 8020),
    "namenode_http": ("BTC_STACK_HDFS_HTTP_PORT", 9870),
    "datanode_data": ("BTC_STACK_DATANODE_PORT", 9866),
    "datanode_http": ("BTC_STACK_DATANODE_HTTP_PORT", 9864),
    "datanode_ipc": ("BTC_STACK_DATANODE_IPC_PORT", 9867),
}

NAMENODE_PORTS = ("namenode_rpc", "namenode_http")
DATANODE_PORTS = ("datanode_data", "datanode_http", "datanode_ipc")


def _port(key: str) -> int:
    variable, default = PORTS[key]
    return env_port(variable, default, component="hadoop")


@dataclass(frozen=True)
class HadoopTopology:
    """How many of each daemon, and where their ports start.

    ``base_port=None`` is the local profile: its ports come from ``PORTS`` (each overridable by its
    variable). With a base port, the daemons take fixed offsets from it: NameNode +0/+1, DataNode *i*
    +10+3(i-1) .. +12+3(i-1), ResourceManager +40..+44, NodeManager *i* +50+5(i-1) .., JobHistory +80..+82.
    """

    datanodes: int = 1
    nodemanagers: int = 0  # 0: MapReduce runs in the submitting JVM (LocalJobRunner), no YARN
    replication: int = 1
    base_port: int | None = None

    @classmethod
    def cluster(cls, base_port: int = 28020) -> "HadoopTopology":
        return cls(datanodes=3, nodemanagers=2, replication=2, base_port=base_port)

    @property
    def yarn(self) -> bool:
        return self.nodemanagers > 0

    def port(self, key: str, node: int = 1) -> int:
        if self.base_port is None:
            return _port(key)
        offsets = {"namenode_rpc": 0, "namenode_http": 1,
                   "datanode_data": 10, "datanode_http": 11, "datanode_ipc": 12,
                   "rm_address": 40, "rm_scheduler": 41, "rm_tracker": 42, "rm_admin": 43, "rm_http": 44,
                   "nm_address": 50, "nm_localizer": 51, "nm_http": 52, "nm_shuffle": 53, "nm_collector": 54,
                   "jhs_address": 80, "jhs_http": 81, "jhs_admin": 82}
        stride = 3 if key.startswith("datanode") else 5 if key.startswith("nm_") else 0
        return self.base_port + offsets[key] + stride * (node - 1)


def _xml_config(properties: dict[str, object]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             "<!-- Generated by btc_localstack.hadoop; edits are overwritten at every start. -->",
             "<configuration>"]
    for name, value in properties.items():
        lines.append(f"  <property><name>{escape(name)}</name><value>{escape(str(value))}</value></property>")
    lines.append("</configuration>")
    return "\n".join(lines) + "\n"


LOG4J_PROPERTIES = """\
# Generated by btc_localstack.hadoop. Everything goes to stderr: the daemons' stderr is their
# log file under the state dir (namenode.log, datanode.log); clients print to the terminal.
# -Dhadoop.root.logger=LEVEL,console overrides the level.
hadoop.root.logger=INFO,console
log4j.rootLogger=${hadoop.root.logger}
log4j.threshold=ALL
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.target=System.err
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n
# Noise: no native libs (pure-Java codecs are used), per-operation audit and block traces.
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
log4j.logger.org.apache.hadoop.hdfs.server.namenode.FSNamesystem.audit=WARN
log4j.logger.org.apache.hadoop.hdfs.server.datanode.DataNode.clienttrace=WARN
log4j.logger.BlockStateChange=WARN
log4j.logger.org.apache.hadoop.hdfs.StateChange=WARN
log4j.logger.org.apache.hadoop.conf.Configuration.deprecation=WARN
log4j.logger.org.apache.hadoop.metrics2=ERROR
log4j.logger.org.apache.hadoop.mapreduce.JobResourceUploader=ERROR
"""


class HadoopService(Service):
    name = "hadoop"
    version = HADOOP_VERSION

    def __init__(self, paths, topology: HadoopTopology | None = None):
        super().__init__(paths)
        self.topology = topology or HadoopTopology()
        self.namenode = ManagedProcess("namenode", self.state)
        count = self.topology.datanodes
        # One DataNode keeps the name its pid file has always had, so a running local stack stays known.
        self.datanodes = [ManagedProcess("datanode" if count == 1 else f"datanode-{i}", self.state)
                          for i in range(1, count + 1)]
        self.resourcemanager = ManagedProcess("resourcemanager", self.state)
        self.nodemanagers = [ManagedProcess(f"nodemanager-{i}", self.state)
                             for i in range(1, self.topology.nodemanagers + 1)]
        self.historyserver = ManagedProcess("historyserver", self.state)
        self._probe_error = ""

    @property
    def datanode(self) -> ManagedProcess:
        return self.datanodes[0]

    # ---- locations -------------------------------------------------------------------------------

    @property
    def lib_dir(self) -> Path:
        return self.cache / self.version / ("yarn-lib" if self.topology.yarn else "lib")

    @property
    def classpath(self) -> str:
        return str(self.lib_dir / "*")

    @property
    def staging_root(self) -> Path:
        """Where the local job runner stages each job's files (``mapreduce.jobtracker.staging.root.dir``)."""
        return self.state / "tmp" / "mapred" / "staging"

    @property
    def conf_dir(self) -> Path:
        return self.state / "conf"

    @property
    def name_dir(self) -> Path:
        return self.state / "name"

    def data_dir(self, node: int = 1) -> Path:
        return self.state / ("data" if self.topology.datanodes == 1 else f"data-{node}")

    def node_conf_dir(self, kind: str, node: int) -> Path:
        return self.state / f"conf-{kind}-{node}"

    def nodemanager_dir(self, node: int) -> Path:
        return self.state / f"nodemanager-{node}"

    @property
    def streaming_jar(self) -> Path:
        return self.lib_dir / f"hadoop-streaming-{self.version}.jar"

    @property
    def class_archive(self) -> Path:
        """The streaming job's class-data sharing archive (``BTC_HADOOP_CLASS_ARCHIVE``): of these jars, dumped by
        this JVM (a JDK upgrade changes the name, and a new one is dumped)."""
        java = hadoop_java().resolve()
        stamp = hashlib.sha256(f"{java}:{java.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        return self.lib_dir.parent / f"{self.lib_dir.name}-classes-{stamp}.jsa"

    def _port(self, key: str, node: int = 1) -> int:
        return self.topology.port(key, node)

    @property
    def hdfs_url(self) -> str:
        return f"hdfs://{HOST}:{self._port('namenode_rpc')}"

    @property
    def webhdfs_url(self) -> str:
        return f"http://{HOST}:{self._port('namenode_http')}"

    @property
    def resourcemanager_url(self) -> str:
        return f"http://{HOST}:{self._port('rm_http')}"

    @property
    def historyserver_url(self) -> str:
        return f"http://{HOST}:{self._port('jhs_http')}"

    # ---- provisioning and config -----------------------------------------------------------------

    def provision(self) -> None:
        # YARN's pom inherits the HDFS pom's versions: one consistent classpath of its own.
        pom, parents = (YARN_POM, (POM,)) if self.topology.yarn else (POM, ())
        for path in (pom, *parents):
            if not path.exists():
                raise StackError(f"hadoop: {path} is missing; restore it from git")
        maven_resolve(pom, self.lib_dir, component=self.name, parents=parents)
        if not self.streaming_jar.exists():
            raise StackError(f"hadoop: {self.streaming_jar} missing after resolution; delete {self.lib_dir} "
                             "and run provision again")
        self._dump_class_archive()
        self._build_line_blocks_jar()

    def _build_line_blocks_jar(self) -> None:
        """The minute_bars job's block reader (mapreduce/LineBlockInputFormat.java), compiled into the cache now
        rather than by the first job. A failure is said; the jobs then read their input line by line."""
        try:
            line_blocks_jar(self.classpath)
        except StreamingJobError as error:
            progress(self.name, f"no block reader for MapReduce (jobs read line by line): {error}")

    def _dump_class_archive(self) -> None:
        """Once per jars and JVM: a small minute-bars job on the local file system, its JVM told to archive the
        classes it loaded (JDK AppCDS). Every MapReduce job after starts from that archive, a little sooner
        (jvm.class_archive_opts). A failed dump only costs that: it is said and provisioning goes on."""
        archive = self.class_archive
        if archive.exists():
            return
        progress(self.name, "dumping the MapReduce job's class-data archive (once, ~10 s)…")
        dump_class_archive(archive, self._class_archive_job, component=self.name,
                           log_path=self.lib_dir.parent / "class-archive.log",
                           without="MapReduce jobs start a little slower", timeout=300)

    def _class_archive_job(self, dumping: Path, scratch: Path) -> list[str]:
        """The dump's job: 59 trades through the minute-bars scripts, its input and conf in ``scratch``."""
        conf, day = scratch / "conf", scratch / "in" / "trades.csv"
        conf.mkdir()
        (conf / "log4j.properties").write_text(LOG4J_PROPERTIES)
        day.parent.mkdir()
        day.write_text("".join(f"{n},84000.{n:02d},0.0{n}000000,{84000 * n / 100:.8f},{1743465600000 + n * 997},"
                               f"{'True' if n % 3 else 'False'},True\n" for n in range(1, 60)))
        scripts = config.mapreduce_dir()
        job = StreamingJob(mapper=str(scripts / "mapper.py"), reducer=str(scripts / "reducer.py"),
                           files=bars.streaming_support_files(), inputs=[day.parent.as_uri()],
                           output=(scratch / "out").as_uri())
        command = streaming_command(job, framework="local", hdfs_url="file:///", classpath=self.classpath,
                                    conf_dir=str(conf))
        command.insert(1, f"-XX:ArchiveClassesAtExit={dumping}")
        return command

    def _site(self) -> dict[str, dict[str, object]]:
        """The configuration every daemon and client shares: core, hdfs, mapred and (cluster) yarn."""
        user = getpass.getuser()
        topo = self.topology
        core = {
            "fs.defaultFS": self.hdfs_url,
            "hadoop.tmp.dir": str(self.state / "tmp"),
            # WebHDFS calls without ?user.name= act as the local user rather than "dr.who".
            "hadoop.http.staticuser.user": user,
            "hadoop.security.authentication": "simple",
        }
        hdfs = {
            "dfs.replication": topo.replication,
            "dfs.namenode.name.dir": (self.name_dir).as_uri(),
            "dfs.namenode.rpc-address": f"{HOST}:{self._port('namenode_rpc')}",
            "dfs.namenode.http-address": f"{HOST}:{self._port('namenode_http')}",
            "dfs.namenode.https-address": f"{HOST}:0",
            "dfs.namenode.secondary.http-address": f"{HOST}:0",
            "dfs.namenode.secondary.https-address": f"{HOST}:0",
            # The DataNodes register as 127.0.0.1, so WebHDFS redirects point at 127.0.0.1 too.
            "dfs.datanode.hostname": HOST,
            "dfs.http.policy": "HTTP_ONLY",
            "dfs.webhdfs.enabled": "true",
            "dfs.permissions.enabled": "false",
            # Leave safe mode as soon as the blocks are reported (default waits 30 s more).
            "dfs.namenode.safemode.extension": 0,
            "dfs.heartbeat.interval": 3,
            # Keep the daemons light: the machine also runs Kafka, Spark and InfluxDB.
            "dfs.namenode.handler.count": 10,
            "dfs.datanode.handler.count": 5,
            "dfs.datanode.max.transfer.threads": 1024,
            # The daemons' own HDFS writes (WebHDFS uploads through a DataNode, YARN's logs and job history)
            # close files with the clients' shorter retry delay too (jvm.HDFS_CLIENT_CONF says why).
            **HDFS_CLIENT_CONF,
            **self._datanode_site(1),
        }
        if topo.datanodes == 1:
            # One DataNode: never try to replace a failed one in a write pipeline (appends would fail).
            hdfs["dfs.client.block.write.replace-datanode-on-failure.enable"] = "false"
            hdfs["dfs.client.block.write.replace-datanode-on-failure.policy"] = "NEVER"
        else:
            # A DataNode that stops heartbeating is declared dead after 2 x 15 s + 10 heartbeats (~60 s,
            # default 10.5 min) and its blocks are copied to the others; a write pipeline losing one
            # goes on with the rest when no replacement can be found.
            hdfs["dfs.namenode.heartbeat.recheck-interval"] = 15_000
            hdfs["dfs.client.block.write.replace-datanode-on-failure.best-effort"] = "true"
        mapred: dict[str, object] = {
            "mapreduce.cluster.local.dir": str(self.state / "tmp" / "mapred" / "local"),
            # The local job runner's staging (one directory per job, left behind by Hadoop): the stack's own, so
            # two stacks never share it and nothing accumulates in the machine's /tmp.
            "mapreduce.jobtracker.staging.root.dir": str(self.staging_root),
            "mapreduce.task.io.sort.mb": 64,
        }
        files = {"core-site.xml": core, "hdfs-site.xml": hdfs, "mapred-site.xml": mapred}
        if not topo.yarn:
            mapred.update({"mapreduce.framework.name": "local", "mapreduce.local.map.tasks.maximum": 2,
                           "mapreduce.local.reduce.tasks.maximum": 1})
            return files
        opts = " ".join([TASK_HEAP, *JAVA17_FLAGS, "-Djava.net.preferIPv4Stack=true"])
        application_classpath = f"{self.conf_dir},{self.classpath}"
        mapred.update({
            "mapreduce.framework.name": "yarn",
            "mapreduce.application.classpath": application_classpath,
            "yarn.app.mapreduce.am.staging-dir": "/tmp/hadoop-yarn/staging",
            "yarn.app.mapreduce.am.resource.mb": TASK_MB,
            "yarn.app.mapreduce.am.command-opts": opts,
            "mapreduce.map.memory.mb": TASK_MB,
            "mapreduce.reduce.memory.mb": TASK_MB,
            "mapreduce.map.java.opts": opts,
            "mapreduce.reduce.java.opts": opts,
            "yarn.app.mapreduce.am.env": f"JAVA_HOME={java_home()}",
            "mapreduce.map.env": f"JAVA_HOME={java_home()}",
            "mapreduce.reduce.env": f"JAVA_HOME={java_home()}",
            # An attempt whose node vanished is given up after 60 s without a heartbeat (default 10 min).
            "mapreduce.task.timeout": 60_000,
            "mapreduce.jobhistory.address": f"{HOST}:{self._port('jhs_address')}",
            "mapreduce.jobhistory.webapp.address": f"{HOST}:{self._port('jhs_http')}",
            "mapreduce.jobhistory.admin.address": f"{HOST}:{self._port('jhs_admin')}",
            **self._nodemanager_mapred(1),
        })
        yarn = {
            "yarn.resourcemanager.hostname": HOST,
            "yarn.resourcemanager.address": f"{HOST}:{self._port('rm_address')}",
            "yarn.resourcemanager.scheduler.address": f"{HOST}:{self._port('rm_scheduler')}",
            "yarn.resourcemanager.resource-tracker.address": f"{HOST}:{self._port('rm_tracker')}",
            "yarn.resourcemanager.admin.address": f"{HOST}:{self._port('rm_admin')}",
            "yarn.resourcemanager.webapp.address": f"{HOST}:{self._port('rm_http')}",
            "yarn.application.classpath": application_classpath,
            "yarn.scheduler.minimum-allocation-mb": 256,
            "yarn.scheduler.maximum-allocation-mb": NODEMANAGER_MB,
            "yarn.nodemanager.resource.memory-mb": NODEMANAGER_MB,
            "yarn.nodemanager.resource.cpu-vcores": 2,
            "yarn.nodemanager.vmem-check-enabled": "false",
            "yarn.nodemanager.aux-services": "mapreduce_shuffle",
            "yarn.nodemanager.aux-services.mapreduce_shuffle.class": "org.apache.hadoop.mapred.ShuffleHandler",
            # One disk shared by everything: a full-ish disk must not mark the nodes unhealthy.
            "yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage": 99.0,
            # A node that stops heartbeating is lost after 20 s, an ApplicationMaster after 30 s
            # (defaults 10 min): its containers are then run again on the other node.
            "yarn.nm.liveness-monitor.expiry-interval-ms": 20_000,
            "yarn.am.liveness-monitor.expiry-interval-ms": 30_000,
            "yarn.resourcemanager.nodemanagers.heartbeat-interval-ms": 1_000,
            # An ApplicationMaster cleaning up containers of a lost node gives up on it after 10 s (default:
            # 3 minutes of retries every 10 s, and the lost tasks wait for it before they run again).
            "yarn.client.nodemanager-connect.max-wait-ms": 10_000,
            "yarn.client.nodemanager-connect.retry-interval-ms": 1_000,
            "yarn.log-aggregation-enable": "false",
            "yarn.nodemanager.delete.debug-delay-sec": 600,
            **self._nodemanager_site(1),
        }
        files["yarn-site.xml"] = yarn
        # The CapacityScheduler reads its queues from its own file: one queue with everything. ApplicationMasters
        # may take half the cluster (the default 10% of 4 GB is less than one 512 MB AM container).
        files["capacity-scheduler.xml"] = {
            "yarn.scheduler.capacity.root.queues": "default",
            "yarn.scheduler.capacity.root.default.capacity": 100,
            "yarn.scheduler.capacity.root.default.maximum-capacity": 100,
            "yarn.scheduler.capacity.maximum-am-resource-percent": 0.5,
            "yarn.scheduler.capacity.node-locality-delay": 0,
        }
        return files

    def _datanode_site(self, node: int) -> dict[str, object]:
        return {
            "dfs.datanode.data.dir": self.data_dir(node).as_uri(),
            "dfs.datanode.address": f"{HOST}:{self._port('datanode_data', node)}",
            "dfs.datanode.http.address": f"{HOST}:{self._port('datanode_http', node)}",
            "dfs.datanode.https.address": f"{HOST}:0",
            "dfs.datanode.ipc.address": f"{HOST}:{self._port('datanode_ipc', node)}",
        }

    def _nodemanager_site(self, node: int) -> dict[str, object]:
        home = self.nodemanager_dir(node)
        return {
            "yarn.nodemanager.hostname": HOST,
            "yarn.nodemanager.address": f"{HOST}:{self._port('nm_address', node)}",
            "yarn.nodemanager.localizer.address": f"{HOST}:{self._port('nm_localizer', node)}",
            "yarn.nodemanager.webapp.address": f"{HOST}:{self._port('nm_http', node)}",
            "yarn.nodemanager.collector-service.address": f"{HOST}:{self._port('nm_collector', node)}",
            "yarn.nodemanager.local-dirs": str(home / "local"),
            "yarn.nodemanager.log-dirs": str(home / "logs"),
            "yarn.nodemanager.recovery.dir": str(home / "recovery"),
        }

    def _nodemanager_mapred(self, node: int) -> dict[str, object]:
        return {"mapreduce.shuffle.port": self._port("nm_shuffle", node)}

    def _write_conf_dir(self, conf: Path, files: dict[str, dict[str, object]]) -> None:
        conf.mkdir(parents=True, exist_ok=True)
        texts = {name: _xml_config(properties) for name, properties in files.items()}
        texts["log4j.properties"] = LOG4J_PROPERTIES
        for name, text in texts.items():
            path = conf / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)

    def write_config(self) -> Path:
        """(Re)write the shared configuration into ``state/conf`` (clients, NameNode, ResourceManager,
        JobHistory) and, with several DataNodes or any NodeManager, one directory per node with its
        own ports and directories (``state/conf-datanode-<i>``, ``state/conf-nodemanager-<i>``)."""
        site = self._site()
        self._write_conf_dir(self.conf_dir, site)
        if self.topology.datanodes > 1:
            for node in range(1, self.topology.datanodes + 1):
                files = {**site, "hdfs-site.xml": {**site["hdfs-site.xml"], **self._datanode_site(node)}}
                self._write_conf_dir(self.node_conf_dir("datanode", node), files)
        for node in range(1, self.topology.nodemanagers + 1):
            files = {**site, "yarn-site.xml": {**site["yarn-site.xml"], **self._nodemanager_site(node)},
                     "mapred-site.xml": {**site["mapred-site.xml"], **self._nodemanager_mapred(node)}}
            self._write_conf_dir(self.node_conf_dir("nodemanager", node), files)
        return self.conf_dir

    def _daemon_command(self, main_class: str, args: list[str] | None = None, *, conf_dir: Path | None = None,
                        heap: str = "512m") -> list[str]:
        logs = self.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return hadoop_java_command(
            main_class, args or [], self.classpath, conf_dir or self.conf_dir, heap=heap,
            java_opts=[f"-Dhadoop.log.dir={logs}", f"-Dhadoop.home.dir={self.cache / self.version}",
                       "-Dhadoop.security.logger=WARN,console"],
        )

    def _datanode_command(self, node: int) -> list[str]:
        conf = self.conf_dir if self.topology.datanodes == 1 else self.node_conf_dir("datanode", node)
        return self._daemon_command(DATANODE_CLASS, conf_dir=conf, heap="512m" if self.topology.datanodes == 1
                                    else "256m")

    def _nodemanager_env(self, node: int) -> dict[str, str]:
        home = str(java_home())
        return {"PATH": f"{home}/bin:{NODE_PATH}", "JAVA_HOME": home, "HOME": str(self.nodemanager_dir(node)),
                "HADOOP_CONF_DIR": str(self.node_conf_dir("nodemanager", node)), "LANG": "C.UTF-8"}

    # ---- lifecycle -------------------------------------------------------------------------------

    def _ports_of(self, kind: str, node: int = 1) -> list[tuple[int, str]]:
        """(port, variable or daemon) of every port ``kind`` binds: checked free before a start."""
        keys = {"namenode": NAMENODE_PORTS, "datanode": DATANODE_PORTS,
                "resourcemanager": ("rm_address", "rm_scheduler", "rm_tracker", "rm_admin", "rm_http"),
                "nodemanager": ("nm_address", "nm_localizer", "nm_http", "nm_shuffle", "nm_collector"),
                "historyserver": ("jhs_address", "jhs_http", "jhs_admin")}[kind]
        return [(self._port(key, node),
                 PORTS[key][0] if self.topology.base_port is None and key in PORTS else f"the {kind}'s base port")
                for key in keys]

    def _daemons(self) -> list[tuple[ManagedProcess, str, int]]:
        """Every daemon of the topology with its kind and node number, in start order."""
        daemons = [(self.namenode, "namenode", 1)]
        daemons += [(proc, "datanode", i) for i, proc in enumerate(self.datanodes, 1)]
        if self.topology.yarn:
            daemons.append((self.resourcemanager, "resourcemanager", 1))
            daemons += [(proc, "nodemanager", i) for i, proc in enumerate(self.nodemanagers, 1)]
            daemons.append((self.historyserver, "historyserver", 1))
        return daemons

    def daemon(self, kind: str, node: int = 1) -> ManagedProcess:
        """The process of one daemon, e.g. ``daemon("datanode", 2)``."""
        for proc, daemon_kind, number in self._daemons():
            if (daemon_kind, number) == (kind, node):
                return proc
        raise KeyError(f"the topology has no {kind} {node}")

    def is_running(self) -> bool:
        return all(proc.is_running() for proc, _, _ in self._daemons())

    def _format_if_needed(self) -> None:
        if (self.name_dir / "current" / "VERSION").exists():
            return
        progress(self.name, f"formatting a new NameNode in {self.name_dir} (first start only)")
        # A new namespace gets a new cluster id: blocks of an older one could never be used again and
        # would stop the DataNodes ("Incompatible clusterIDs"), so they go too.
        for node in range(1, self.topology.datanodes + 1):
            shutil.rmtree(self.data_dir(node), ignore_errors=True)
        run_logged(self._daemon_command(NAMENODE_CLASS, ["-format", "-nonInteractive", "-force",
                                                         "-clusterid", "btc-local"]),
                   self.state / "format.log", component=self.name, step="NameNode format", timeout=300)

    def start_daemon(self, kind: str, node: int = 1) -> None:
        """Start one daemon (no-op when it runs): used by ``start`` and to bring back a killed node."""
        proc = self.daemon(kind, node)
        if proc.is_running():
            return
        for port, variable in self._ports_of(kind, node):
            ensure_port_free(HOST, port, component=self.name, variable=variable)
        if kind == "namenode":
            self._format_if_needed()
            progress(self.name, f"starting NameNode on {HOST}:{self._port('namenode_rpc')} "
                                f"(web {HOST}:{self._port('namenode_http')})")
            proc.start(self._daemon_command(NAMENODE_CLASS), cwd=self.state, java_tmp=True)
        elif kind == "datanode":
            progress(self.name, f"starting {proc.name} on {HOST}:{self._port('datanode_data', node)}")
            proc.start(self._datanode_command(node), cwd=self.state, java_tmp=True)
        elif kind == "resourcemanager":
            progress(self.name, f"starting ResourceManager on {HOST}:{self._port('rm_address')} "
                                f"(web {self.resourcemanager_url})")
            proc.start(self._daemon_command(RESOURCEMANAGER_CLASS), cwd=self.state, java_tmp=True)
        elif kind == "nodemanager":
            progress(self.name, f"starting {proc.name} on {HOST}:{self._port('nm_address', node)}")
            self.nodemanager_dir(node).mkdir(parents=True, exist_ok=True)
            proc.start(self._daemon_command(NODEMANAGER_CLASS, conf_dir=self.node_conf_dir("nodemanager", node),
                                            heap="384m"),
                       cwd=self.nodemanager_dir(node), env=self._nodemanager_env(node), java_tmp=True)
        else:
            progress(self.name, f"starting JobHistory server (web {self.historyserver_url})")
            proc.start(self._daemon_command(HISTORYSERVER_CLASS, heap="384m"), cwd=self.state, java_tmp=True)

    def start(self) -> None:
        if self.is_running():
            progress(self.name, f"already running (NameNode {self.hdfs_url}, WebHDFS {self.webhdfs_url})")
            return
        if not self.lib_dir.joinpath(".resolved").exists():
            self.provision()
        self.write_config()
        began = time.monotonic()
        # Check every port of what is about to start before starting anything, so a conflict leaves
        # nothing half-started behind.
        for proc, kind, node in self._daemons():
            if not proc.is_running():
                for port, variable in self._ports_of(kind, node):
                    ensure_port_free(HOST, port, component=self.name, variable=variable)
        try:
            for proc, kind, node in self._daemons()[:1 + self.topology.datanodes]:
                self.start_daemon(kind, node)
            self.namenode.wait_until(self._namenode_ready, component=self.name,
                                     what="NameNode (out of safe mode)", timeout=180)
            # Every DataNode watched: a second one's bind error fails the wait at once, with its own log.
            self.datanode.wait_until(self._datanodes_live, component=self.name, also=self.datanodes,
                                     what=f"{self.topology.datanodes} DataNode registration(s)", timeout=180)
            self._probe_error = ""
            self.datanode.wait_until(self._write_probe, component=self.name,
                                     what="HDFS test write", timeout=60)
            self._webhdfs().mkdirs("/btc")
            if self.topology.yarn:
                for proc, kind, node in self._daemons()[1 + self.topology.datanodes:]:
                    self.start_daemon(kind, node)
                self.resourcemanager.wait_until(self._nodemanagers_running, component=self.name,
                                                also=self.nodemanagers,
                                                what=f"ResourceManager with {self.topology.nodemanagers} "
                                                     "running NodeManagers", timeout=180)
                self.historyserver.wait_until(self._historyserver_ready, component=self.name,
                                              what="JobHistory server", timeout=120)
        except ProcessError as exc:  # a StackError, or a daemon that died or never got ready in wait_until
            self.stop(kill=True)
            extra = f"\nlast test-write error: {self._probe_error}" if self._probe_error else ""
            raise StackError(f"{exc}{extra}\nNameNode log: {self.namenode.log_file}") from exc
        yarn = f", YARN {self.resourcemanager_url}" if self.topology.yarn else ""
        progress(self.name, f"HDFS ready in {time.monotonic() - began:.1f}s: {self.hdfs_url}, "
                            f"WebHDFS {self.webhdfs_url}, /btc present{yarn}")

    def stop(self, *, kill: bool = False) -> None:
        # Workers first (YARN, then the DataNodes), so none spends the masters' shutdown retrying them.
        for proc, kind, node in reversed(self._daemons()):
            if not proc.is_running():
                proc.stop()  # clears a stale pid file
                continue
            progress(self.name, f"stopping {proc.name}{' (kill)' if kill else ''}")
            proc.stop(kill=kill)
            # A killed JVM's leader thread turns zombie before its other threads have closed the
            # sockets: wait for the ports so an immediate start() does not see them busy.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(port_is_open(HOST, port)
                                                      for port, _ in self._ports_of(kind, node)):
                time.sleep(0.2)

    def status(self) -> dict[str, object]:
        daemons = self._daemons()
        status: dict[str, object] = {
            "running": self.is_running(),
            "namenode": self.hdfs_url,
            **{f"{proc.name}_running": proc.is_running() for proc, _, _ in daemons},
            "webhdfs": f"{self.webhdfs_url}/webhdfs/v1",
            "web_ui": self.webhdfs_url,
            "pids": {proc.name: proc.pid() for proc, _, _ in daemons},
            "data_dir": str(self.state),
            "logs": [str(proc.log_file) for proc, _, _ in daemons],
        }
        if self.topology.yarn:
            status["resourcemanager"] = self.resourcemanager_url
            status["jobhistory"] = self.historyserver_url
        return status

    def env(self) -> dict[str, str]:
        return {
            "BTC_HDFS_URL": self.hdfs_url,
            "BTC_WEBHDFS_URL": self.webhdfs_url,
            "BTC_HDFS_USER": getpass.getuser(),
            "BTC_MAPREDUCE_FRAMEWORK": "yarn" if self.topology.yarn else "local",
            "HADOOP_CONF_DIR": str(self.conf_dir),
            "BTC_HADOOP_CLASSPATH": self.classpath,
            "BTC_HADOOP_STREAMING_JAR": str(self.streaming_jar),
            "BTC_HADOOP_CLASS_ARCHIVE": str(self.class_archive) if self.class_archive.exists() else "",
        }

    # ---- readiness probes ------------------------------------------------------------------------

    def _jmx(self, query: str) -> dict:
        url = f"{self.webhdfs_url}/jmx?qry={urllib.parse.quote(query)}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            beans = json.load(resp)["beans"]
        return beans[0] if beans else {}

    def _namenode_ready(self) -> bool:
        info = self._jmx("Hadoop:service=NameNode,name=NameNodeInfo")
        return bool(info) and info.get("Safemode", "x") == ""

    def live_datanodes(self) -> int:
        return int(self._jmx("Hadoop:service=NameNode,name=FSNamesystemState").get("NumLiveDataNodes", 0))

    def _datanodes_live(self) -> bool:
        return self.live_datanodes() >= self.topology.datanodes

    def yarn_rest(self, path: str, *, base: str | None = None) -> dict:
        """GET a YARN REST resource, e.g. ``yarn_rest("/ws/v1/cluster/nodes")``."""
        request = urllib.request.Request(f"{base or self.resourcemanager_url}{path}",
                                         headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)

    def running_nodemanagers(self) -> list[dict]:
        nodes = (self.yarn_rest("/ws/v1/cluster/nodes").get("nodes") or {}).get("node") or []
        return [node for node in nodes if node.get("state") == "RUNNING"]

    def _nodemanagers_running(self) -> bool:
        return len(self.running_nodemanagers()) >= self.topology.nodemanagers

    def _historyserver_ready(self) -> bool:
        return "historyInfo" in self.yarn_rest("/ws/v1/history/info", base=self.historyserver_url)

    def _webhdfs(self) -> WebHDFS:
        return WebHDFS(self.webhdfs_url, getpass.getuser(), timeout=30)

    def _write_probe(self) -> bool:
        """Write, read back and delete a tiny file: proves the DataNodes accept blocks."""
        try:
            client = self._webhdfs()
            path = f"/tmp/.btc-stack-probe-{uuid.uuid4().hex[:8]}"
            client.write(path, b"probe")
            ok = client.read(path) == b"probe"
            client.delete(path)
            return ok
        except Exception as exc:  # noqa: BLE001 - remembered for the error message, then retried
            self._probe_error = f"{type(exc).__name__}: {exc}"
            raise


def fsshell_command(classpath: str, conf_dir: str | Path, args: list[str] | tuple[str, ...]) -> list[str]:
    """``hdfs dfs <args>`` without the hadoop scripts, e.g. ``fsshell_command(cp, conf, ["-ls", "/btc"])``."""
    return hadoop_java_command(FSSHELL_CLASS, list(args), classpath, conf_dir, heap="256m",
                               root_logger="WARN,console")


__all__ = ["HADOOP_VERSION", "HadoopService", "HadoopTopology", "fsshell_command"]

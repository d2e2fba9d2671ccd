"""HDFS (one NameNode, one DataNode, replication 1) and MapReduce (LocalJobRunner) from Maven Central jars.

No Hadoop tarball: ``infra/local/maven/hadoop/pom.xml`` lists the Hadoop artifacts, Maven copies them and
their dependencies into ``<cache>/hadoop/<version>/lib`` once, and the daemons are started straight with
``java -cp <conf>:<lib>/* org.apache.hadoop...``. Everything binds to 127.0.0.1; data, generated config
and logs live under ``<state>/hadoop``. MapReduce jobs (Hadoop Streaming) run inside the submitting JVM
with ``mapreduce.framework.name=local`` and read/write this HDFS, so no YARN is needed.

The helpers ``hadoop_java_command`` and ``streaming_command`` only build command lines; they need neither
Dagster nor a running service object, so assets and scripts can use them with the values of ``env()``
(``BTC_HADOOP_CLASSPATH``, ``HADOOP_CONF_DIR``).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

from .base import (
    REPO_ROOT,
    ManagedProcess,
    Service,
    StackError,
    ensure_port_free,
    env_port,
    java_home,
    java_major,
    maven_resolve,
    port_is_open,
    progress,
    run_logged,
)

HADOOP_VERSION = "3.4.2"
POM = REPO_ROOT / "infra" / "local" / "maven" / "hadoop" / "pom.xml"
HOST = "127.0.0.1"

NAMENODE_CLASS = "org.apache.hadoop.hdfs.server.namenode.NameNode"
DATANODE_CLASS = "org.apache.hadoop.hdfs.server.datanode.DataNode"
FSSHELL_CLASS = "org.apache.hadoop.fs.FsShell"
STREAMING_CLASS = "org.apache.hadoop.streaming.HadoopStreaming"

# (env var, default) of every port the two daemons bind, all on 127.0.0.1.
PORTS = {
    "namenode_rpc": ("BTC_STACK_HDFS_PORT", 8020),
    "namenode_http": ("BTC_STACK_HDFS_HTTP_PORT", 9870),
    "datanode_data": ("BTC_STACK_DATANODE_PORT", 9866),
    "datanode_http": ("BTC_STACK_DATANODE_HTTP_PORT", 9864),
    "datanode_ipc": ("BTC_STACK_DATANODE_IPC_PORT", 9867),
}

# Hadoop 3.4 runs on Java 17, but some code reaches into JDK internals. Measured here: without
# --add-opens=java.base/java.lang, WebHDFS fails in the NameNode (Guice/cglib calls ClassLoader.defineClass:
# InaccessibleObjectException, HTTP 500 on every /webhdfs call). The other opens cover the usual Hadoop
# paths on Java 17 (NIO buffers, Kerberos/UGI helpers, JAXB reflection) and cost nothing.
# -XX:+IgnoreUnrecognizedVMOptions keeps the line valid on other JVMs.
JAVA17_FLAGS = (
    "-XX:+IgnoreUnrecognizedVMOptions",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.math=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.zip=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.util=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.x509=ALL-UNNAMED",
    "--add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
)


NAMENODE_PORTS = ("namenode_rpc", "namenode_http")
DATANODE_PORTS = ("datanode_data", "datanode_http", "datanode_ipc")


def _port(key: str) -> int:
    variable, default = PORTS[key]
    return env_port(variable, default, component="hadoop")


def _hadoop_java() -> Path:
    """``bin/java`` of a JDK Hadoop 3.4 runs on: 11 to 22 (17 is what the stack is tested with).

    From Java 23 ``Subject.getSubject`` throws UnsupportedOperationException, which UserGroupInformation
    calls on every start ("getSubject is not supported"), so refuse those JDKs with a clear message.
    """
    home = java_home()
    major = java_major(home)
    if major is not None and not 11 <= major <= 22:
        raise StackError(f"hadoop: Hadoop {HADOOP_VERSION} needs Java 11-22 (17 recommended) but {home} is "
                         f"Java {major}; point JAVA_HOME at a JDK 17 (e.g. /usr/lib/jvm/java-17-openjdk-amd64)")
    return home / "bin" / "java"


def hadoop_java_command(main_class: str, args: list[str] | tuple[str, ...], classpath: str,
                        conf_dir: str | Path, heap: str = "512m", *,
                        root_logger: str = "INFO,console",
                        java_opts: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``java`` command line running a Hadoop main class with ``conf_dir`` first on the classpath.

    ``classpath`` is the jar glob (``BTC_HADOOP_CLASSPATH``, e.g. ``.../lib/*``); the conf dir goes in
    front of it so core-site/hdfs-site/mapred-site/log4j.properties are found as resources.
    ``root_logger`` is log4j's ``hadoop.root.logger`` (e.g. ``WARN,console`` for a quiet FsShell).
    """
    conf_dir = Path(conf_dir)
    java = _hadoop_java()
    return [
        str(java), f"-Xmx{heap}", *JAVA17_FLAGS,
        "-Djava.net.preferIPv4Stack=true",
        f"-Dlog4j.configuration=file:{conf_dir / 'log4j.properties'}",
        f"-Dhadoop.root.logger={root_logger}",
        *java_opts,
        "-cp", f"{conf_dir}{os.pathsep}{classpath}",
        main_class, *args,
    ]


def _script_command(script: str | Path) -> str:
    """A streaming -mapper/-reducer value running a Python script (shipped with -files) with this interpreter."""
    python = sys.executable
    if any(ch.isspace() for ch in python):
        python = f'"{python}"'
    return f"{python} {Path(script).name}"


def streaming_command(classpath: str, conf_dir: str | Path, mapper: str | Path, reducer: str | Path | None,
                      inputs: list[str] | tuple[str, ...] | str, output: str, files: list[str | Path] | None = None,
                      extra_conf: dict[str, object] | None = None, *, heap: str = "1g",
                      root_logger: str = "INFO,console") -> list[str]:
    """The Hadoop Streaming command line for a Python mapper/reducer, run with ``sys.executable``.

    ``mapper``/``reducer`` are local paths of Python scripts: they are shipped with ``-files`` (plus any
    ``files``) and started as ``<sys.executable> <script name>`` in the task's working directory.
    ``reducer=None`` makes a map-only job. ``inputs``/``output`` are HDFS paths (``/btc/...``) or full
    URIs. Generic options come first (``-D k=v`` of ``extra_conf``, then ``-files``), as Hadoop requires.

    Run the command with a scratch directory as its working directory: with LocalJobRunner, the files
    of ``-files`` are symlinked into the JVM's working directory (and the scripts run there).
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    conf: dict[str, object] = {"mapreduce.framework.name": "local"}
    if reducer is None:
        conf["mapreduce.job.reduces"] = 0
    conf.update(extra_conf or {})
    shipped: list[str] = []
    for path in [mapper, *([reducer] if reducer is not None else []), *(files or [])]:
        resolved = str(Path(path).expanduser().resolve())
        if not Path(resolved).is_file():
            raise StackError(f"hadoop: streaming file {path} does not exist")
        if resolved not in shipped:
            shipped.append(resolved)
    args: list[str] = []
    for key, value in conf.items():
        args += ["-D", f"{key}={value}"]
    args += ["-files", ",".join(shipped)]
    for path in inputs:
        args += ["-input", str(path)]
    args += ["-output", str(output), "-mapper", _script_command(mapper)]
    if reducer is not None:
        args += ["-reducer", _script_command(reducer)]
    return hadoop_java_command(STREAMING_CLASS, args, classpath, conf_dir, heap=heap, root_logger=root_logger)


def _xml_config(properties: dict[str, object]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             "<!-- Generated by btc_assets.lib.stack.hadoop; edits are overwritten at every start. -->",
             "<configuration>"]
    for name, value in properties.items():
        lines.append(f"  <property><name>{escape(name)}</name><value>{escape(str(value))}</value></property>")
    lines.append("</configuration>")
    return "\n".join(lines) + "\n"


LOG4J_PROPERTIES = """\
# Generated by btc_assets.lib.stack.hadoop. Everything goes to stderr: the daemons' stderr is their
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

    def __init__(self, paths):
        super().__init__(paths)
        self.namenode = ManagedProcess("namenode", self.state)
        self.datanode = ManagedProcess("datanode", self.state)
        self._probe_error = ""

    # ---- locations -------------------------------------------------------------------------------

    @property
    def lib_dir(self) -> Path:
        return self.cache / self.version / "lib"

    @property
    def classpath(self) -> str:
        return str(self.lib_dir / "*")

    @property
    def conf_dir(self) -> Path:
        return self.state / "conf"

    @property
    def name_dir(self) -> Path:
        return self.state / "name"

    @property
    def data_dir(self) -> Path:
        return self.state / "data"

    @property
    def streaming_jar(self) -> Path:
        return self.lib_dir / f"hadoop-streaming-{self.version}.jar"

    @property
    def hdfs_url(self) -> str:
        return f"hdfs://{HOST}:{_port('namenode_rpc')}"

    @property
    def webhdfs_url(self) -> str:
        return f"http://{HOST}:{_port('namenode_http')}"

    # ---- provisioning and config -----------------------------------------------------------------

    def provision(self) -> None:
        if not POM.exists():
            raise StackError(f"hadoop: {POM} is missing; restore it from git")
        maven_resolve(POM, self.lib_dir, component=self.name)
        if not self.streaming_jar.exists():
            raise StackError(f"hadoop: {self.streaming_jar} missing after resolution; delete {self.lib_dir} "
                             "and run provision again")

    def write_config(self) -> Path:
        """(Re)write core-site, hdfs-site, mapred-site and log4j.properties into ``state/conf``."""
        conf = self.conf_dir
        conf.mkdir(parents=True, exist_ok=True)
        user = getpass.getuser()
        core = {
            "fs.defaultFS": self.hdfs_url,
            "hadoop.tmp.dir": str(self.state / "tmp"),
            # WebHDFS calls without ?user.name= act as the local user rather than "dr.who".
            "hadoop.http.staticuser.user": user,
            "hadoop.security.authentication": "simple",
        }
        hdfs = {
            "dfs.replication": 1,
            "dfs.namenode.name.dir": (self.name_dir).as_uri(),
            "dfs.datanode.data.dir": (self.data_dir).as_uri(),
            "dfs.namenode.rpc-address": f"{HOST}:{_port('namenode_rpc')}",
            "dfs.namenode.http-address": f"{HOST}:{_port('namenode_http')}",
            "dfs.namenode.https-address": f"{HOST}:0",
            "dfs.namenode.secondary.http-address": f"{HOST}:0",
            "dfs.namenode.secondary.https-address": f"{HOST}:0",
            "dfs.datanode.address": f"{HOST}:{_port('datanode_data')}",
            "dfs.datanode.http.address": f"{HOST}:{_port('datanode_http')}",
            "dfs.datanode.https.address": f"{HOST}:0",
            "dfs.datanode.ipc.address": f"{HOST}:{_port('datanode_ipc')}",
            # The DataNode registers as 127.0.0.1, so WebHDFS redirects point at 127.0.0.1 too.
            "dfs.datanode.hostname": HOST,
            "dfs.http.policy": "HTTP_ONLY",
            "dfs.webhdfs.enabled": "true",
            "dfs.permissions.enabled": "false",
            # One DataNode: never try to replace a failed one in a write pipeline (appends would fail).
            "dfs.client.block.write.replace-datanode-on-failure.enable": "false",
            "dfs.client.block.write.replace-datanode-on-failure.policy": "NEVER",
            # Leave safe mode as soon as the blocks are reported (default waits 30 s more).
            "dfs.namenode.safemode.extension": 0,
            "dfs.heartbeat.interval": 3,
            # Keep the daemons light: the machine also runs Kafka, Spark and InfluxDB.
            "dfs.namenode.handler.count": 10,
            "dfs.datanode.handler.count": 5,
            "dfs.datanode.max.transfer.threads": 1024,
        }
        mapred = {
            "mapreduce.framework.name": "local",
            "mapreduce.cluster.local.dir": str(self.state / "tmp" / "mapred" / "local"),
            "mapreduce.jobtracker.staging.root.dir": "/tmp/hadoop-staging",
            "mapreduce.task.io.sort.mb": 64,
            "mapreduce.local.map.tasks.maximum": 2,
            "mapreduce.local.reduce.tasks.maximum": 1,
        }
        files = {
            "core-site.xml": _xml_config(core),
            "hdfs-site.xml": _xml_config(hdfs),
            "mapred-site.xml": _xml_config(mapred),
            "log4j.properties": LOG4J_PROPERTIES,
        }
        for name, text in files.items():
            path = conf / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        return conf

    def _daemon_command(self, main_class: str, args: list[str] | None = None) -> list[str]:
        logs = self.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return hadoop_java_command(
            main_class, args or [], self.classpath, self.conf_dir, heap="512m",
            java_opts=[f"-Dhadoop.log.dir={logs}", f"-Dhadoop.home.dir={self.cache / self.version}",
                       "-Dhadoop.security.logger=WARN,console"],
        )

    # ---- lifecycle -------------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self.namenode.is_running() and self.datanode.is_running()

    def _check_ports(self, keys) -> None:
        for key in keys:
            ensure_port_free(HOST, _port(key), component=self.name, variable=PORTS[key][0])

    def _format_if_needed(self) -> None:
        if (self.name_dir / "current" / "VERSION").exists():
            return
        progress(self.name, f"formatting a new NameNode in {self.name_dir} (first start only)")
        # A new namespace gets a new cluster id: blocks of an older one could never be used again and
        # would stop the DataNode ("Incompatible clusterIDs"), so they go too.
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        run_logged(self._daemon_command(NAMENODE_CLASS, ["-format", "-nonInteractive", "-force",
                                                         "-clusterid", "btc-local"]),
                   self.state / "format.log", component=self.name, step="NameNode format", timeout=300)

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
        self._check_ports([*(() if self.namenode.is_running() else NAMENODE_PORTS),
                           *(() if self.datanode.is_running() else DATANODE_PORTS)])
        if not self.namenode.is_running():
            self._format_if_needed()
            progress(self.name, f"starting NameNode on {HOST}:{_port('namenode_rpc')} "
                                f"(web {HOST}:{_port('namenode_http')})")
            self.namenode.start(self._daemon_command(NAMENODE_CLASS), cwd=self.state)
        if not self.datanode.is_running():
            progress(self.name, f"starting DataNode on {HOST}:{_port('datanode_data')}")
            self.datanode.start(self._daemon_command(DATANODE_CLASS), cwd=self.state)
        try:
            self.namenode.wait_until(self._namenode_ready, component=self.name,
                                     what="NameNode (out of safe mode)", timeout=180)
            self.datanode.wait_until(self._datanode_live, component=self.name,
                                     what="DataNode registration", timeout=180)
            self._probe_error = ""
            self.datanode.wait_until(self._write_probe, component=self.name,
                                     what="HDFS test write", timeout=60)
            self._webhdfs("PUT", "/btc", "MKDIRS")
        except StackError as exc:
            self.stop(kill=True)
            extra = f"\nlast test-write error: {self._probe_error}" if self._probe_error else ""
            raise StackError(f"{exc}{extra}\nNameNode log: {self.namenode.log_file}") from exc
        progress(self.name, f"HDFS ready in {time.monotonic() - began:.1f}s: {self.hdfs_url}, "
                            f"WebHDFS {self.webhdfs_url}, /btc present")

    def stop(self, *, kill: bool = False) -> None:
        # DataNode first, so it doesn't spend the NameNode's shutdown retrying to reach it.
        for proc, ports in ((self.datanode, DATANODE_PORTS), (self.namenode, NAMENODE_PORTS)):
            if not proc.is_running():
                proc.stop()  # clears a stale pid file
                continue
            progress(self.name, f"stopping {proc.name}{' (kill)' if kill else ''}")
            proc.stop(kill=kill)
            # A killed JVM's leader thread turns zombie before its other threads have closed the
            # sockets: wait for the ports so an immediate start() does not see them busy.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(port_is_open(HOST, _port(k)) for k in ports):
                time.sleep(0.2)

    def status(self) -> dict[str, object]:
        return {
            "running": self.is_running(),
            "namenode": self.hdfs_url,
            "namenode_running": self.namenode.is_running(),
            "datanode_running": self.datanode.is_running(),
            "webhdfs": f"{self.webhdfs_url}/webhdfs/v1",
            "web_ui": self.webhdfs_url,
            "pids": {"namenode": self.namenode.pid(), "datanode": self.datanode.pid()},
            "data_dir": str(self.state),
            "logs": [str(self.namenode.log_file), str(self.datanode.log_file)],
        }

    def env(self) -> dict[str, str]:
        return {
            "BTC_HDFS_URL": self.hdfs_url,
            "BTC_WEBHDFS_URL": self.webhdfs_url,
            "BTC_HDFS_USER": getpass.getuser(),
            "BTC_MAPREDUCE_FRAMEWORK": "local",
            "HADOOP_CONF_DIR": str(self.conf_dir),
            "BTC_HADOOP_CLASSPATH": self.classpath,
            "BTC_HADOOP_STREAMING_JAR": str(self.streaming_jar),
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

    def _datanode_live(self) -> bool:
        state = self._jmx("Hadoop:service=NameNode,name=FSNamesystemState")
        return int(state.get("NumLiveDataNodes", 0)) >= 1

    def _webhdfs(self, method: str, path: str, op: str, data: bytes | None = None, **params) -> bytes:
        query = urllib.parse.urlencode({"op": op, "user.name": getpass.getuser(), **params})
        url = f"{self.webhdfs_url}/webhdfs/v1{path}?{query}"
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # follows the DataNode redirect
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise StackError(f"hadoop: WebHDFS {op} {path} failed: HTTP {exc.code} "
                             f"{exc.read()[:300].decode(errors='replace')}") from exc

    def _write_probe(self) -> bool:
        """Write, read back and delete a tiny file: proves the DataNode accepts blocks."""
        try:
            return self._write_probe_once()
        except Exception as exc:  # noqa: BLE001 - remembered for the error message, then retried
            self._probe_error = f"{type(exc).__name__}: {exc}"
            raise

    def _write_probe_once(self) -> bool:
        path = f"/tmp/.btc-stack-probe-{uuid.uuid4().hex[:8]}"
        payload = b"probe"
        # CREATE is two steps: the NameNode answers 307 with the DataNode URL, which gets the bytes.
        # urllib does not re-send a body on redirect, so do it by hand.
        query = urllib.parse.urlencode({"op": "CREATE", "user.name": getpass.getuser(), "overwrite": "true"})
        first = urllib.request.Request(f"{self.webhdfs_url}/webhdfs/v1{path}?{query}", method="PUT")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            opener.open(first, timeout=30)
            raise StackError("hadoop: WebHDFS CREATE did not redirect to a DataNode")
        except urllib.error.HTTPError as exc:
            if exc.code != 307:
                raise
            location = exc.headers["Location"]
        put = urllib.request.Request(location, data=payload, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(put, timeout=30):
            pass
        ok = self._webhdfs("GET", path, "OPEN") == payload
        self._webhdfs("DELETE", path, "DELETE")
        return ok


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def fsshell_command(classpath: str, conf_dir: str | Path, args: list[str] | tuple[str, ...]) -> list[str]:
    """``hdfs dfs <args>`` without the hadoop scripts, e.g. ``fsshell_command(cp, conf, ["-ls", "/btc"])``."""
    return hadoop_java_command(FSSHELL_CLASS, list(args), classpath, conf_dir, heap="256m",
                               root_logger="WARN,console")


__all__ = [
    "HADOOP_VERSION", "HadoopService", "hadoop_java_command", "streaming_command", "fsshell_command",
    "JAVA17_FLAGS",
]

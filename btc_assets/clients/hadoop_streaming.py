"""Hadoop Streaming jobs: the one command line, and a runner that reports to Dagster through Pipes.

Two ways to launch the same job:

* with the Hadoop jars on a classpath (``BTC_HADOOP_CLASSPATH``, the local stack, or a client
  machine with the jars but no Hadoop scripts): ``java -cp <conf>:<jars> ...HadoopStreaming``;
* with a Hadoop installation: ``hadoop jar <hadoop-streaming.jar>``.

Either way the generic options come first (``-D k=v``, then ``-files``), as Hadoop requires, and the
mapper and reducer are Python scripts shipped with ``-files`` and started as ``<python> <script>``
in the task's working directory (this interpreter on the local runner, the node's ``python3`` on
YARN).

The runner (``python -m btc_assets.clients.hadoop_streaming``, started by
``dagster.PipesSubprocessClient``) runs the command, forwards the job's progress lines to the run's
logs, parses the job's counters and reports them back; when the Dagster run is cancelled it kills the
JVM (and, with ``PR_SET_PDEATHSIG``, the JVM dies with the runner whatever kills it).
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from btc_assets import config
from btc_assets.clients.jvm import HDFS_CLIENT_CONF, class_archive_opts, java_executable

STREAMING_CLASS = "org.apache.hadoop.streaming.HadoopStreaming"
# The minute_bars job's input format (mapreduce/LineBlockInputFormat.java): blocks of whole lines to the
# mapper instead of one line at a time, built by line_blocks_jar.
LINE_BLOCKS_CLASS = "btc.mapreduce.LineBlockInputFormat"
LINE_BLOCKS_SOURCE = "LineBlockInputFormat.java"

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


class StreamingJobError(RuntimeError):
    """A Hadoop Streaming job failed; the message has what the scripts printed and the job's last lines."""


def hadoop_java() -> Path:
    """``bin/java`` of a JDK Hadoop 3.4 runs on: 11 to 22 (17 is what the stack is tested with).

    From Java 23 ``Subject.getSubject`` throws UnsupportedOperationException, which UserGroupInformation
    calls on every start ("getSubject is not supported").
    """
    return java_executable("hadoop: Hadoop 3.4", 11, 22, why="Subject.getSubject is gone from Java 23")


def hadoop_java_command(main_class: str, args: Sequence[str], classpath: str, conf_dir: str | Path,
                        heap: str = "512m", *, root_logger: str = "INFO,console",
                        java_opts: Sequence[str] = ()) -> list[str]:
    """``java`` command line running a Hadoop main class with ``conf_dir`` on the classpath.

    ``classpath`` is the jar glob (``BTC_HADOOP_CLASSPATH``, e.g. ``.../lib/*``); the conf dir comes after
    it, so core-site/hdfs-site/mapred-site/log4j.properties are found as resources (no Hadoop jar carries
    one) and the jars alone are the classpath's prefix, which a class-data archive (``class_archive_opts``)
    must match.
    ``root_logger`` is log4j's ``hadoop.root.logger`` (e.g. ``WARN,console`` for a quiet FsShell).
    """
    conf_dir = Path(conf_dir)
    return [
        str(hadoop_java()), f"-Xmx{heap}", *JAVA17_FLAGS,
        "-Djava.net.preferIPv4Stack=true",
        f"-Dlog4j.configuration=file:{conf_dir / 'log4j.properties'}",
        f"-Dhadoop.root.logger={root_logger}",
        *java_opts,
        "-cp", f"{classpath}{os.pathsep}{conf_dir}",
        main_class, *args,
    ]


@dataclass(frozen=True)
class StreamingJob:
    """One Hadoop Streaming job: Python mapper/reducer scripts (``reducer=None``: map-only), HDFS paths."""

    mapper: str
    reducer: str | None
    inputs: Sequence[str]
    output: str
    files: Sequence[str] = ()
    conf: Mapping[str, object] | None = None
    # ``-inputformat`` (default TextInputFormat) and the jars it comes in (``-libjars``: shipped to the tasks).
    input_format: str = ""
    libjars: Sequence[str] = ()


def streaming_command(job: StreamingJob, *, framework: str, hdfs_url: str, classpath: str = "",
                      conf_dir: str = "", streaming_jar: str = "", heap: str = "1g",
                      class_archive: str = "") -> list[str]:
    """The command line of ``job``: ``java -cp`` with ``classpath`` if given, else ``hadoop jar streaming_jar``.

    On the local runner the scripts run with this interpreter; on YARN with the node's ``python3``.
    """
    conf: dict[str, object] = {"mapreduce.framework.name": framework, "fs.defaultFS": hdfs_url, **HDFS_CLIENT_CONF}
    if job.reducer is None:
        conf["mapreduce.job.reduces"] = 0
    conf.update(job.conf or {})
    shipped: list[str] = []
    for path in [job.mapper, *([job.reducer] if job.reducer else []), *job.files]:
        resolved = str(Path(path).expanduser().resolve())
        if not Path(resolved).is_file():
            raise StreamingJobError(f"streaming file {path} does not exist")
        if resolved not in shipped:
            shipped.append(resolved)
    python = sys.executable if framework == "local" else "python3"
    if any(ch.isspace() for ch in python):
        python = f'"{python}"'
    args: list[str] = []
    for key, value in conf.items():
        args += ["-D", f"{key}={value}"]
    args += ["-files", ",".join(shipped)]
    if job.libjars:
        args += ["-libjars", ",".join(str(Path(jar).resolve()) for jar in job.libjars)]
    if job.input_format:
        args += ["-inputformat", job.input_format]
    for path in job.inputs:
        args += ["-input", str(path)]
    args += ["-output", str(job.output), "-mapper", f"{python} {Path(job.mapper).name}"]
    if job.reducer:
        args += ["-reducer", f"{python} {Path(job.reducer).name}"]
    if classpath:
        return hadoop_java_command(STREAMING_CLASS, args, classpath, conf_dir, heap=heap,
                                   java_opts=class_archive_opts(class_archive))
    if not streaming_jar:
        raise StreamingJobError("set BTC_HADOOP_CLASSPATH (the Hadoop jars) or BTC_HADOOP_STREAMING_JAR "
                                "(with the `hadoop` launcher on PATH) to run Hadoop Streaming jobs")
    return ["hadoop", "jar", streaming_jar, *args]


def line_blocks_jar(classpath: str, cache_dir: str | Path | None = None, source_dir: str | Path | None = None) -> Path:
    """The jar of ``LineBlockInputFormat`` (``mapreduce/LineBlockInputFormat.java``), compiled with the JDK's
    ``javac`` against the Hadoop jars of ``classpath`` into ``<BTC_CACHE_DIR>/mapreduce``, once per source, jars
    and JDK.

    Raises StreamingJobError when it cannot be built (no ``javac``: a JRE only; a compile error); the
    caller then runs the job with TextInputFormat (the same bars, slower).
    """
    source = Path(source_dir or config.mapreduce_dir()) / LINE_BLOCKS_SOURCE
    cache_dir = Path(cache_dir or config.cache_dir() / "mapreduce")
    if not source.is_file():
        raise StreamingJobError(f"{source} does not exist")
    java = hadoop_java()
    javac = java.with_name("javac")
    if not javac.exists():
        raise StreamingJobError(f"no javac beside {java} (a JRE, not a JDK): the MapReduce jobs read their input "
                                "line by line (install the JDK, e.g. openjdk-17-jdk-headless, for the faster "
                                "block reader)")
    jars = sorted(name for entry in classpath.split(os.pathsep) for name in (glob.glob(entry) or [entry]))
    key = hashlib.sha256("\n".join([source.read_text(), str(javac.resolve()), *map(os.path.basename, jars)])
                         .encode()).hexdigest()[:12]
    jar = cache_dir / f"btc-line-blocks-{key}.jar"
    if jar.is_file():
        return jar
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="btc-line-blocks-") as scratch:
        classes = Path(scratch, "classes")
        built = subprocess.run([str(javac), "-nowarn", "-encoding", "UTF-8", "--release", "11", "-d", str(classes),
                                "-cp", classpath, str(source)], capture_output=True, text=True)
        if built.returncode != 0:
            raise StreamingJobError(f"javac failed on {source}:\n{built.stderr.strip()[-2000:]}")
        partial = Path(scratch, jar.name)
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(classes.rglob("*.class")):
                archive.write(path, path.relative_to(classes).as_posix())
        # Another process may build the same jar at once: each writes its own and the rename is atomic.
        shutil.copy(partial, jar.with_name(f"{jar.name}.{os.getpid()}.tmp"))
        jar.with_name(f"{jar.name}.{os.getpid()}.tmp").replace(jar)
    return jar


# ---- running a job ---------------------------------------------------------------------------------

JVM_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d|\s+at |\t|java\.|Caused by|Streaming Command|\s*\.\.\. \d+ more)")
PROGRESS_LINE = re.compile(r" map \d+% | Job \S+ | ERROR |Submitted application ")


def script_output(lines: Sequence[str]) -> list[str]:
    """The lines of a job's output that the mapper/reducer wrote (tracebacks), not Hadoop's own logs."""
    return [line for line in lines if line.strip() and not JVM_LINE.match(line)]


def parse_counters(lines: Sequence[str]) -> dict[str, int]:
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


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the runner dies, however the runner dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_job(command: Sequence[str], *, env: Mapping[str, str] | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run a streaming job's command to completion in a fresh working directory; return its counters.

    An interrupt (SIGINT from a cancelled Dagster run, SIGTERM) kills the job's JVM before it
    propagates, so nothing keeps writing to the job's staging output.
    """
    started = time.monotonic()
    lines: list[str] = []
    # LocalJobRunner links the -files into the JVM's working directory: one fresh one per job.
    with tempfile.TemporaryDirectory(prefix="btc-streaming-") as workdir:
        proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(env) if env is not None else None, cwd=workdir,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if log is not None and PROGRESS_LINE.search(line):
                    log(line.rstrip())
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise StreamingJobError(f"Hadoop Streaming job failed (exit {proc.returncode}) after "
                                f"{time.monotonic() - started:.0f}s. What the scripts printed:\n"
                                + "\n".join(script_output(lines)[-30:])
                                + "\nThe job's last lines:\n" + "\n".join(lines[-8:]))
    return parse_counters(lines)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    """The Pipes side: the command comes in the extras, logs and counters go back to the Dagster run."""
    from dagster_pipes import open_dagster_pipes

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with open_dagster_pipes() as pipes:
        command = pipes.get_extra("command")
        pipes.log.info(f"Hadoop Streaming: {' '.join(command)}")
        try:
            counters = run_job(command, log=pipes.log.info)
        except StreamingJobError as exc:
            pipes.log.error(str(exc))
            # Exit 0: the resource raises the error with the job's own words (a failed exit would only say its code).
            pipes.report_custom_message({"error": str(exc)})
            return 0
        except KeyboardInterrupt:
            pipes.log.warning("interrupted: the Hadoop Streaming JVM was killed")
            return 130
        pipes.report_custom_message({"counters": counters})
    return 0


if __name__ == "__main__":
    sys.exit(main())

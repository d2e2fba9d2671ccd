"""Spark for the local stack: pyspark in local mode plus the Kafka connector from Maven Central; and
the cluster topology's standalone master and workers (``SparkStandalone``).

Spark needs no daemon here: each job starts its own local-mode driver. What the stack provides is
the `spark-sql-kafka-0-10` connector matching the installed pyspark, resolved once into the cache
(so sessions start offline and fast) and handed to Spark as ``spark.jars``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

from btc_assets.clients.jvm import JavaError, class_archive_opts, java_home
from btc_assets.clients.spark import SPARK_HOME_MARKER, spark_home_of
from btc_assets.processes import with_java_options

from .base import REPO_ROOT, ManagedProcess, Service, dump_class_archive, ensure_port_free, maven_resolve, progress

HOST = "127.0.0.1"

POM_TEMPLATE = REPO_ROOT / "infra" / "local" / "maven" / "spark-kafka" / "pom.xml"


def pyspark_version() -> str:
    import pyspark

    return pyspark.__version__


def _pyspark_home() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent)


def _artifact(jar: Path) -> str:
    """``hadoop-client-api-3.5.0.jar`` -> ``hadoop-client-api``."""
    return re.sub(r"-\d[\w.]*$", "", jar.stem)


class SparkService(Service):
    name = "spark"

    def __init__(self, paths):
        super().__init__(paths)
        self.version = pyspark_version()
        self.lib = self.cache / self.version / "lib"

    def provision(self) -> None:
        pom = self.cache / self.version / "pom.xml"
        pom.parent.mkdir(parents=True, exist_ok=True)
        text = POM_TEMPLATE.read_text().replace("@SPARK_VERSION@", self.version)
        if not pom.exists() or pom.read_text() != text:
            pom.write_text(text)
        maven_resolve(pom, self.lib, component=self.name)
        self._dump_class_archive()

    @property
    def spark_home(self) -> Path:
        """Where Spark drivers of the local stack find Spark (their ``SPARK_HOME``): pyspark's ``bin``, ``sbin`` and
        ``jars`` linked into the cache, once per pyspark build (its version, and its jars' names and sizes). The JVM
        checks a class-data archive against the paths and times of the jars it was dumped with: pyspark's own
        jars are in each venv, with the times of each install, so every new venv (every fresh checkout, every CI
        run) dumped the archive again (~30 s). From here, one archive serves every venv of that pyspark."""
        return spark_home_path(self.cache / self.version, Path(_pyspark_home()), self.version)

    @property
    def class_archive(self) -> Path:
        """The Spark drivers' class-data sharing archive (``BTC_SPARK_CLASS_ARCHIVE``), in ``spark_home`` (drivers
        given it run from there, ``spark_home_of``) and named after the JVM it was dumped by."""
        java = (java_home() / "bin" / "java").resolve()
        digest = hashlib.sha256(f"{java}:{java.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        return self.spark_home / f"driver-classes-{digest}.jsa"

    def _dump_class_archive(self) -> None:
        """Once per JVM and pyspark build: a small Spark session (DataFrames, SQL, Parquet, CSV, ML), its driver
        JVM told to archive the classes it loaded (JDK AppCDS). Every Spark driver after starts from it
        (``SparkSettings.class_archive``). A failed dump only costs that: it is said and provisioning goes on.
        The homes of other pyspark builds beyond the newest few are deleted (``prune_spark_homes``)."""
        archive = self.class_archive
        if archive.exists():
            os.utime(archive.parent)  # in use: the last one prune_spark_homes deletes
            return
        archive.parent.parent.mkdir(parents=True, exist_ok=True)
        with open(archive.parent.parent / "class-archive.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the cluster topology's two Spark services provision at once
            if archive.exists():
                return
            home = link_spark_home(Path(_pyspark_home()), archive.parent, self.version)
            progress(self.name, "dumping the Spark driver's class-data archive (once per JVM and pyspark, ~30 s)…")
            jars = ",".join(str(jar) for jar in self.jars())
            if not dump_class_archive(archive, lambda dumping, _: [sys.executable, "-m", "btc_localstack.spark",
                                                                   str(dumping), jars],
                                      component=self.name, log_path=archive.parent / "class-archive.log",
                                      without="Spark sessions start a few seconds slower", timeout=600):
                return
            prune_spark_homes(home)

    def jars(self) -> list[Path]:
        """The connector jars pyspark lacks. Maven also resolves Spark's own transitive jars (Scala,
        the Hadoop client, compression codecs) in versions that may differ from pyspark's bundled
        ones; two versions of one library on the classpath break at run time, so those are left out."""
        bundled = {_artifact(jar) for jar in (Path(_pyspark_home()) / "jars").glob("*.jar")}
        return sorted(jar for jar in self.lib.glob("*.jar") if _artifact(jar) not in bundled)

    def start(self) -> None:
        """Nothing to start: local mode runs inside each job's driver."""

    def stop(self, *, kill: bool = False) -> None:
        """Nothing to stop."""

    def is_running(self) -> bool:
        return bool(self.jars())

    def status(self) -> dict[str, object]:
        return {"running": "on demand (local mode)", "master": self.master(), "pyspark": self.version,
                "kafka connector jars": len(self.jars())}

    @staticmethod
    def master() -> str:
        return os.environ.get("BTC_STACK_SPARK_MASTER", "local[2]")

    def env(self) -> dict[str, str]:
        try:
            archive = self.class_archive  # stats pyspark's jars: once
            archive = str(archive) if archive.exists() else ""
        except (JavaError, OSError):  # no JDK (the stack's own start says so): no archive to name
            archive = ""
        return {"BTC_SPARK_MASTER": self.master(),
                "BTC_SPARK_JARS": ",".join(str(jar) for jar in self.jars()),
                "BTC_SPARK_PACKAGES": "",
                "BTC_SPARK_CLASS_ARCHIVE": archive}


def spark_home_path(cache: Path, pyspark_home: Path, version: str) -> Path:
    """``SparkService.spark_home`` in ``cache`` for the pyspark installed at ``pyspark_home``: named after the build
    (the version, the jars' names and sizes), not the install's path or times."""
    digest = hashlib.sha256(version.encode())
    for jar in sorted((pyspark_home / "jars").glob("*.jar")):
        digest.update(f"{jar.name}:{jar.stat().st_size}".encode())
    return cache / f"home-{digest.hexdigest()[:12]}"


def link_spark_home(pyspark_home: Path, home: Path, version: str) -> Path:
    """Makes ``home`` a Spark home of this pyspark (``SparkService.spark_home``): its ``bin``, ``sbin`` and ``jars``
    hard-linked (copied across file systems), and the version in ``SPARK_HOME_MARKER`` (``spark_home_of`` reads
    it). Built beside and renamed into place, so a killed link leaves no half home. Nothing to do if it is there."""
    if (home / SPARK_HOME_MARKER).exists():
        return home
    partial = home.with_name(f"{home.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    for part in ("bin", "sbin", "jars"):
        if (pyspark_home / part).is_dir():
            shutil.copytree(pyspark_home / part, partial / part, copy_function=_link_or_copy)
    (partial / SPARK_HOME_MARKER).write_text(version)
    shutil.rmtree(home, ignore_errors=True)  # a home without its marker: an older layout's leftovers
    partial.rename(home)
    return home


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def prune_spark_homes(keep: Path, others_kept: int = 2) -> list[Path]:
    """Deletes the Spark homes (with their archives) of other pyspark builds in the cache, all but the ``others_kept``
    used last (each is ~0.5 GB once its venv is gone, ~0.2 GB while it is there), and the archives of the layout
    before homes (one per venv, beside them). What it deleted, for the record."""
    versions = keep.parent.parent
    homes = sorted((path for path in versions.glob("*/home-*") if path.is_dir() and path != keep
                    and not path.name.endswith(".tmp")), key=lambda path: path.stat().st_mtime, reverse=True)
    legacy = [path for path in versions.glob("*/driver-classes-*.jsa*") if path.is_file()]
    deleted = homes[others_kept:] + legacy
    for path in deleted:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return deleted


def class_archive_workload(dumping: str, jars: str) -> None:
    """The work whose classes the archive holds: what the pipeline's sessions do first (Arrow DataFrames from
    pandas, windows and aggregations, Parquet and CSV, the ML models, the Kafka source's lookup). The driver JVM
    runs from the Spark home the archive is dumped into and writes the archive when it exits."""
    os.environ["SPARK_HOME"] = str(Path(dumping).parent)
    import pandas as pd
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import GBTRegressor, LinearRegression, RandomForestRegressor
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from btc_assets.clients.spark import SparkSettings, build_session

    spark = build_session(SparkSettings(
        app_name="btc-class-archive", jars=jars, driver_java_options=f"-XX:ArchiveClassesAtExit={dumping} -Xlog:cds=error",
        extra={"spark.sql.execution.arrow.pyspark.enabled": "true"}))
    scratch = Path.cwd()
    frame = spark.createDataFrame(pd.DataFrame({"minute": range(600), "price": [84_000.0 + i % 7 for i in range(600)]}))
    frame = frame.withColumn("bucket", F.col("minute") % 10)
    lagged = frame.withColumn("previous", F.lag("price").over(Window.partitionBy("bucket").orderBy("minute")))
    lagged.groupBy("bucket").agg(F.avg("price"), F.max("previous"), F.count("*")).write.parquet(str(scratch / "p"))
    spark.read.parquet(str(scratch / "p")).toPandas()
    frame.write.csv(str(scratch / "c"))
    spark.read.csv(str(scratch / "c"), schema="minute INT, price DOUBLE, bucket INT").count()
    data = VectorAssembler(inputCols=["minute", "bucket"], outputCol="features").transform(frame)
    for model in (LinearRegression(labelCol="price"), RandomForestRegressor(labelCol="price", numTrees=2, maxDepth=2),
                  GBTRegressor(labelCol="price", maxIter=2, maxDepth=2)):
        model.fit(data).transform(data).count()
    spark.readStream.format("kafka").option("subscribe", "none").option("kafka.bootstrap.servers", "127.0.0.1:9")
    spark.stop()
    # pyspark kills its JVM when Python exits, which would cut the dump short: end it and wait instead (the
    # gateway exits when its stdin closes).
    from pyspark import SparkContext

    jvm = SparkContext._gateway.proc
    SparkContext._gateway.shutdown()
    jvm.stdin.close()
    jvm.wait(timeout=300)


if __name__ == "__main__":
    class_archive_workload(sys.argv[1], sys.argv[2])


MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


WORKER_TIMEOUT_S = 15


class SparkStandalone(Service):
    """The cluster topology's Spark: a standalone master and ``workers`` workers, started with the
    ``spark-class`` script of the installed pyspark distribution (no Spark tarball), all on 127.0.0.1.

    Ports from ``base_port``: master RPC +0, master web UI (and its JSON API, ``/json/``) +1, worker *i*
    RPC +10+2(i-1), web UI +11+2(i-1). Each worker offers ``cores`` cores and ``memory`` to executors and
    has its own work directory (``<state>/spark-standalone/worker-<i>``).
    """

    name = "spark-standalone"

    def __init__(self, paths, *, workers: int = 2, base_port: int = 27077, cores: int = 2,
                 memory: str = "2g", daemon_heap: str = "256m"):
        super().__init__(paths)
        self.base_port = base_port
        self.cores = cores
        self.memory = memory
        self.daemon_heap = daemon_heap
        self.master_process = ManagedProcess("master", self.state)
        self.workers = [ManagedProcess(f"worker-{i}", self.state) for i in range(1, workers + 1)]

    @property
    def cache(self) -> Path:
        return self.paths.cache_dir / "spark"

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.base_port}"

    @property
    def web_url(self) -> str:
        return f"http://{HOST}:{self.base_port + 1}"

    def worker_ports(self, index: int) -> tuple[int, int]:
        return self.base_port + 10 + 2 * (index - 1), self.base_port + 11 + 2 * (index - 1)

    def provision(self) -> None:
        SparkService(self.paths).provision()  # the Kafka connector the stream job ships with --jars

    def _home_and_archive(self) -> tuple[str, str]:
        """The Spark home the daemons run from and the class-data archive they (and the executors a worker starts,
        which inherit its environment) map Spark's classes from: the drivers' (``SparkService.class_archive``),
        whose classpath a daemon's and an executor's start with, when it is there; else pyspark's own home and
        no archive."""
        try:
            archive = SparkService(self.paths).class_archive
        except (JavaError, OSError):
            archive = None
        home = spark_home_of(archive) if archive is not None and archive.is_file() else None
        return (str(home), str(archive)) if home is not None else (_pyspark_home(), "")

    def _env(self) -> dict[str, str]:
        home, archive = self._home_and_archive()
        env = {**os.environ, "SPARK_HOME": home, "SPARK_DAEMON_MEMORY": self.daemon_heap,
               "SPARK_LOG_DIR": str(self.state / "logs"), "SPARK_NO_DAEMONIZE": "1",
               # The web UIs of the master and workers bind to SPARK_LOCAL_IP, else to every interface.
               "SPARK_LOCAL_IP": HOST,
               # Executors' Python workers: this interpreter (the machine's "nodes" share its environment).
               "PYSPARK_PYTHON": sys.executable}
        return with_java_options(env, *class_archive_opts(archive)) if archive else env

    @staticmethod
    def _spark_class(env: dict[str, str], main: str, *args: str) -> list[str]:
        """``spark-class`` of the Spark home ``env`` (``_env``) names, running ``main``."""
        return [str(Path(env["SPARK_HOME"]) / "bin" / "spark-class"), main, *args]

    def start_master(self) -> None:
        if self.master_process.is_running():
            return
        for port in (self.base_port, self.base_port + 1):
            ensure_port_free(HOST, port, component=self.name, variable="the Spark master's base port")
        progress(self.name, f"starting master {self.master_url} (web {self.web_url})")
        # A worker that stops heartbeating is dead after WORKER_TIMEOUT_S (Spark's default: 60 s). Until then
        # the master counts its executors' cores as used and gives a job that lost them no new executor.
        env = {**self._env(), "SPARK_MASTER_OPTS": f"-Dspark.worker.timeout={WORKER_TIMEOUT_S}"}
        self.master_process.start(self._spark_class(env, MASTER_CLASS, "--host", HOST, "--port", str(self.base_port),
                                                    "--webui-port", str(self.base_port + 1)),
                                  env=env, cwd=self.state, java_tmp=True)

    def start_worker(self, index: int) -> None:
        proc = self.workers[index - 1]
        if proc.is_running():
            return
        rpc, web = self.worker_ports(index)
        for port in (rpc, web):
            ensure_port_free(HOST, port, component=self.name, variable="the Spark master's base port")
        work = self.state / f"worker-{index}"
        work.mkdir(parents=True, exist_ok=True)
        progress(self.name, f"starting {proc.name} ({self.cores} cores, {self.memory}) on {HOST}:{rpc}")
        env = self._env()
        proc.start(self._spark_class(env, WORKER_CLASS, "--host", HOST, "--port", str(rpc), "--webui-port", str(web),
                                     "--cores", str(self.cores), "--memory", self.memory,
                                     "--work-dir", str(work), self.master_url),
                   env=env, cwd=work, java_tmp=True)

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.start_master()
        self.master_process.wait_until(lambda: self.master_json() is not None, component=self.name,
                                       what="Spark master", timeout=120)
        for index in range(1, len(self.workers) + 1):
            self.start_worker(index)
        self.master_process.wait_until(lambda: len(self.alive_workers()) >= len(self.workers),
                                       component=self.name, what=f"{len(self.workers)} Spark workers registered",
                                       timeout=120)
        progress(self.name, f"ready: {self.master_url} with {len(self.workers)} workers (web {self.web_url})")

    def master_json(self) -> dict | None:
        """The master's JSON API (``/json/``): workers, active and completed applications."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as resp:
            return json.load(resp)

    def alive_workers(self) -> list[dict]:
        return [worker for worker in (self.master_json() or {}).get("workers", []) if worker.get("state") == "ALIVE"]

    def stop(self, *, kill: bool = False) -> None:
        for proc in [*self.workers, self.master_process]:
            if proc.is_running():
                progress(self.name, f"stopping {proc.name}{' (kill)' if kill else ''}")
            proc.stop(kill=kill)

    def is_running(self) -> bool:
        return self.master_process.is_running() and all(proc.is_running() for proc in self.workers)

    def status(self) -> dict[str, object]:
        return {"running": self.is_running(), "master": self.master_url, "web_ui": self.web_url,
                "pids": {proc.name: proc.pid() for proc in [self.master_process, *self.workers]}}

    def env(self) -> dict[str, str]:
        return {"BTC_SPARK_MASTER": self.master_url, "BTC_SPARK_PYTHON": sys.executable,
                "BTC_SPARK_CORES_MAX": str(self.cores)}

"""The local stack as one object: provision, start, stop, report and write the env file.

Used by the `btc-pipeline stack …` CLI and by the tests' session fixture, so both bring up exactly
the same engines the same way. Two topologies:

* ``local`` (default, state in ``.local-stack``): every engine single-node, Spark in local mode,
  MapReduce in the LocalJobRunner, plus PostgreSQL and Dagster's webserver and daemon;
* ``cluster`` (``--topology cluster``, state in ``.local-stack-cluster``): the engines as several nodes
  on this machine, on ports of their own so both can run at once: Kafka 3 KRaft nodes (29092..29097),
  HDFS a NameNode and 3 DataNodes and YARN a ResourceManager, 2 NodeManagers and the JobHistory server
  (28020..28102), Spark standalone a master and 2 workers (27077..27092), InfluxDB single (28086: InfluxDB
  2 OSS has no clustering). Its env file sets ``BTC_PROFILE=cluster``; Dagster's processes are the local
  topology's (or a deployment's), pointed at it by that env file.
"""

from __future__ import annotations

import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor

from btc_assets import config

from .base import Service, StackError, StackPaths, progress
from .dagster import DagsterService
from .hadoop import HadoopService, HadoopTopology
from .influxdb import InfluxDBService
from .kafka import KafkaCluster, KafkaService
from .postgres import PostgresService
from .spark import SparkService, SparkStandalone

TOPOLOGIES = ("local", "cluster")

ENV_HEADER = """# Written by `btc-pipeline stack up`: endpoints and generated credentials of the local stack.
# Git-ignored; regenerated on every start. Do not commit.
"""


class LocalStack:
    def __init__(self, paths: StackPaths | None = None, topology: str = "local"):
        if topology not in TOPOLOGIES:
            raise StackError(f"unknown topology {topology!r}; choose from {', '.join(TOPOLOGIES)}")
        self.topology = topology
        self.paths = paths or StackPaths.from_env(default_state=".local-stack" if topology == "local"
                                                  else ".local-stack-cluster")
        if topology == "local":
            services = (HadoopService(self.paths), KafkaService(self.paths), InfluxDBService(self.paths),
                        SparkService(self.paths), PostgresService(self.paths),
                        # Last: it loads the code location with every other engine's settings.
                        DagsterService(self.paths, self.env))
        else:
            services = (HadoopService(self.paths, HadoopTopology.cluster()), KafkaCluster(self.paths, nodes=3),
                        InfluxDBService(self.paths, default_port=28086), SparkService(self.paths),
                        SparkStandalone(self.paths))
        self.services: dict[str, Service] = {service.name: service for service in services}

    @property
    def env_file(self):
        return self.paths.state_dir / "stack.env"

    def select(self, names: list[str] | None) -> list[Service]:
        if not names:
            return list(self.services.values())
        unknown = [name for name in names if name not in self.services]
        if unknown:
            raise StackError(f"unknown service(s) {unknown}; choose from {sorted(self.services)}")
        return [self.services[name] for name in names]

    def provision(self, names: list[str] | None = None) -> None:
        """Download/build every engine, in parallel: the InfluxDB build is CPU-bound, the rest network."""
        started = time.monotonic()
        services = self.select(names)
        with ThreadPoolExecutor(max_workers=len(services)) as pool:
            futures = {service.name: pool.submit(service.provision) for service in services}
        failures = []
        for name, future in futures.items():
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - report every failed engine, not just the first
                failures.append(f"{name}: {exc}")
        if failures:
            raise StackError("provisioning failed:\n" + "\n".join(failures))
        progress("stack", f"engines ready in {time.monotonic() - started:.0f}s "
                          f"(cache {self.paths.cache_dir})")

    def up(self, names: list[str] | None = None) -> None:
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        self.provision(names)
        for service in self.select(names):
            service.start()
        self.write_env_file()
        progress("stack", f"up; endpoints and credentials in {self.env_file}")

    def down(self, names: list[str] | None = None, *, kill: bool = False) -> None:
        for service in reversed(self.select(names)):
            if service.is_running():
                progress(service.name, "stopping")
            service.stop(kill=kill)

    def is_up(self) -> bool:
        return all(service.is_running() for service in self.services.values())

    def status(self) -> dict[str, dict[str, object]]:
        return {name: service.status() for name, service in self.services.items()}

    def env(self) -> dict[str, str]:
        """Every setting the code location reads: the defaults, under what this stack's engines set.

        A setting already in this process's environment (e.g. ``BTC_SYMBOLS`` given by hand) is kept, so
        the env file and the processes started from it agree."""
        values = {name: os.environ.get(name) or value for name, value in config.defaults().items()}
        values.update({"BTC_PROFILE": self.topology, "BTC_STACK_DIR": str(self.paths.state_dir),
                       "BTC_CACHE_DIR": str(self.paths.cache_dir)})
        for service in self.services.values():
            values.update(service.env())
        return values

    def write_env_file(self) -> None:
        # Quoted for a shell (`set -a; . stack.env`): some values hold spaces ("10 seconds").
        lines = [ENV_HEADER] + [f"{name}={shlex.quote(value)}" for name, value in sorted(self.env().items())]
        tmp = self.env_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        tmp.rename(self.env_file)

    def apply_env(self) -> None:
        """Put the stack's endpoints and credentials into this process's environment."""
        os.environ.update(self.env())

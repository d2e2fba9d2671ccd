"""Dagster as deployed, on the local stack: a code server, the webserver and the daemon on one DAGSTER_HOME,
storage on PostgreSQL.

``<state>/dagster_home/dagster.yaml`` is written at every start: run, event-log and schedule storage in
the stack's PostgreSQL (``dagster-postgres``, credentials from the environment, never in the file),
the queued run coordinator, and a pool limit (``BTC_MAPREDUCE_CONCURRENCY``) so that a backfill
launched from the UI runs at most that many MapReduce jobs at once.

The code location is served by one ``dagster code-server`` (127.0.0.1:4000 by default), as compose's
``dagster-code`` container serves it, and the webserver and the daemon reach it over gRPC
(``<state>/dagster_home/workspace.yaml``, written at every start). Loaded from ``workspace.yaml``'s
``python_module`` instead, each of them spawned code servers of its own, and the daemon replaced its
every minute (Dagster's ``RELOAD_WORKSPACE_INTERVAL``): a new process importing the code location, ~2.5 s
of CPU a minute on an idle stack. The code server starts the runs' processes, and every process gets
the stack's settings (``stack.env``) as its environment. The UI's "Reload" loads edited code again.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import requests

from btc_assets import config

from .base import REPO_ROOT, ManagedProcess, ProcessError, Service, StackError, ensure_port_free, env_port, progress, run_logged

HOST = "127.0.0.1"
MAPREDUCE_POOL = "mapreduce"  # the pool minute_bars runs in (btc_assets/defs/history/assets.py)

INSTANCE_YAML = """\
# Written by btc_localstack/dagster.py at every start of the local stack; edits are overwritten.
# The deployed instance: storage on PostgreSQL, queued runs, MapReduce jobs limited by a pool.
storage:
  postgres:
    postgres_db:
      username: {{env: DAGSTER_POSTGRES_USER}}
      password: {{env: DAGSTER_POSTGRES_PASSWORD}}
      hostname: {{env: DAGSTER_POSTGRES_HOST}}
      db_name: {{env: DAGSTER_POSTGRES_DB}}
      port: {{env: DAGSTER_POSTGRES_PORT}}
      # psycopg2 (dagster-postgres' driver): SQLAlchemy 2.1 would pick psycopg 3 for plain `postgresql`.
      scheme: postgresql+psycopg2
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    # A queued run starts within a second of room for it (Dagster's default looks every 5 s): a backfill's runs,
    # one at a time in the pool, follow each other without a wait; a poll of PostgreSQL a second costs nothing.
    dequeue_interval_seconds: 1
concurrency:
  runs:
    max_concurrent_runs: {max_runs}
  pools:
    # Pools without a limit of their own (minute_bars' "{pool}") run this many steps at once; `run`
    # granularity keeps a run in the queue until its pool has room, so a backfill never piles JVMs up.
    default_limit: {mapreduce_limit}
    granularity: run
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
telemetry:
  enabled: false
"""

def instance_yaml(max_runs: int, mapreduce_limit: int) -> str:
    """The local stack's ``dagster.yaml``: at most ``max_runs`` runs at once, ``mapreduce_limit`` MapReduce jobs."""
    return INSTANCE_YAML.format(max_runs=max_runs, mapreduce_limit=mapreduce_limit, pool=MAPREDUCE_POOL)


LOCATION = "btc_assets"  # the code location's name, as in workspace.yaml and compose's workspace.docker.yaml
CODE_MODULE = "btc_assets.definitions"  # the module that defines it
CODE_SERVER_SHUTDOWN_GRACE_S = "5"  # unless DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD is set

WORKSPACE_YAML = """\
# Written by btc_localstack/dagster.py at every start of the local stack; edits are overwritten.
# The stack's code server (`dagster code-server start`, BTC_STACK_DAGSTER_CODE_PORT) serves the code location.
load_from:
  - grpc_server:
      host: {host}
      port: {port}
      location_name: {location}
"""

DAEMON_HEALTH = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 30.0) -> dict:
    """A query against the webserver's GraphQL API; raises with the server's errors."""
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout)
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


class DagsterService(Service):
    """``dagster code-server`` (127.0.0.1:4000 by default), ``dagster-webserver`` (127.0.0.1:3000) and
    ``dagster-daemon`` sharing ``<state>/dagster_home``."""

    name = "dagster"

    def __init__(self, paths, stack_env: Callable[[], dict[str, str]]):
        super().__init__(paths)
        self.port = env_port("BTC_STACK_DAGSTER_PORT", 3000, component="dagster")
        self.code_port = env_port("BTC_STACK_DAGSTER_CODE_PORT", 4000, component="dagster")
        self.url = f"http://{HOST}:{self.port}"
        self.stack_env = stack_env
        self.code_server = ManagedProcess("code-server", self.state)
        self.webserver = ManagedProcess("webserver", self.state)
        self.daemon = ManagedProcess("daemon", self.state)

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        """In start order: the webserver and the daemon load the code location from the code server."""
        return self.code_server, self.webserver, self.daemon

    @property
    def home(self) -> Path:
        return self.paths.state_dir / "dagster_home"

    def provision(self) -> None:
        for tool in ("dagster", "dagster-webserver", "dagster-daemon"):
            if not (Path(sys.executable).parent / tool).exists() and not shutil.which(tool):
                raise StackError(f"dagster: `{tool}` is missing: install the project (./pipeline does)")

    def write_instance(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        limit = config.get_int("BTC_MAPREDUCE_CONCURRENCY")
        if limit < 1:
            raise StackError(f"dagster: BTC_MAPREDUCE_CONCURRENCY={limit}: at least 1 MapReduce job must be able to run")
        text = instance_yaml(max_runs=config.get_int("BTC_DAGSTER_MAX_CONCURRENT_RUNS"), mapreduce_limit=limit)
        path = self.home / "dagster.yaml"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return path

    def write_workspace(self) -> Path:
        """``<home>/workspace.yaml``: the code location from the stack's code server."""
        path = self.home / "workspace.yaml"
        path.write_text(WORKSPACE_YAML.format(host=HOST, port=self.code_port, location=LOCATION))
        return path

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.stack_env())
        env["DAGSTER_HOME"] = str(self.home)
        missing = [name for name in ("DAGSTER_POSTGRES_PASSWORD", "DAGSTER_POSTGRES_HOST") if not env.get(name)]
        if missing:
            raise StackError(f"dagster: {', '.join(missing)} not set: start postgres first (`btc-pipeline stack up`)")
        return env

    def check_storage(self, env: dict[str, str]) -> None:
        """Connect to the storage as dagster.yaml will, and say which setting is wrong when that fails."""
        import psycopg2

        where = f"{env['DAGSTER_POSTGRES_HOST']}:{env.get('DAGSTER_POSTGRES_PORT', '5432')}"
        try:
            psycopg2.connect(host=env["DAGSTER_POSTGRES_HOST"], port=int(env.get("DAGSTER_POSTGRES_PORT") or 5432),
                             user=env.get("DAGSTER_POSTGRES_USER") or "dagster", password=env["DAGSTER_POSTGRES_PASSWORD"],
                             dbname=env.get("DAGSTER_POSTGRES_DB") or "dagster", connect_timeout=5).close()
        except ValueError:
            raise StackError(f"dagster: DAGSTER_POSTGRES_PORT={env.get('DAGSTER_POSTGRES_PORT')!r} is not a port number") from None
        except psycopg2.OperationalError as error:
            text = str(error).strip()
            if "password authentication failed" in text:
                raise StackError(f"dagster: DAGSTER_POSTGRES_PASSWORD is wrong: PostgreSQL at {where} refused user "
                                 f"{env.get('DAGSTER_POSTGRES_USER') or 'dagster'!r} ({text.splitlines()[-1]})") from None
            if "does not exist" in text:
                raise StackError(f"dagster: DAGSTER_POSTGRES_DB / DAGSTER_POSTGRES_USER: {text.splitlines()[-1]} "
                                 f"(PostgreSQL at {where})") from None
            raise StackError(f"dagster: no PostgreSQL answers at DAGSTER_POSTGRES_HOST:DAGSTER_POSTGRES_PORT = {where} "
                             f"({text.splitlines()[0]}); start it (`btc-pipeline stack up postgres`) or fix the "
                             "settings") from None

    def _set_pool_limit(self, env: dict[str, str]) -> None:
        """The ``mapreduce`` pool's limit, set in the storage before any run is queued.

        ``pools.default_limit`` alone is applied lazily, the first time the run queue meets the pool: the
        first pass of a fresh instance launched a whole backfill at once (seen here: 4 runs of 5)."""
        limit = config.get_int("BTC_MAPREDUCE_CONCURRENCY")
        run_logged([self._tool("dagster"), "instance", "concurrency", "set", MAPREDUCE_POOL, str(limit)],
                   self.state / "concurrency.log", component=self.name, step="setting the mapreduce pool limit",
                   env=env, timeout=120)

    def _tool(self, name: str) -> str:
        beside = Path(sys.executable).parent / name
        return str(beside) if beside.exists() else name

    def start(self) -> None:
        if self.is_running():
            return
        self.write_instance()
        env = self.environment()
        self.check_storage(env)  # one clear error naming the setting, not a stack trace in two daemon logs
        began = time.monotonic()
        # First, alone: on a fresh database this creates Dagster's tables. The webserver and the daemon started
        # together on one both created them, and one failed (`type "alembic_version" already exists`).
        self._set_pool_limit(env)
        self.start_code_server(env)
        workspace = str(self.write_workspace())
        if not self.webserver.is_running():
            ensure_port_free(HOST, self.port, component=self.name, variable="BTC_STACK_DAGSTER_PORT")
            progress(self.name, f"starting the webserver on {self.url}")
            self.webserver.start([self._tool("dagster-webserver"), "-h", HOST, "-p", str(self.port), "-w", workspace],
                                 env=env, cwd=REPO_ROOT)
        if not self.daemon.is_running():
            progress(self.name, "starting the daemon (sensors, schedules, run queue, backfills)")
            self.daemon.start([self._tool("dagster-daemon"), "run", "-w", workspace], env=env, cwd=REPO_ROOT)
        self.webserver.wait_until(self._webserver_ready, component=self.name, what="dagster-webserver", timeout=180)
        self.daemon.wait_until(self._daemons_healthy, component=self.name, what="dagster-daemon heartbeats",
                               timeout=180)
        progress(self.name, f"UI on {self.url} in {time.monotonic() - began:.0f}s (DAGSTER_HOME {self.home})")

    def start_code_server(self, env: dict[str, str]) -> None:
        """The code server, started unless running, and returned from once it lists the code location."""
        if not self.code_server.is_running():
            ensure_port_free(HOST, self.code_port, component=self.name, variable="BTC_STACK_DAGSTER_CODE_PORT")
            progress(self.name, f"starting the code server on {HOST}:{self.code_port}")
            # Its stop waits this long for RPCs still running (Dagster's default: 60 s). The webserver and the daemon
            # are stopped before it, so nobody waits for their answers; a call left open (seen at the end of the test
            # suite) held the stop until its 30 s SIGKILL.
            code_env = {"DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD": CODE_SERVER_SHUTDOWN_GRACE_S, **env}
            self.code_server.start([self._tool("dagster"), "code-server", "start", "-h", HOST, "-p", str(self.code_port),
                                    "-m", CODE_MODULE, "--location-name", LOCATION], env=code_env, cwd=REPO_ROOT)
        # Waited for before the webserver and the daemon start: one that found the location still loading would show
        # it as failed until a reload.
        self.code_server.wait_until(self._code_server_serving, component=self.name, what="dagster code-server",
                                    timeout=180)

    def _code_server_serving(self) -> bool:
        """The code server lists the code location (its port opens once the location is loaded); a location that
        failed to load fails the start at once, with Dagster's error."""
        from dagster._grpc.client import DagsterGrpcClient
        from dagster._grpc.types import ListRepositoriesResponse
        from dagster_shared.serdes import deserialize_value

        response = deserialize_value(DagsterGrpcClient(port=self.code_port, host=HOST).list_repositories())
        if not isinstance(response, ListRepositoriesResponse):
            raise ProcessError(f"{self.name}: the code location {CODE_MODULE} did not load; log "
                               f"{self.code_server.log_file}:\n{getattr(response, 'message', response)}")
        return True

    def _webserver_ready(self) -> bool:
        return requests.get(f"{self.url}/server_info", timeout=3).status_code == 200

    def daemon_statuses(self) -> dict[str, bool]:
        statuses = graphql(self.url, DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
        return {status["daemonType"]: status["healthy"] for status in statuses if status["required"]}

    def _daemons_healthy(self) -> bool:
        statuses = self.daemon_statuses()
        return bool(statuses) and all(statuses.values())

    def stop(self, *, kill: bool = False) -> None:
        for process in reversed(self.processes):
            if process.is_running():
                progress(self.name, f"stopping the {process.name}")
            process.stop(timeout=30, kill=kill)

    def is_running(self) -> bool:
        return all(process.is_running() for process in self.processes)

    def status(self) -> dict[str, object]:
        return {"running": self.is_running(), "url": self.url, "home": str(self.home),
                "code_server": f"{HOST}:{self.code_port}",
                "pids": {process.name: process.pid() for process in self.processes},
                "logs": [str(process.log_file) for process in self.processes]}

    def env(self) -> dict[str, str]:
        return {"DAGSTER_HOME": str(self.home), "BTC_DAGSTER_URL": self.url}


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
  }
}"""

BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status numPartitions runs { runId status tags { key value } } }
    ... on PythonError { message }
  }
}"""

BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def launch_backfill(url: str, assets: list[str], partitions: list[str], title: str) -> str:
    """A Dagster backfill of ``assets`` over ``partitions``, as the UI's "Launch backfill" makes one; its id."""
    params = {"assetSelection": [{"path": [name]} for name in assets], "partitionNames": partitions, "title": title}
    result = graphql(url, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise StackError(f"dagster: the backfill was refused ({result['__typename']}): {result}")
    return result["backfillId"]


def backfill_status(url: str, backfill_id: str) -> dict:
    result = graphql(url, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    if result["__typename"] != "PartitionBackfill":
        raise StackError(f"dagster: backfill {backfill_id}: {result}")
    return result


LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message } ... on RunConflict { message }
  }
}"""
RUN_LOGS = """
query($id: ID!, $cursor: String) {
  runOrError(runId: $id) { __typename ... on Run { status } }
  logsForRun(runId: $id, afterCursor: $cursor) {
    __typename ... on EventConnection { cursor events { __typename ... on MessageEvent { message level }
      ... on ExecutionStepFailureEvent { error { message causes { message } } } } }
  }
}"""
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def launch_run(url: str, job: str, run_config: dict, partition: str | None = None) -> str:
    """A run of ``job`` (of a partition), as the UI's launchpad starts one; its id."""
    tags = [{"key": "dagster/partition", "value": partition}] if partition else []
    params = {"selector": {**_repository(url), "jobName": job}, "runConfigData": run_config,
              "executionMetadata": {"tags": tags}}
    result = graphql(url, LAUNCH_RUN, {"params": params})["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise StackError(f"dagster: the run of {job} was refused ({result['__typename']}): {result}")
    return result["run"]["runId"]


def run_messages(url: str, run_id: str, cursor: str | None = None) -> tuple[str, list[str], str | None]:
    """(the run's status, its log messages after ``cursor``, the new cursor)."""
    result = graphql(url, RUN_LOGS, {"id": run_id, "cursor": cursor})
    run, logs = result["runOrError"], result["logsForRun"]
    if run["__typename"] != "Run":
        raise StackError(f"dagster: run {run_id}: {run}")
    events = logs.get("events") or [] if logs["__typename"] == "EventConnection" else []
    messages = [_with_cause(event) for event in events
                if event["__typename"] in ("LogMessageEvent", "RunFailureEvent", "ExecutionStepFailureEvent")
                and event.get("message")]
    return run["status"], messages, logs.get("cursor", cursor)


def _with_cause(event: dict) -> str:
    """A log event's message; a failed step's with the exception that failed it (its innermost cause), which the
    message alone ('Execution of step ... failed.') does not say."""
    error = event.get("error") or {}
    raised = ([cause["message"] for cause in error.get("causes") or [] if cause.get("message")] or
              [error.get("message") or ""])[-1].strip()
    return f"{event['message']} {raised}" if raised else event["message"]


REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
START_SENSOR = """
mutation($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename ... on Sensor { id sensorState { status } } ... on PythonError { message }
    ... on SensorNotFoundError { message }
  }
}"""
STOP_SENSOR = """
mutation($id: String!) {
  stopSensor(id: $id) {
    __typename ... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message }
  }
}"""
START_SCHEDULE = """
mutation($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename ... on ScheduleStateResult { scheduleState { id status } } ... on PythonError { message }
    ... on ScheduleNotFoundError { message }
  }
}"""
STOP_SCHEDULE = """
mutation($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message }
  }
}"""
INSTIGATOR_STATE = """
query($selector: InstigationSelector!) {
  instigationStateOrError(instigationSelector: $selector) {
    __typename ... on InstigationState { id status } ... on PythonError { message }
  }
}"""


def _repository(url: str) -> dict[str, str]:
    nodes = graphql(url, REPOSITORIES)["repositoriesOrError"]["nodes"]
    if len(nodes) != 1:
        raise StackError(f"dagster: expected one code location at {url}, found {nodes}")
    return {"repositoryName": nodes[0]["name"], "repositoryLocationName": nodes[0]["location"]["name"]}


def switch(url: str, name: str, *, on: bool, kind: str = "sensor") -> str:
    """Switch a sensor or schedule (``kind``) on or off, as its toggle in the UI does; its new status."""
    if kind not in ("sensor", "schedule"):
        raise ValueError(f"kind must be 'sensor' or 'schedule', not {kind!r}")
    selector = {**_repository(url), f"{kind}Name": name}
    if on:
        result = graphql(url, START_SENSOR if kind == "sensor" else START_SCHEDULE, {"selector": selector})
        body = result["startSensor" if kind == "sensor" else "startSchedule"]
        state = body.get("sensorState") or body.get("scheduleState")
    else:
        selector = {**{key: value for key, value in selector.items() if key != f"{kind}Name"}, "name": name}
        current = graphql(url, INSTIGATOR_STATE, {"selector": selector})["instigationStateOrError"]
        if current["__typename"] != "InstigationState":
            raise StackError(f"dagster: no {kind} {name!r}: {current}")
        if current["status"] != "RUNNING":
            return current["status"]
        result = graphql(url, STOP_SENSOR if kind == "sensor" else STOP_SCHEDULE, {"id": current["id"]})
        body = result["stopSensor" if kind == "sensor" else "stopRunningSchedule"]
        state = body.get("instigationState") or body.get("scheduleState")
    if not state:
        raise StackError(f"dagster: could not switch the {kind} {name!r} {'on' if on else 'off'}: {body}")
    return state["status"]

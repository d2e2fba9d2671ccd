"""Background processes known by pid *and* start time, never by a bare pid file.

A pid file names ``{"pid": …, "started": …}``: the process's start time as the kernel reports it
(psutil ``create_time``). A pid whose start time differs is another program that got the number
after a reboot or a crash, and is never signalled. Used by the stream services and the local stack.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil


class ProcessError(RuntimeError):
    """A managed process did not start, or is not ready; the message has its log's tail."""


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def free_port(host: str = "127.0.0.1") -> int:
    """A port no program listens on at ``host`` now, for a process about to be started there."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (``/proc/<pid>/stat`` field 22; Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# Signals a daemon must answer: a stop sends SIGTERM, and a JVM never installs its shutdown handler for a
# signal it starts with ignored. An ignored disposition is inherited through fork and exec, and arises unasked:
# a shell without job control starts background commands with SIGINT ignored, and Dagster's
# capture_interrupts then copies SIGINT's handler onto SIGTERM (dagster._utils.interrupts), so every later child
# would ignore SIGTERM and each stop would wait out its timeout before SIGKILL.
TERMINATION_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Run before the daemon's own program: default dispositions, then exec (same pid, so the pid file holds).
_EXEC_WITH_DEFAULT_SIGNALS = ("import os, signal, sys\n"
                              f"for s in ({', '.join(f'signal.{s.name}' for s in TERMINATION_SIGNALS)},):"
                              " signal.signal(s, signal.SIG_DFL)\n"
                              "os.execvp(sys.argv[1], sys.argv[1:])")


def ignored_termination_signals() -> list[signal.Signals]:
    """The termination signals this process ignores (and so would pass on to every child it starts)."""
    return [signum for signum in TERMINATION_SIGNALS if signal.getsignal(signum) == signal.SIG_IGN]


def restore_termination_signals() -> list[signal.Signals]:
    """Give ignored SIGINT/SIGTERM their defaults back (main thread only); returns those it restored.

    For an entry point that may be started in the background by a shell and runs Dagster in its own process
    (the test suite)."""
    ignored = ignored_termination_signals()
    for signum in ignored:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    return ignored


def with_default_signals(cmd: list[str]) -> list[str]:
    """``cmd`` as it must be launched for SIGINT and SIGTERM to reach it, whatever this process ignores."""
    if not ignored_termination_signals():
        return cmd
    return [sys.executable, "-c", _EXEC_WITH_DEFAULT_SIGNALS, *cmd]


def with_java_options(env: dict[str, str], *options: str) -> dict[str, str]:
    """``env`` with ``options`` added to JDK_JAVA_OPTIONS, which every ``java`` started with it reads before its
    command line's options (so an option given on a command line still wins), after any already there."""
    joined = " ".join([env.get("JDK_JAVA_OPTIONS", "").strip(), *options]).strip()
    return {**env, "JDK_JAVA_OPTIONS": joined}


def with_java_tmpdir(env: dict[str, str], tmp_dir: Path) -> dict[str, str]:
    """``env`` with ``java.io.tmpdir`` set to ``tmp_dir`` for every ``java`` started with it."""
    return with_java_options(env, f"-Djava.io.tmpdir={tmp_dir}")


class ManagedProcess:
    """A background daemon with a pid file (pid and start time) and a log file under a state directory.

    A JVM daemon (``start(..., java_tmp=True)``) gets a temporary directory of its own, ``jvm-tmp/<name>`` there,
    instead of ``/tmp``, and so does every JVM it starts that inherits its environment (a Spark worker's
    executors, a PySpark driver's JVM). What a JVM leaves there when it is killed (Jetty's webapp directories,
    extracted native libraries, Spark's scratch and block directories) is deleted when the daemon starts again,
    instead of piling up in the machine's ``/tmp``.
    """

    def __init__(self, name: str, directory: Path):
        self.name = name
        self.directory = directory
        self.pid_file = directory / f"{name}.pid"
        self.log_file = directory / f"{name}.log"
        self.tmp_dir = directory / "jvm-tmp" / name

    def _recorded(self) -> tuple[int, float, int | None] | None:
        try:
            record = json.loads(self.pid_file.read_text())
            ticks = record.get("start_ticks")
            return int(record["pid"]), float(record["started"]), None if ticks is None else int(ticks)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # no file, or an old bare-pid file: nothing is known to be ours

    def process(self) -> psutil.Process | None:
        """The running process this file names, if it is the one we started (same pid, same start time)."""
        recorded = self._recorded()
        if recorded is None:
            return None
        pid, started, ticks = recorded
        try:
            process = psutil.Process(pid)
            # The kernel's start time in clock ticks since boot, when known: a wall-clock start time moves
            # with every step of the system clock, and a process judged "not ours" would never be stopped.
            now_ticks = start_ticks(pid)
            if ticks is not None and now_ticks is not None:
                if now_ticks != ticks:
                    return None  # the pid was reused by another program
            elif abs(process.create_time() - started) > 0.05:
                return None  # the pid was reused by another program
            if process.status() == psutil.STATUS_ZOMBIE:
                # Our own exited child stays a zombie until reaped. Only waitpid tells "exited" reliably:
                # during a JVM's shutdown its main thread can show as a zombie while other threads still
                # hold its ports.
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        return None
                except ChildProcessError:
                    pass  # not our child: its parent (or init) reaps it
            return process
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            return None

    def pid(self) -> int | None:
        process = self.process()
        return process.pid if process is not None else None

    def is_running(self) -> bool:
        return self.process() is not None

    def start(self, cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              java_tmp: bool = False) -> int:
        if (pid := self.pid()) is not None:
            return pid
        self.directory.mkdir(parents=True, exist_ok=True)
        if java_tmp:  # not running: what is there is an earlier start's, left by a kill
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir.mkdir(parents=True)
            env = with_java_tmpdir(dict(os.environ) if env is None else env, self.tmp_dir)
        with open(self.log_file, "ab") as log:
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(cmd)}\n".encode())
            log.flush()
            # A new session so the daemon outlives the CLI that started it and gets no terminal signals.
            proc = subprocess.Popen(with_default_signals(cmd), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        started = psutil.Process(proc.pid).create_time()
        tmp = self.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "started": started, "start_ticks": start_ticks(proc.pid),
                                   "command": cmd[:3]}))
        tmp.rename(self.pid_file)
        return proc.pid

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to the process if it is ours and running; True if sent."""
        process = self.process()
        if process is None:
            return False
        try:
            process.send_signal(signum)
            return True
        except psutil.NoSuchProcess:
            return False

    def stop(self, *, timeout: float = 30.0, kill: bool = False) -> None:
        if not self.signal(signal.SIGKILL if kill else signal.SIGTERM):
            self.pid_file.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.is_running():
            time.sleep(0.2)
        if self.signal(signal.SIGKILL):
            while self.is_running():
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_file, lines)

    def wait_until(self, ready, *, component: str, what: str, timeout: float = 120.0,
                   also: Iterable[ManagedProcess] = ()) -> None:
        """Poll ``ready()`` until true; fail early, with the log's tail, if the process (or one of ``also``,
        the other nodes the readiness depends on) died."""
        watched = [self, *(proc for proc in also if proc is not self)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in watched:
                if not proc.is_running():
                    raise ProcessError(f"{component}: {proc.name} exited while starting; log {proc.log_file}:\n"
                                       f"{proc.log_tail()}")
            try:
                if ready():
                    return
            except (ProcessError, TypeError, ImportError, AttributeError):
                raise  # a broken probe, not a slow engine: fail now instead of timing out
            except Exception:  # noqa: BLE001 - not ready yet, whatever else the probe raised
                pass
            time.sleep(0.5)
        raise ProcessError(f"{component}: {what} not ready after {timeout:.0f}s; log {self.log_file}:\n"
                           f"{self.log_tail()}")

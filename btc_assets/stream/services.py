"""The long-running stream services as managed processes: the WebSocket->Kafka producer and the Spark job.

Dagster observes the stream; it does not run it inside a run. These processes live under
``$BTC_STACK_DIR/stream`` (pid and log files) and are started, stopped and restarted by
`btc-pipeline stream …` and by the `restart_stream_job` the health sensor requests. A development
source (the Binance emulator of ``btc_testkit``) can be managed beside them with ``extra``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from btc_assets import config
from btc_assets.processes import ManagedProcess

SERVICES: dict[str, list[str]] = {
    "producer": ["-m", "btc_assets.stream.producer"],
    "spark-job": ["-m", "btc_assets.stream.spark_job"],
}
JVM_SERVICES = {"spark-job"}  # its driver's JVM (and in local mode, the executors) gets a tmp dir of its own


def _say(message: str) -> None:
    print(f"[stream] {message}", file=sys.stderr, flush=True)


class StreamServices:
    def __init__(self, state_dir: Path | None = None, extra: Mapping[str, Sequence[str]] | None = None,
                 name: str = "stream"):
        """``extra``: more services started before these (name -> ``python`` arguments), e.g. a source emulator;
        ``name``: the folder of their pid and log files (a replay's services have their own, ``replay``)."""
        directory = (state_dir or config.stack_env_file().parent) / name
        self.commands = {**(extra or {}), **SERVICES}
        self.processes = {name: ManagedProcess(name, directory) for name in self.commands}

    def _launch_file(self, name: str) -> Path:
        return self.processes[name].directory / f"{name}.launch.json"

    def launch_settings(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The arguments and extra environment ``name`` was last started with (([], {}) if never)."""
        try:
            saved = json.loads(self._launch_file(name).read_text())
        except (OSError, ValueError):
            return [], {}
        return list(saved.get("args", [])), dict(saved.get("env", {}))

    def start(self, name: str, extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> int:
        process = self.processes[name]
        if process.is_running():
            return process.pid()
        pid = process.start([sys.executable, *self.commands[name], *(extra_args or [])],
                            env=dict(os.environ, **(env or {})), cwd=process.directory,
                            java_tmp=name in JVM_SERVICES)
        # Remembered (mode 600) for a restart from another process, e.g. the health sensor's restart run: a
        # producer started on an emulator's URLs must come back on them, not on the environment's defaults.
        path = self._launch_file(name)
        path.write_text(json.dumps({"args": list(extra_args or []), "env": dict(env or {})}))
        os.chmod(path, 0o600)
        _say(f"{name} started (pid {pid}, log {process.log_file})")
        return pid

    def stop(self, name: str, *, kill: bool = False) -> None:
        if self.processes[name].is_running():
            _say(f"stopping {name}")
        self.processes[name].stop(timeout=60, kill=kill)

    def restart(self, name: str, extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> int:
        """Stop and start again; without ``extra_args``/``env``, with those of its last start."""
        saved_args, saved_env = self.launch_settings(name)
        self.stop(name)
        return self.start(name, saved_args if extra_args is None else extra_args, saved_env if env is None else env)

    def start_all(self, env: dict[str, str] | None = None) -> None:
        """The live path: the producer, then the Spark job (``env``: extra variables for the producer)."""
        self.start("producer", env=env)
        self.start("spark-job")

    def stop_all(self) -> None:
        for name in reversed(list(self.commands)):
            self.stop(name)

    def status(self) -> dict[str, dict[str, object]]:
        return {name: {"running": process.is_running(), "pid": process.pid(), "log": str(process.log_file)}
                for name, process in self.processes.items()}

"""The long-running stream services as managed processes: the WebSocket->Kafka producer and the Spark job.

Dagster observes the stream; it does not run it inside a run. These processes live under
``$BTC_STACK_DIR/stream`` (pid and log files) and are started, stopped and restarted by
`btc-pipeline stream …` and by the `restart_stream_job` the health sensor requests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from btc_assets.lib.stack.base import REPO_ROOT, ManagedProcess, StackPaths, progress

SERVICES = {
    "producer": ["-m", "btc_assets.stream.producer"],
    "spark-job": ["-m", "btc_assets.stream.spark_job"],
}


class StreamServices:
    def __init__(self, state_dir: Path | None = None):
        directory = (state_dir or StackPaths.from_env().state_dir) / "stream"
        self.processes = {name: ManagedProcess(name, directory) for name in SERVICES}

    def start(self, name: str, extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> int:
        process = self.processes[name]
        if process.is_running():
            return process.pid()
        pid = process.start([sys.executable, *SERVICES[name], *(extra_args or [])],
                            env=dict(os.environ, **(env or {})), cwd=REPO_ROOT)
        progress("stream", f"{name} started (pid {pid}, log {process.log_file})")
        return pid

    def stop(self, name: str, *, kill: bool = False) -> None:
        if self.processes[name].is_running():
            progress("stream", f"stopping {name}")
        self.processes[name].stop(timeout=60, kill=kill)

    def restart(self, name: str, extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> int:
        self.stop(name)
        return self.start(name, extra_args, env)

    def status(self) -> dict[str, dict[str, object]]:
        return {name: {"running": process.is_running(), "pid": process.pid(), "log": str(process.log_file)}
                for name, process in self.processes.items()}

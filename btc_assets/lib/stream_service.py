"""The long-running stream services as managed processes: the WebSocket->Kafka producer and the Spark job.

Dagster observes the stream; it does not run it inside a run. These processes live under
``$BTC_STACK_DIR/stream`` (pid and log files) and are started, stopped and restarted by
`btc-pipeline stream …` and by the `restart_stream_job` the health sensor requests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from btc_assets.lib import config
from btc_assets.lib.stack.base import REPO_ROOT, ManagedProcess, StackPaths, env_port, progress

SERVICES = {
    "binance-emulator": ["-m", "btc_assets.stream.binance_emulator"],
    "producer": ["-m", "btc_assets.stream.producer"],
    "spark-job": ["-m", "btc_assets.stream.spark_job"],
}
EMULATOR_PORT_VARIABLE = "BTC_STACK_BINANCE_EMULATOR_PORT"


def emulator_urls(port: int) -> dict[str, str]:
    """The Binance endpoints of an emulator on ``port``, as the producer's settings."""
    return {"BTC_BINANCE_WS_URL": f"ws://127.0.0.1:{port}", "BTC_BINANCE_REST_URL": f"http://127.0.0.1:{port}"}


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

    def start_all(self, *, emulator_rate: float | None = None, warmup_minutes: float = 0.0) -> None:
        """The live path: (the Binance emulator,) the producer and the Spark job, in that order.

        ``warmup_minutes``: the emulator's market starts that far in the past (see binance_emulator).
        """
        env: dict[str, str] = {}
        if emulator_rate is not None:
            port = env_port(EMULATOR_PORT_VARIABLE, 18765, component="stream")
            self.start("binance-emulator", ["--port", str(port), "--rate", str(emulator_rate),
                                            "--symbols", ",".join(config.symbols()),
                                            "--warmup-minutes", str(warmup_minutes)])
            env = emulator_urls(port)
        self.start("producer", env=env)
        self.start("spark-job")

    def stop_all(self) -> None:
        for name in reversed(list(SERVICES)):
            self.stop(name)

    def status(self) -> dict[str, dict[str, object]]:
        return {name: {"running": process.is_running(), "pid": process.pid(), "log": str(process.log_file)}
                for name, process in self.processes.items()}

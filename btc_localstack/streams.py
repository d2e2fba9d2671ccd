"""The live path on the local stack: the product's stream services plus the Binance emulator of btc_testkit."""

from __future__ import annotations

from pathlib import Path

from btc_assets import config
from btc_assets.stream.services import StreamServices

from .base import env_port

EMULATOR = "binance-emulator"
EMULATOR_PORT_VARIABLE = "BTC_STACK_BINANCE_EMULATOR_PORT"


def emulator_urls(port: int) -> dict[str, str]:
    """The Binance endpoints of an emulator on ``port``, as the producer's settings."""
    return {"BTC_BINANCE_WS_URL": f"ws://127.0.0.1:{port}", "BTC_BINANCE_REST_URL": f"http://127.0.0.1:{port}"}


def stream_services(state_dir: Path) -> StreamServices:
    return StreamServices(state_dir, extra={EMULATOR: ["-m", "btc_testkit.binance_emulator"]})


def start_live(services: StreamServices, *, emulator_rate: float | None = None, warmup_minutes: float = 0.0) -> None:
    """(The Binance emulator,) the producer and the Spark job, in that order.

    ``warmup_minutes``: the emulator's market starts that far in the past (see btc_testkit.binance_emulator).
    """
    env: dict[str, str] = {}
    if emulator_rate is not None:
        port = env_port(EMULATOR_PORT_VARIABLE, 18765, component="stream")
        services.start(EMULATOR, ["--port", str(port), "--rate", str(emulator_rate),
                                  "--symbols", ",".join(config.symbols()), "--warmup-minutes", str(warmup_minutes)])
        env = emulator_urls(port)
    services.start_all(env=env)

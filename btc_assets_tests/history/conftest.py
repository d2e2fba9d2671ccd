"""Fixtures for the history path: a Binance archive emulator and resources pointed at it."""

from __future__ import annotations

import pytest

from btc_assets.defs.resources import BinanceHistoryResource
from btc_testkit import history_emulator

TRADES_PER_DAY = 40_000


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """data.binance.vision's stand-in: generated BTCUSDT days up to 2025-04-10, 40k trades each."""
    with history_emulator.serve(cache_dir=tmp_path_factory.mktemp("archive"), last_date="2025-04-10",
                                trades_per_day=TRADES_PER_DAY) as running:
        yield running


@pytest.fixture(scope="session")
def history_resources(resources, archive):
    """The code location's resources, with the history source pointed at the emulator (and quick retries)."""
    return {**resources, "binance_history": BinanceHistoryResource(base_url=archive.base_url, retries=1,
                                                                   backoff_seconds=0.1)}

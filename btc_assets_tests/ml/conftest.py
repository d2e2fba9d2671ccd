"""Fixtures for the model tests: generated minute bars with and without a planted signal, a private HDFS root."""

from __future__ import annotations

import os
import uuid

import pytest

from btc_testkit import bars as known_bars
from btc_assets.ml import models

from btc_assets.contracts import schema

SYMBOL = "BTCUSDT"
FIRST_DAY = "2025-04-01"
DAYS = 7  # 5 train, 1 validation, 1 test
TRADES_PER_DAY = 40_000  # ~28 trades a minute: a few minutes without trades, as in quiet markets
TAKER_SIGNAL = 0.0015  # next return += 0.0015 * (taker-buy share - 0.5): about as large as the noise
# Few, shallow trees: the tests are about honesty, not accuracy (the original sizes run in test_assets.py).
SMALL = models.ModelParams(rf_num_trees=20, rf_max_depth=5, rf_max_bins=32,
                           gbt_max_iter=20, gbt_max_depth=4, gbt_max_bins=32)


@pytest.fixture(scope="session")
def signal_bars():
    """A week of bars whose next-minute return follows the taker-buy share: there is something to learn."""
    return known_bars.generated_bars(FIRST_DAY, DAYS, symbol=SYMBOL, trades_per_day=TRADES_PER_DAY, seed=5,
                                 taker_signal=TAKER_SIGNAL)


@pytest.fixture(scope="session")
def noise_bars():
    """A week of the generator's random walk: the next return cannot be predicted."""
    return known_bars.generated_bars(FIRST_DAY, DAYS, symbol=SYMBOL, trades_per_day=TRADES_PER_DAY, seed=6)


def first_days(bars, days: int):
    """The bars of the first ``days`` days (a day has fewer than 1440 bars: quiet minutes have none)."""
    day = bars[schema.MINUTE].str.slice(0, 10)
    return bars[day.isin(sorted(set(day))[:days])].reset_index(drop=True)


def spark_bars(spark, bars, symbol: str = SYMBOL):
    """Bars (pandas, the contract's fields) as the Spark frame ``features`` expects: with a symbol column."""
    return spark.createDataFrame(bars.assign(symbol=symbol))


@pytest.fixture
def ml_storage(resources):
    """A storage resource on the real HDFS, rooted at a fresh ``/btc-mltest-<id>`` (removed afterwards)."""
    from btc_assets.defs.resources import StorageResource

    env = os.environ
    root = f"/btc-mltest-{uuid.uuid4().hex[:10]}"
    storage = StorageResource(filesystem_url=env["BTC_HDFS_URL"], webhdfs_url=env["BTC_WEBHDFS_URL"],
                              user=env.get("BTC_HDFS_USER", ""), root=root)
    yield storage
    storage.storage.fs.delete(root, recursive=True)

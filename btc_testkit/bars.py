"""Minute bars with a known answer, for the model tests and the training benchmark.

Consecutive days of bars from generated trades (``btc_testkit.generator`` through the contract's bar
maths), optionally with a planted signal a model can learn, and helpers that write them where
``minute_bars`` would, so the ML assets can train on them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from btc_assets.clients.storage import Storage
from btc_assets.contracts import bars as bar_maths
from btc_assets.contracts import schema
from btc_testkit import generator


PRICE_COLUMNS = ("open", "high", "low", "close", "avg_price", "vwap", "quote_volume", "avg_quote_quantity")


def generated_bars(first_day: str, days: int, *, symbol: str = schema.DEFAULT_SYMBOL, trades_per_day: int = 60_000,
                   seed: int = 0, taker_signal: float = 0.0) -> pd.DataFrame:
    """Consecutive days of minute bars from generated trades (``generator`` + ``bars``), one continuous price.

    Each day is generated on its own (with its own price level), so every day's prices are rescaled
    to start where the previous day closed. With ``taker_signal`` = s, the return from each minute's
    close to the next minute's close gets ``s * (taker_buy_share - 0.5)`` of the earlier minute added:
    a signal a model can learn from the past. With 0 the next return is the generator's random walk,
    which nothing can predict. Columns: ``schema.BAR_FIELDS`` (``minute`` as the text label).
    """
    start = datetime.fromisoformat(first_day)
    frames = []
    for offset in range(days):
        day = (start + timedelta(days=offset)).strftime("%Y-%m-%d")
        trades = generator.generate_day(symbol, day, seed=seed, trades=trades_per_day)
        partials = bar_maths.partials_from_columns(trades.trade_id, trades.price_units, trades.qty_units,
                                                   trades.quote_units, trades.time_ms, trades.is_buyer_maker)
        frames.append(pd.DataFrame([partials[minute].bar(minute) for minute in sorted(partials)]).assign(
            _minute_index=sorted(partials), _day=offset))
    frame = pd.concat(frames, ignore_index=True)
    close = frame["close"].to_numpy()
    first_of_day = np.concatenate(([True], frame["_day"].to_numpy()[1:] != frame["_day"].to_numpy()[:-1]))
    # Growth from the previous bar's close; a day's first bar grows from its own open (drops the day jump).
    growth = np.where(first_of_day, close / frame["open"].to_numpy(), close / np.roll(close, 1))
    if taker_signal:
        share = (frame["taker_buy_volume"] / frame["volume"]).to_numpy()
        follows = np.concatenate(([False], np.diff(frame["_minute_index"].to_numpy()) == 1))
        growth = growth * np.where(follows, 1.0 + taker_signal * (np.roll(share, 1) - 0.5), 1.0)
    growth[0] = 1.0
    factor = close[0] * np.cumprod(growth) / close
    for column in PRICE_COLUMNS:
        frame[column] = frame[column] * factor
    return frame[list(schema.BAR_FIELDS)]


def bars_text(frame: pd.DataFrame) -> str:
    """Bars as the MapReduce job writes them: tab-separated ``BAR_FIELDS``, floats as ``repr``."""
    columns = []
    for name in schema.BAR_FIELDS:
        values = frame[name].tolist()
        columns.append(values if name == schema.MINUTE else [repr(value) if isinstance(value, float) else str(value)
                                                             for value in values])
    return "".join(schema.BAR_SEPARATOR.join(fields) + "\n" for fields in zip(*columns))


def write_bars(storage: Storage, frame: pd.DataFrame, symbol: str = schema.DEFAULT_SYMBOL) -> list[str]:
    """Write bars to the contract's paths, one ``part-00000`` per day (as the minute_bars asset leaves them)."""
    days = frame[schema.MINUTE].str.slice(0, 10)
    written = []
    for day, bars_of_day in frame.groupby(days, sort=True):
        path = f"{schema.minute_bars_dir(storage.root, symbol, day)}/part-00000"
        storage.replace(path, bars_text(bars_of_day).encode())
        written.append(day)
    return written

"""Binance's 1-minute klines of a generated day, computed apart from the project's bar code (pandas over the
trades' integer units), and written exactly as data.binance.vision writes them.

    frame = klines_frame(day)                      # 1440 rows: every minute of the day, traded or not
    write_klines_zip(frame, "BTCUSDT", "2025-04-01", directory)   # BTCUSDT-1m-2025-04-01.zip + .CHECKSUM

A row per minute, no header, 12 columns (schema.KLINE_COLUMNS): open time, open, high, low, close, volume,
close time, quote volume, trades, taker-buy base volume, taker-buy quote volume, ignore. Times in the day's
unit (µs from 2025, ms before: ``open_time`` ends in ``000`` or ``000000``), prices and volumes with 8
decimals. A minute without trades has volume 0, trades 0 and every price at the previous close (the first
trade's price before the day's first trade).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from datetime import date as Date
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from btc_assets.contracts import schema
from btc_testkit.generator import TradeDay

UNITS = 10**8
MINUTES_PER_DAY = 1440
PRICE_COLUMNS = ("open", "high", "low", "close")
UNIT_COLUMNS = (*PRICE_COLUMNS, "volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume")


def klines_frame(day: TradeDay) -> pd.DataFrame:
    """The day's 1440 klines, prices and volumes as integers of 10^-8, times in the day's unit."""
    day_start_ms = int(pd.Timestamp(day.date, tz="UTC").timestamp() * 1000)
    taker = ~day.is_buyer_maker
    trades = pd.DataFrame({
        "minute": (day.time_ms - day_start_ms) // 60_000, "trade_id": day.trade_id, "price": day.price_units,
        "volume": day.qty_units, "quote_volume": day.quote_units,
        "taker_buy_volume": np.where(taker, day.qty_units, 0), "taker_buy_quote_volume": np.where(taker, day.quote_units, 0),
    }).sort_values("trade_id", kind="stable")
    grouped = trades.groupby("minute")
    frame = pd.DataFrame({
        "open": grouped["price"].first(), "high": grouped["price"].max(), "low": grouped["price"].min(),
        "close": grouped["price"].last(), "volume": grouped["volume"].sum(),
        "quote_volume": grouped["quote_volume"].sum(), "trades": grouped.size(),
        "taker_buy_volume": grouped["taker_buy_volume"].sum(),
        "taker_buy_quote_volume": grouped["taker_buy_quote_volume"].sum(),
    }).reindex(range(MINUTES_PER_DAY))
    # Minutes without trades: nothing traded, every price at the last close.
    close = frame["close"].ffill().fillna(trades["price"].iloc[0] if len(trades) else 0)
    for name in PRICE_COLUMNS:
        frame[name] = frame[name].fillna(close)
    frame = frame.fillna(0).astype("int64")
    scale = 1000 if day.date >= "2025-01-01" else 1  # µs from 2025
    frame.insert(0, "open_time", (day_start_ms + frame.index.to_numpy() * 60_000) * scale)
    frame["close_time"] = frame["open_time"] + 60_000 * scale - 1
    frame["ignore"] = 0
    return frame.reset_index(drop=True)[list(schema.KLINE_COLUMNS)]


def _decimal(units: pd.Series) -> pd.Series:
    return (units // UNITS).astype(str) + "." + (units % UNITS).astype(str).str.zfill(8)


def klines_csv(frame: pd.DataFrame) -> bytes:
    """The CSV as Binance writes it: no header, LF line ends, 8 decimals on prices and volumes."""
    columns = [frame[name].astype(str) if name not in UNIT_COLUMNS else _decimal(frame[name])
               for name in schema.KLINE_COLUMNS]
    lines = columns[0].str.cat(columns[1:], sep=",")
    return ("\n".join(lines) + "\n").encode()


def write_klines_zip(frame: pd.DataFrame, symbol: str, date: str, directory: str | os.PathLike) -> tuple[Path, Path]:
    """``<SYMBOL>-1m-<DATE>.zip`` (one CSV) and its ``.zip.CHECKSUM`` in ``directory``; the same bytes every time."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    zip_path = directory / schema.klines_zip_name(symbol, date)
    checksum_path = zip_path.with_name(zip_path.name + ".CHECKSUM")
    published = Date.fromisoformat(date) + timedelta(days=1)
    member = zipfile.ZipInfo(schema.klines_csv_name(symbol, date), date_time=published.timetuple()[:6])
    member.compress_type = zipfile.ZIP_DEFLATED
    member.external_attr = 0o644 << 16
    unfinished = zip_path.with_name(f"{zip_path.name}.{os.getpid()}.part")
    with zipfile.ZipFile(unfinished, "w") as archive:
        archive.writestr(member, klines_csv(frame))
    digest = hashlib.sha256(unfinished.read_bytes()).hexdigest()
    unfinished.replace(zip_path)
    unfinished = checksum_path.with_name(f"{checksum_path.name}.{os.getpid()}.part")
    unfinished.write_text(schema.checksum_text(digest, zip_path.name))
    unfinished.replace(checksum_path)
    return zip_path, checksum_path

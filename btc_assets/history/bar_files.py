"""Reading MapReduce minute-bar output and raw trade files back, for checks and tests.

Both readers are independent of the MapReduce job: bars are parsed from the text the reducer
wrote, and the raw file's totals come from its own vectorised parse, so the checks compare two
separately computed answers.
"""

from __future__ import annotations

import io
from typing import BinaryIO
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from btc_assets.contracts import schema

INT_FIELDS = ("trades", "first_trade_id", "last_trade_id")


def parse_bars(text: str) -> pd.DataFrame:
    """Tab-separated bar lines (the contract's 16 fields) as a frame, minute as a UTC timestamp."""
    frame = pd.read_csv(io.StringIO(text), sep="\t", header=None, names=list(schema.BAR_FIELDS),
                        dtype={name: "int64" if name in INT_FIELDS else "float64"
                               for name in schema.BAR_FIELDS if name != schema.MINUTE} | {schema.MINUTE: str})
    frame[schema.MINUTE] = pd.to_datetime(frame[schema.MINUTE], format=schema.MINUTE_FORMAT, utc=True)
    return frame.sort_values(schema.MINUTE, ignore_index=True)


def read_bar_text(fs, directory: str) -> str:
    """The text of a day's MapReduce output: its ``part-*`` files in order."""
    parts = sorted(status.path for status in fs.list(directory)
                   if status.path.rsplit("/", 1)[-1].startswith("part-"))
    return "".join(fs.read(part).decode() for part in parts)


def read_bars(fs, directory: str) -> pd.DataFrame:
    return parse_bars(read_bar_text(fs, directory))


_NUMBER = r"^[0-9]+(\.[0-9]+)?$"


def raw_totals(stream: BinaryIO) -> dict[str, float | int]:
    """Rows that parse as trades, their volume and quote volume, and their lowest/highest trade ids.

    ``stream`` is the raw CSV as a binary stream, parsed block by block (a day never sits in memory whole).
    """
    names = list(schema.HISTORY_COLUMNS)
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=names, block_size=16 << 20),
        parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in names}))
    trades = volume_units = quote_units = 0
    first_id = last_id = None
    for batch in reader:
        valid = pc.and_(pc.match_substring_regex(batch[schema.TRADE_ID], r"^[0-9]+$"),
                        pc.match_substring_regex(batch[schema.TIME], r"^[0-9]+$"))
        for name in (schema.PRICE, schema.QTY, schema.QUOTE_QTY):
            valid = pc.and_(valid, pc.match_substring_regex(batch[name], _NUMBER))
        booleans = pc.utf8_rtrim(batch[schema.IS_BEST_MATCH], characters="\r")
        for column in (batch[schema.IS_BUYER_MAKER], booleans):
            valid = pc.and_(valid, pc.is_in(column, value_set=pa.array(list(schema.TRUE_VALUES + schema.FALSE_VALUES))))
        kept = batch.filter(valid)
        qty = np.round(pc.cast(kept[schema.QTY], pa.float64()).to_numpy() * 1e8)
        quote = np.round(pc.cast(kept[schema.QUOTE_QTY], pa.float64()).to_numpy() * 1e8)
        price = np.round(pc.cast(kept[schema.PRICE], pa.float64()).to_numpy() * 1e8)
        positive = (price > 0) & (qty > 0)
        ids = pc.cast(kept[schema.TRADE_ID], pa.int64()).to_numpy()[positive]
        trades += int(positive.sum())
        # Integer units (1e-8), summed exactly across blocks.
        volume_units += int(qty[positive].astype(np.int64).sum())
        quote_units += int(quote[positive].astype(np.int64).sum())
        if len(ids):
            first_id = int(ids.min()) if first_id is None else min(first_id, int(ids.min()))
            last_id = int(ids.max()) if last_id is None else max(last_id, int(ids.max()))
    return {"trades": trades, "volume": volume_units / 1e8, "quote_volume": quote_units / 1e8,
            "first_trade_id": first_id, "last_trade_id": last_id}


def missing_minutes(bars: pd.DataFrame, day: str) -> tuple[int, int]:
    """(minutes of the day without a bar, the longest run of consecutive such minutes)."""
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    present = set(bars[schema.MINUTE])
    longest = run = missing = 0
    for offset in range(24 * 60):
        if pd.Timestamp(start + timedelta(minutes=offset)) in present:
            run = 0
        else:
            missing += 1
            run += 1
            longest = max(longest, run)
    return missing, longest


def id_gaps(bars: pd.DataFrame, limit: int = 20) -> list[tuple[int, int]]:
    """Trade-id ranges missing between consecutive bars: (first missing id, last missing id)."""
    ordered = bars.sort_values("first_trade_id")
    previous_last = ordered["last_trade_id"].shift()
    gap = ordered["first_trade_id"] > previous_last + 1
    found = [(int(last) + 1, int(first) - 1)
             for first, last in zip(ordered["first_trade_id"][gap], previous_last[gap])]
    return found[:limit]

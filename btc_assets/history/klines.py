"""Binance's own 1-minute klines of a day: fetched into storage, parsed in either time unit, and compared with
the MapReduce bars of the same day, minute by minute.

    raw = ingest_klines(client, storage, "BTCUSDT", "2025-04-01")      # -> /btc/raw/klines/symbol=S/date=D/S-1m-D.csv
    klines = parse_klines(storage.fs.read(raw.path).decode())            # one Kline per minute, exact decimals
    report = compare(read_bar_lines(fs, bars_dir), klines)              # per minute and field

A klines file is 12 columns, no header (schema.KLINE_COLUMNS). The open time is in ms before 2025 and in µs
from 2025, told apart by size as trade times are (schema.MICROSECONDS_FROM). Minutes without trades have a
row (volume 0, every price at the previous close); the bar contract has none, so such a minute matches when
there is no bar for it, and is counted.

Compared per minute: open, high, low, close, volume, quote volume, trade count and taker-buy volume. Klines
are read as exact decimals; a bar's field is the float its file holds (the reducer writes ``repr`` of the
exact sum over 10^8, the double nearest to it), so the two agree when the kline's decimal rounds to that same
double: exact to the last digit up to 15 significant digits, and within a double's resolution beyond.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Iterable

from btc_assets.contracts import schema
from btc_assets.history.download import RawFile

COMPARED = ("open", "high", "low", "close", "volume", "quote_volume", "trades", "taker_buy_volume")
_BAR_INDEX = {name: position for position, name in enumerate(schema.BAR_FIELDS)}


class KlinesError(ValueError):
    """A klines file that cannot be read: the message names the line and why."""


@dataclass(frozen=True)
class Kline:
    minute: int  # minutes since the epoch (UTC)
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades: int
    taker_buy_volume: Decimal


def parse_klines(text: str) -> list[Kline]:
    """Every line of a klines CSV, in either time unit; a malformed line raises KlinesError naming it."""
    names = schema.KLINE_COLUMNS
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        values = line.strip().split(",")
        if len(values) != len(names):
            raise KlinesError(f"line {number}: {len(values)} columns, a kline has {len(names)}: {line[:120]!r}")
        row = dict(zip(names, values))
        try:
            open_ms = schema.trade_time_to_ms(int(row["open_time"]))
            decimals = {name: Decimal(row[name]) for name in ("open", "high", "low", "close", "volume",
                                                             "quote_volume", "taker_buy_volume")}
            trades = int(row["trades"])
        except (ValueError, InvalidOperation) as error:
            raise KlinesError(f"line {number}: not a number ({error}): {line[:120]!r}") from None
        if open_ms % 60_000:
            raise KlinesError(f"line {number}: open time {row['open_time']} is not the start of a minute")
        found.append(Kline(minute=open_ms // 60_000, trades=trades, **decimals))
    return found


def bar_lines(text: str) -> dict[int, list[str]]:
    """MapReduce bar lines (tab-separated, the contract's 16 fields) by minute since the epoch."""
    from btc_assets.contracts.points import minute_start_ns

    found = {}
    for line in text.splitlines():
        if line.strip():
            fields = line.split(schema.BAR_SEPARATOR)
            found[minute_start_ns(fields[0]) // 60_000_000_000] = fields
    return found


@dataclass
class Comparison:
    """The verdict of one day: minutes matched, the empty minutes among them, and every difference."""

    minutes: int = 0  # klines compared
    matched: int = 0
    empty_minutes: int = 0  # kline minutes without trades (and no bar): matched
    differences: list[tuple[str, str, str, str]] = field(default_factory=list)  # (minute, field, bar, kline)
    bars_without_kline: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences and not self.bars_without_kline

    def mismatched_minutes(self) -> list[str]:
        return sorted({minute for minute, *_ in self.differences})

    def summary(self, limit: int = 5) -> str:
        if self.ok:
            return (f"{self.matched} of {self.minutes} minutes equal to Binance's klines "
                    f"({self.empty_minutes} of them without trades)")
        parts = []
        if self.differences:
            minutes = self.mismatched_minutes()
            by_minute = {minute: [] for minute in minutes[:limit]}
            for minute, name, bar, kline in self.differences:
                if minute in by_minute:
                    by_minute[minute].append(f"{name}: bar {bar}, kline {kline}")
            shown = "; ".join(f"{minute} " + ", ".join(fields) for minute, fields in by_minute.items())
            verb = "minute differs" if len(minutes) == 1 else "minutes differ"
            parts.append(f"{len(minutes)} {verb} from Binance's klines, first: {shown}")
        if self.bars_without_kline:
            parts.append(f"{len(self.bars_without_kline)} bars have no kline, first: "
                         f"{', '.join(self.bars_without_kline[:limit])}")
        return "; ".join(parts)


def _same(name: str, bar_text: str, kline) -> bool:
    if name == "trades":
        return int(bar_text) == kline
    return float(bar_text) == float(kline)


def compare(bars: dict[int, list[str]], klines: Iterable[Kline]) -> Comparison:
    """Each kline against the bar of its minute (``bar_lines``); differences in minute order."""
    from btc_assets.contracts.bars import minute_label

    result = Comparison()
    seen = set()
    for kline in sorted(klines, key=lambda k: k.minute):
        result.minutes += 1
        seen.add(kline.minute)
        bar = bars.get(kline.minute)
        label = minute_label(kline.minute)
        if bar is None:
            if kline.trades == 0:
                result.matched += 1
                result.empty_minutes += 1
            else:
                result.differences.append((label, "trades", "no bar", str(kline.trades)))
            continue
        differing = [(label, name, bar[_BAR_INDEX[name]], str(getattr(kline, name))) for name in COMPARED
                     if not _same(name, bar[_BAR_INDEX[name]], getattr(kline, name))]
        if differing:
            result.differences.extend(differing)
        else:
            result.matched += 1
    result.bars_without_kline = [minute_label(minute) for minute in sorted(set(bars) - seen)]
    return result


@dataclass(frozen=True)
class RawKlines(RawFile):
    """An ingested day of klines (exchange_klines): the file's facts and its open times' unit."""

    unit: str  # "ms" or "µs"


def ingest_klines(client, storage, symbol: str, date: str) -> RawKlines:
    """Download, verify (SHA-256 CHECKSUM), parse and store a day's klines; storage untouched on any failure."""
    from btc_assets.history.download import HistoryError, csv_chunks

    path = storage.path(schema.raw_klines_path("", symbol, date).lstrip("/"))
    with tempfile.TemporaryDirectory(prefix="btc-klines-") as workdir:
        zip_path, sha256, url = client.download(symbol, date, Path(workdir), kind="klines")
        data = b"".join(csv_chunks(zip_path))
        try:
            parsed = parse_klines(data.decode())
        except (KlinesError, UnicodeDecodeError) as error:
            raise HistoryError(f"{url}: {error}; nothing was written to storage") from error
        if not parsed:
            raise HistoryError(f"{url}: no kline in the file; nothing was written to storage")
        from btc_assets.contracts.bars import minute_label

        strays = [minute_label(kline.minute) for kline in parsed if not minute_label(kline.minute).startswith(date)]
        if strays:
            raise HistoryError(f"{url}: {len(strays)} klines outside {date} (first {strays[0]}); "
                               "nothing was written to storage")
        storage.replace(path, data)
    first_time = int(data.split(b",", 1)[0])
    return RawKlines(symbol=symbol, date=date, path=path, source_url=url, sha256=sha256, rows=len(parsed),
                     bytes=len(data), unit="µs" if first_time >= schema.MICROSECONDS_FROM else "ms")

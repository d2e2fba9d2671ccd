"""Realistic synthetic Binance trades: whole days in the data.binance.vision format, and live events.

Stands in for Binance wherever the real feed cannot be reached (tests, the local stack, benchmarks):

    day = generate_day("BTCUSDT", "2025-04-01", seed=7, trades=200_000)
    write_zip(day, "/tmp/archive")        # BTCUSDT-trades-2025-04-01.zip + .zip.CHECKSUM
    for event in live_events(day): ...    # {"e": "trade", "E": ..., "s": "BTCUSDT", "t": ..., ...}

What makes a day look real:
- trade ids increase by one, starting where the previous day's (default-sized) trades end;
- activity follows the clock (quiet Asian night, busier EU morning, busiest US session) with
  bursts that decay over seconds to minutes; tens of trades a second, hundreds in a burst;
- an aggressive order sweeps one or more resting orders: its trades share a timestamp and side
  and walk the book one tick at a time;
- the mid price is a geometric random walk whose variance follows activity, with a daily
  volatility around 2.5%, started near the real BTC price of that date; trades print at the bid
  or ask on a 0.01 tick;
- quantities are log-normal (median about 0.0015 BTC) on the 0.00001 lot step, quote_qty is
  price*qty exactly, about half the trades have the buyer as maker;
- ``time`` is in microseconds from 2025-01-01 on and in milliseconds before, as in the archive.

Deterministic: the same (symbol, date, seed, trades) gives the same bytes. Vectorised with numpy,
so a day of millions of trades takes seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import zipfile
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from btc_assets.contracts import schema

UNITS = 10**schema.DECIMALS
SECONDS_PER_DAY = 86_400
MICROSECONDS_FROM_DATE = Date(2025, 1, 1)  # the archive switched `time` from ms to µs here

# Approximate BTC prices (USD) through its history: days in between are interpolated.
BTC_PRICE_PATH = (
    ("2017-08-17", 4_300),
    ("2017-12-17", 19_000),
    ("2018-02-06", 7_000),
    ("2018-06-30", 6_300),
    ("2018-11-25", 3_900),
    ("2019-06-26", 12_000),
    ("2019-12-31", 7_200),
    ("2020-03-13", 5_000),
    ("2020-07-01", 9_200),
    ("2020-12-31", 29_000),
    ("2021-04-14", 63_000),
    ("2021-07-20", 30_000),
    ("2021-11-10", 67_000),
    ("2022-06-18", 19_000),
    ("2022-11-21", 16_000),
    ("2023-03-31", 28_500),
    ("2023-09-11", 25_000),
    ("2023-12-31", 42_300),
    ("2024-03-14", 73_000),
    ("2024-08-05", 54_000),
    ("2024-12-17", 106_000),
    ("2025-01-01", 94_000),
    ("2025-01-20", 106_000),
    ("2025-04-08", 76_000),
    ("2025-05-22", 111_000),
    ("2025-08-14", 122_000),
    ("2025-10-06", 124_000),
    ("2025-11-21", 85_000),
    ("2025-12-31", 88_000),
)
# Approximate BTCUSDT trades per day; the zero-fee months of 2022-23 were by far the busiest.
BTC_TRADES_PER_DAY = (
    ("2017-08-17", 30_000),
    ("2018-01-01", 400_000),
    ("2019-01-01", 250_000),
    ("2020-01-01", 600_000),
    ("2021-01-01", 1_500_000),
    ("2022-01-01", 1_200_000),
    ("2022-07-07", 1_300_000),
    ("2022-07-08", 6_000_000),
    ("2023-03-21", 6_000_000),
    ("2023-03-22", 1_500_000),
    ("2024-01-01", 1_800_000),
    ("2025-01-01", 2_200_000),
    ("2026-01-01", 2_000_000),
)
LISTING_DATE = BTC_PRICE_PATH[0][0]  # BTCUSDT trade id 0 was on this day
# Other symbols follow BTC's path, scaled (a stand-in, good enough for multi-symbol plumbing).
PRICE_RATIO_TO_BTC = {"BTC": 1.0, "ETH": 0.035, "BNB": 0.007, "SOL": 0.0017, "XRP": 0.00002}
DEFAULT_PRICE_RATIO = 0.001

DAILY_VOLATILITY = 0.025  # typical; each day draws its own around it
MEDIAN_QUOTE_PER_TRADE = 130.0  # USD: a median BTC trade of about 0.0015 BTC
QUANTITY_SIGMA = 1.7  # log-normal spread of trade sizes: many tiny trades, a few of whole coins
MAX_QUOTE_PER_TRADE = 2_000_000.0
SWEEP_CONTINUE = 0.45  # chance that an aggressive order fills one more resting order
LATENCY_MS = (1, 8)  # live event time E is trade time T plus this (uniform, ms)


@dataclass(frozen=True, eq=False)
class TradeDay:
    """One symbol-day of trades as numpy columns, in trade id order.

    Prices and quantities are integers of 10^-8 (exact, so the CSV prints exactly what the bars
    sum); ``time`` is in the archive's unit for the date (µs from 2025, ms before).
    """

    symbol: str
    date: str
    trade_id: np.ndarray
    price_units: np.ndarray
    qty_units: np.ndarray
    quote_units: np.ndarray
    time: np.ndarray
    is_buyer_maker: np.ndarray
    is_best_match: np.ndarray

    def __len__(self) -> int:
        return len(self.trade_id)

    @property
    def time_ms(self) -> np.ndarray:
        return np.where(self.time < schema.MICROSECONDS_FROM, self.time, self.time // 1000)

    def trades(self) -> Iterator[schema.Trade]:
        """The trades one by one, as ``schema.parse_history_line`` would read them from the CSV."""
        for trade_id, price, qty, quote, trade_time, maker, best in zip(
            self.trade_id.tolist(),
            self.price_units.tolist(),
            self.qty_units.tolist(),
            self.quote_units.tolist(),
            self.time.tolist(),
            self.is_buyer_maker.tolist(),
            self.is_best_match.tolist(),
        ):
            yield schema.Trade(trade_id, price / UNITS, qty / UNITS, quote / UNITS, trade_time, maker, best)


def _day(date: str) -> Date:
    return Date.fromisoformat(date)


def _interpolate(path: tuple[tuple[str, float], ...], date: str) -> float:
    days = [_day(day).toordinal() for day, _ in path]
    return float(np.interp(_day(date).toordinal(), days, [value for _, value in path]))


def _price_ratio(symbol: str) -> float:
    return next((ratio for base, ratio in PRICE_RATIO_TO_BTC.items() if symbol.startswith(base)), DEFAULT_PRICE_RATIO)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:16], "big")


@lru_cache(maxsize=4096)
def default_trade_count(symbol: str, date: str, seed: int = 0) -> int:
    """How many trades ``generate_day`` makes when not told: the era's level, give or take a quarter."""
    noise = np.random.default_rng(_seed("count", symbol, date, seed)).normal(0.0, 0.25)
    return max(1_000, int(_interpolate(BTC_TRADES_PER_DAY, date) * math.exp(noise)))


@lru_cache(maxsize=64)
def _cumulative_trades(symbol: str, seed: int, until: str) -> int:
    # Sum of default day sizes from the listing up to (not including) `until`, a year at a time
    # and cached, so consecutive days of the same run cost one addition each.
    start, end = _day(LISTING_DATE), _day(until)
    if end <= start:
        return 0
    year_start = max(start, Date(end.year, 1, 1))
    if year_start == end:
        year_start = max(start, Date(end.year - 1, 1, 1))
    before = _cumulative_trades(symbol, seed, year_start.isoformat()) if year_start > start else 0
    days = (end - year_start).days
    return before + sum(
        default_trade_count(symbol, (year_start + timedelta(days=offset)).isoformat(), seed) for offset in range(days)
    )


def first_trade_id(symbol: str, date: str, seed: int = 0) -> int:
    """The id of the day's first trade: every default-sized day before it, since the listing, counted."""
    return _cumulative_trades(symbol, seed, date)


def _activity(rng: np.random.Generator) -> np.ndarray:
    """Relative trading intensity for each second of a UTC day: sessions, minute marks, bursts."""
    hour = np.arange(SECONDS_PER_DAY) / 3600.0
    sessions = (
        0.45
        + 0.20 * np.exp(-(((hour - 2.0) / 2.0) ** 2))  # Asia
        + 0.35 * np.exp(-(((hour - 8.5) / 2.2) ** 2))  # Europe opens
        + 0.85 * np.exp(-(((hour - 14.8) / 2.6) ** 2))  # US session, the busiest
        + 0.20 * np.exp(-(((hour - 20.0) / 2.0) ** 2))
    )
    # Algorithms fire on the minute: a short lift in the first seconds of each one.
    sessions *= 1.0 + 0.25 * np.exp(-(np.arange(SECONDS_PER_DAY) % 60) / 3.0)
    # Slow drift of interest over the day: a smooth random factor per minute.
    drift = np.cumsum(rng.normal(0.0, 0.06, SECONDS_PER_DAY // 60))
    drift -= np.linspace(0.0, drift[-1], len(drift))
    sessions *= np.repeat(np.exp(drift - drift.mean()), 60)
    # Bursts (news, liquidations, big orders): jump up, then decay over seconds to minutes.
    bursts = np.zeros(SECONDS_PER_DAY)
    for start in rng.choice(SECONDS_PER_DAY, size=rng.poisson(18), p=sessions / sessions.sum()):
        height = rng.lognormal(1.0, 0.7)
        decay = max(5.0, rng.lognormal(math.log(60.0), 0.8))
        span = min(SECONDS_PER_DAY - start, int(10 * decay))
        bursts[start : start + span] += height * np.exp(-np.arange(span) / decay)
    return sessions * (1.0 + bursts)


def _quantities(rng: np.random.Generator, count: int, price_level: float) -> tuple[np.ndarray, int]:
    """Log-normal trade sizes as integer lots, and the lot size in units (0.00001 for BTC)."""
    median = MEDIAN_QUOTE_PER_TRADE / price_level
    lot_units = int(min(UNITS, max(1, 10 ** (math.floor(math.log10(median)) - 2 + schema.DECIMALS))))
    qty = rng.lognormal(math.log(median), QUANTITY_SIGMA, count)
    lots = np.rint(qty * UNITS / lot_units).astype(np.int64)
    return np.clip(lots, 1, int(MAX_QUOTE_PER_TRADE / price_level * UNITS / lot_units)), lot_units


def price_tick_units(price_level: float) -> int:
    """The price tick in units of 10^-8: 0.01 (BTC's tick) for anything dearer than a dollar, finer below."""
    return min(10**6, max(1, 10 ** (math.floor(math.log10(price_level)) + 4)))


def generate_day(symbol: str, date: str, seed: int = 0, trades: int | None = None) -> TradeDay:
    """A day of trades of ``symbol`` on ``date`` (``YYYY-MM-DD``, UTC); ``trades`` overrides the default count."""
    count = default_trade_count(symbol, date, seed) if trades is None else int(trades)
    rng = np.random.default_rng(_seed("day", symbol, date, seed))
    day_start_us = int(datetime.fromisoformat(date).replace(tzinfo=timezone.utc).timestamp()) * 1_000_000

    # Aggressive orders, each filling `sizes` resting orders; cut so they fill exactly `count`.
    sizes = rng.geometric(1.0 - SWEEP_CONTINUE, int(count * (1.0 - SWEEP_CONTINUE) * 1.1) + 64)
    while sizes.sum() < count:
        sizes = np.concatenate((sizes, rng.geometric(1.0 - SWEEP_CONTINUE, len(sizes))))
    orders = int(np.searchsorted(np.cumsum(sizes), count)) + 1
    sizes = sizes[:orders]
    sizes[-1] -= int(sizes.sum()) - count

    # When: orders spread over the day's seconds by activity, at random microseconds within one.
    activity = _activity(rng)
    per_second = rng.multinomial(orders, activity / activity.sum())
    order_us = np.repeat(np.arange(SECONDS_PER_DAY, dtype=np.int64) * 1_000_000, per_second)
    order_us += rng.integers(0, 1_000_000, orders)
    order_us.sort()

    # The mid price: log random walk per second, its variance spent where the trading is.
    price_level = _interpolate(BTC_PRICE_PATH, date) * _price_ratio(symbol) * math.exp(rng.normal(0.0, 0.03))
    volatility = DAILY_VOLATILITY * math.exp(rng.normal(0.0, 0.3))
    share = activity / activity.sum()
    log_returns = rng.normal(0.0, 1.0, SECONDS_PER_DAY) * volatility * np.sqrt(share) - 0.5 * volatility**2 * share
    log_mid = np.concatenate(([0.0], np.cumsum(log_returns))) + math.log(price_level)
    order_second = order_us / 1e6
    mid = np.exp(np.interp(order_second, np.arange(SECONDS_PER_DAY + 1), log_mid))
    # The side goes with the move: in a falling second more sellers hit the bid, and vice versa.
    move = log_returns[np.minimum(order_second.astype(np.int64), SECONDS_PER_DAY - 1)]
    seller_takes = rng.random(orders) < 0.5 - 0.15 * np.tanh(move / (volatility * np.sqrt(share.mean())))

    tick_units = price_tick_units(price_level)
    bid_ticks = np.floor(mid * UNITS / tick_units).astype(np.int64)

    # Trades: each order's fills share its time and side and walk the book one tick per fill.
    order_of_trade = np.repeat(np.arange(orders), sizes)
    fill = np.arange(count) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    is_buyer_maker = seller_takes[order_of_trade]
    price_ticks = np.where(is_buyer_maker, bid_ticks[order_of_trade] - fill, bid_ticks[order_of_trade] + 1 + fill)
    price_ticks = np.maximum(price_ticks, 1)
    lots, lot_units = _quantities(rng, count, price_level)
    quote_factor = tick_units * lot_units
    if quote_factor % UNITS == 0:  # exact, as for BTC: 0.01 USD * 0.00001 BTC = 10 units
        quote_units = price_ticks * lots * (quote_factor // UNITS)
    else:
        quote_units = np.rint(price_ticks * (lots * (quote_factor / UNITS))).astype(np.int64)
    trade_us = day_start_us + order_us[order_of_trade]
    in_microseconds = _day(date) >= MICROSECONDS_FROM_DATE
    return TradeDay(
        symbol=symbol,
        date=date,
        trade_id=first_trade_id(symbol, date, seed) + np.arange(count, dtype=np.int64),
        price_units=price_ticks * tick_units,
        qty_units=lots * lot_units,
        quote_units=quote_units,
        time=trade_us if in_microseconds else trade_us // 1000,
        is_buyer_maker=is_buyer_maker,
        is_best_match=np.ones(count, dtype=bool),
    )


# --- writers -------------------------------------------------------------------------------

_CSV_ROWS_PER_BATCH = 1 << 20


def _decimal_text(units: np.ndarray):
    """``94123.45000000``: integers of 10^-8 as the archive prints them, 8 decimals always."""
    import pyarrow as pa

    # The units are exactly the storage of a decimal with 8 places (a 128-bit integer; all are
    # positive, so the high word is 0), and Arrow prints a decimal with all its places.
    words = np.zeros((len(units), 2), dtype=np.int64)
    words[:, 0] = units
    decimals = pa.Array.from_buffers(pa.decimal128(38, schema.DECIMALS), len(units), [None, pa.py_buffer(words)])
    return decimals.cast(pa.string())


def _csv_lines(day: TradeDay, rows: slice) -> memoryview:
    """The bytes of some rows of the day's CSV, each line ended by a newline."""
    import pyarrow as pa
    import pyarrow.compute as pc

    true, false = schema.TRUE_VALUES[0], schema.FALSE_VALUES[0]
    lines = pc.binary_join_element_wise(
        pa.array(day.trade_id[rows]).cast(pa.string()),
        _decimal_text(day.price_units[rows]),
        _decimal_text(day.qty_units[rows]),
        _decimal_text(day.quote_units[rows]),
        pa.array(day.time[rows]).cast(pa.string()),
        pc.if_else(pa.array(day.is_buyer_maker[rows]), true, false),
        pc.if_else(pa.array(day.is_best_match[rows]), true, false),
        ",",
    )
    lines = pc.binary_join_element_wise(lines, "", "\n")  # appends the newline to each line
    # A string array keeps its values back to back in one buffer: that buffer is the file.
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    return memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]]


def write_csv(day: TradeDay, path_or_file: str | os.PathLike | IO[bytes]) -> None:
    """Write the day as data.binance.vision prints it: ``id,price,qty,quote_qty,time,is_buyer_maker,is_best_match``.

    No header, LF line ends, 8 decimals on every price and quantity, ``True``/``False``.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "wb") as file:
            write_csv(day, file)
        return
    for start in range(0, len(day), _CSV_ROWS_PER_BATCH):
        path_or_file.write(_csv_lines(day, slice(start, start + _CSV_ROWS_PER_BATCH)))


def write_zip(day: TradeDay, directory: str | os.PathLike, compresslevel: int = 6) -> tuple[Path, Path]:
    """Write ``<SYMBOL>-trades-<DATE>.zip`` (one CSV inside) and its ``.zip.CHECKSUM`` into ``directory``.

    The zip's timestamp is fixed (the next day, when the archive publishes a day), so the same
    day gives the same bytes and the same checksum. Each file appears whole or not at all.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    zip_path = directory / schema.history_zip_name(day.symbol, day.date)
    checksum_path = directory / schema.history_checksum_name(day.symbol, day.date)
    published = _day(day.date) + timedelta(days=1)
    member = zipfile.ZipInfo(schema.history_csv_name(day.symbol, day.date), date_time=published.timetuple()[:6])
    member.compress_type = zipfile.ZIP_DEFLATED
    member.external_attr = 0o644 << 16
    unfinished = zip_path.with_name(f"{zip_path.name}.{os.getpid()}.part")
    with zipfile.ZipFile(unfinished, "w", compresslevel=compresslevel) as archive:
        with archive.open(member, "w", force_zip64=len(day) > 20_000_000) as csv_file:
            write_csv(day, csv_file)
    with open(unfinished, "rb") as written:
        digest = hashlib.file_digest(written, "sha256").hexdigest()
    unfinished.replace(zip_path)
    unfinished = checksum_path.with_name(f"{checksum_path.name}.{os.getpid()}.part")
    unfinished.write_text(schema.checksum_text(digest, zip_path.name))
    unfinished.replace(checksum_path)
    return zip_path, checksum_path


def _decimal_strings(units: np.ndarray) -> list[str]:
    whole, fraction = np.divmod(units, UNITS)
    return [f"{w}.{f:08d}" for w, f in zip(whole.tolist(), fraction.tolist())]


def live_events(day: TradeDay, start: int = 0, stop: int | None = None, seed: int = 0) -> Iterator[dict]:
    """The trades as Binance WebSocket ``<symbol>@trade`` events (CONTRACTS.md section 1), T and E in ms."""
    rows = slice(start, stop)
    trade_ms = day.time_ms[rows]
    latency = np.random.default_rng(_seed("latency", day.symbol, day.date, seed, start)).integers(
        LATENCY_MS[0], LATENCY_MS[1] + 1, len(trade_ms)
    )
    for trade_id, price, qty, trade_time, event_time, maker in zip(
        day.trade_id[rows].tolist(),
        _decimal_strings(day.price_units[rows]),
        _decimal_strings(day.qty_units[rows]),
        trade_ms.tolist(),
        (trade_ms + latency).tolist(),
        day.is_buyer_maker[rows].tolist(),
    ):
        yield {
            schema.EVENT_TYPE: schema.TRADE_EVENT_TYPE,
            schema.EVENT_TIME: event_time,
            schema.EVENT_SYMBOL: day.symbol,
            schema.EVENT_TRADE_ID: trade_id,
            schema.EVENT_PRICE: price,
            schema.EVENT_QUANTITY: qty,
            schema.EVENT_TRADE_TIME: trade_time,
            schema.EVENT_IS_BUYER_MAKER: maker,
            schema.EVENT_IGNORE: True,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic day of Binance trades as CSV or zip.")
    parser.add_argument("symbol")
    parser.add_argument("date", help="YYYY-MM-DD (UTC)")
    parser.add_argument("output", help="a .csv file, or a directory for the .zip and .zip.CHECKSUM")
    parser.add_argument("--trades", type=int, default=None, help="number of trades (default: realistic for the date)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    day = generate_day(args.symbol, args.date, seed=args.seed, trades=args.trades)
    if args.output.endswith(".csv"):
        write_csv(day, args.output)
    else:
        write_zip(day, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def without_rows(day: TradeDay, rows: np.ndarray) -> TradeDay:
    """The day without the trades at positions ``rows`` (a hole in the file: their ids missing)."""
    keep = np.ones(len(day), dtype=bool)
    keep[rows] = False
    return dataclasses.replace(day, **{spec.name: getattr(day, spec.name)[keep] for spec in dataclasses.fields(day)
                                       if isinstance(getattr(day, spec.name), np.ndarray)})

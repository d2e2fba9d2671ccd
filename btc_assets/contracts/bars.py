"""Minute-bar maths shared by the batch (MapReduce) and stream paths: partial aggregates and their merge.

A ``MinutePartial`` summarises any subset of one minute's trades. Partials merge associatively and
commutatively, so a minute split across mappers, chunks or micro-batches gives the same bar however
it is cut. ``finalize`` turns a partial into the 16 fields of CONTRACTS.md section 4.

Exact sums. Prices and quantities have at most 8 decimals, so every sum is kept as an integer
count of 10^-8 (a "unit") instead of a float: float sums depend on the order of addition, and
then a cluster run with other split boundaries, or shuffled input, would differ in the last
digit. Divisions happen once, in ``finalize``, as correctly rounded int/int divisions, so the
output is the same bytes whatever the input order or the split.

Open and close follow trade ids, never arrival order: open is the price of the lowest id, close
of the highest. Should a trade id appear twice with two prices, open takes the lower and close
the higher, so that even then the result does not depend on order.

Shipping. Hadoop Streaming runs mapper.py/reducer.py as plain scripts on nodes where this
package is not installed, so this module and ``schema.py`` use the standard library only (numpy
is imported inside the one vectorised function) and are shipped next to the scripts with
``-files`` (``streaming_support_files()`` lists them). Loaded that way, this module is the
top-level ``bars`` and finds ``schema`` beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable

if __package__:
    from . import schema
else:  # shipped flat next to the Hadoop Streaming scripts
    import schema  # type: ignore[no-redef]

if TYPE_CHECKING:
    import numpy as np

UNITS = 10**schema.DECIMALS  # one unit is 10^-8 of a price or quantity
MS_PER_MINUTE = 60_000


def to_units(value: float) -> int:
    """A price or quantity as an integer count of 10^-8 (the rounding the vectorised path uses too)."""
    return round(value * UNITS)


def minute_of(trade_time: int) -> int:
    """Minutes since the epoch of a trade time in ms or µs (per-value rule of schema.trade_time_to_ms)."""
    return schema.trade_time_to_ms(trade_time) // MS_PER_MINUTE


def minute_label(minute: int) -> str:
    """``2025-04-01 13:37``: the bar's key, the UTC start of minute ``minute`` since the epoch."""
    return datetime.fromtimestamp(minute * 60, tz=timezone.utc).strftime(schema.MINUTE_FORMAT)


def minute_from_label(label: str) -> int:
    """Minutes since the epoch from a ``YYYY-MM-DD HH:MM`` bar key."""
    moment = datetime.strptime(label, schema.MINUTE_FORMAT).replace(tzinfo=timezone.utc)
    return int(moment.timestamp()) // 60


@dataclass(slots=True)
class MinutePartial:
    """The mergeable summary of some of one minute's trades; prices and quantities in units of 10^-8."""

    trades: int
    first_trade_id: int
    open_units: int  # price of first_trade_id
    last_trade_id: int
    close_units: int  # price of last_trade_id
    high_units: int
    low_units: int
    price_units_sum: int  # for avg_price, the plain mean of prices
    volume_units: int  # sum of qty
    quote_volume_units: int  # sum of quote_qty
    maker_trades: int  # trades whose buyer was the maker
    taker_buy_volume_units: int  # sum of qty of the other trades: the taker bought

    @classmethod
    def of_trade(
        cls, trade_id: int, price_units: int, qty_units: int, quote_units: int, is_buyer_maker: bool
    ) -> MinutePartial:
        """The partial of a single trade."""
        return cls(
            trades=1,
            first_trade_id=trade_id,
            open_units=price_units,
            last_trade_id=trade_id,
            close_units=price_units,
            high_units=price_units,
            low_units=price_units,
            price_units_sum=price_units,
            volume_units=qty_units,
            quote_volume_units=quote_units,
            maker_trades=1 if is_buyer_maker else 0,
            taker_buy_volume_units=0 if is_buyer_maker else qty_units,
        )

    def merge(self, other: MinutePartial) -> MinutePartial:
        """Fold ``other`` into this partial (in place) and return it; order of merging never matters."""
        if (other.first_trade_id, other.open_units) < (self.first_trade_id, self.open_units):
            self.first_trade_id, self.open_units = other.first_trade_id, other.open_units
        if (other.last_trade_id, other.close_units) > (self.last_trade_id, self.close_units):
            self.last_trade_id, self.close_units = other.last_trade_id, other.close_units
        self.high_units = max(self.high_units, other.high_units)
        self.low_units = min(self.low_units, other.low_units)
        self.trades += other.trades
        self.price_units_sum += other.price_units_sum
        self.volume_units += other.volume_units
        self.quote_volume_units += other.quote_volume_units
        self.maker_trades += other.maker_trades
        self.taker_buy_volume_units += other.taker_buy_volume_units
        return self

    def to_fields(self) -> list[str]:
        """The partial as text fields, in declaration order (the mapper's output after the minute key)."""
        return [str(getattr(self, name)) for name in PARTIAL_FIELDS]

    @classmethod
    def from_fields(cls, texts: Iterable[str]) -> MinutePartial:
        """Inverse of ``to_fields``; raises ValueError for a wrong count or a non-integer field."""
        values = [int(field) for field in texts]
        if len(values) != len(PARTIAL_FIELDS):
            raise ValueError(f"expected {len(PARTIAL_FIELDS)} partial fields, got {len(values)}")
        return cls(*values)

    def bar(self, minute: int) -> dict[str, int | float | str]:
        """The contract's minute bar (section 4) as typed values, keyed by schema.BAR_FIELDS."""
        volume_units = self.volume_units
        return {
            schema.MINUTE: minute_label(minute),
            "trades": self.trades,
            "open": self.open_units / UNITS,
            "high": self.high_units / UNITS,
            "low": self.low_units / UNITS,
            "close": self.close_units / UNITS,
            "avg_price": self.price_units_sum / (self.trades * UNITS),
            "vwap": self.quote_volume_units / volume_units,
            "volume": volume_units / UNITS,
            "quote_volume": self.quote_volume_units / UNITS,
            "avg_quantity": volume_units / (self.trades * UNITS),
            "avg_quote_quantity": self.quote_volume_units / (self.trades * UNITS),
            "maker_ratio": self.maker_trades / self.trades,
            "taker_buy_volume": self.taker_buy_volume_units / UNITS,
            "first_trade_id": self.first_trade_id,
            "last_trade_id": self.last_trade_id,
        }


PARTIAL_FIELDS = tuple(field.name for field in fields(MinutePartial))


def merge(left: MinutePartial, right: MinutePartial) -> MinutePartial:
    """A new partial covering the trades of both (neither argument is changed)."""
    return MinutePartial(*(getattr(left, name) for name in PARTIAL_FIELDS)).merge(right)


def finalize(minute: int, partial: MinutePartial) -> tuple[str, ...]:
    """The bar's 16 fields as text in schema.BAR_FIELDS order: ints as digits, floats as their repr."""
    bar = partial.bar(minute)
    values = (bar[name] for name in schema.BAR_FIELDS)
    return tuple(value if isinstance(value, str) else repr(value) for value in values)


def bar_line(minute: int, partial: MinutePartial) -> str:
    """One MapReduce output line (no newline): the finalized fields, tab-separated."""
    return schema.BAR_SEPARATOR.join(finalize(minute, partial))


def add_trade(partials: dict[int, MinutePartial], trade: schema.Trade) -> None:
    """Fold one parsed history trade into ``partials`` (minute since epoch -> partial)."""
    single = MinutePartial.of_trade(
        trade.trade_id, to_units(trade.price), to_units(trade.qty), to_units(trade.quote_qty), trade.is_buyer_maker
    )
    minute = minute_of(trade.time)
    existing = partials.get(minute)
    partials[minute] = single if existing is None else existing.merge(single)


def bars_from_trades(trades: Iterable[schema.Trade]) -> list[tuple[str, ...]]:
    """Reference implementation: the finalized bars of some trades, in minute order, one trade at a time."""
    partials: dict[int, MinutePartial] = {}
    for trade in trades:
        add_trade(partials, trade)
    return [finalize(minute, partials[minute]) for minute in sorted(partials)]


def partials_from_columns(
    trade_id: np.ndarray,
    price_units: np.ndarray,
    qty_units: np.ndarray,
    quote_units: np.ndarray,
    time_ms: np.ndarray,
    is_buyer_maker: np.ndarray,
) -> dict[int, MinutePartial]:
    """The partials of many trades at once (int64 numpy columns, bool maker flags), keyed by minute.

    Gives exactly what ``add_trade`` gives one trade at a time; the MapReduce mapper uses it on
    chunks of hundreds of thousands of trades.
    """
    import numpy as np

    count = len(trade_id)
    if count == 0:
        return {}
    minute = time_ms // MS_PER_MINUTE
    # A history file is already in id order (and so in minute order); sort only input that is not,
    # by (minute, id, price) so the first and last row of each minute are its open and close.
    in_order = bool(np.all(minute[1:] >= minute[:-1])) and bool(np.all(trade_id[1:] > trade_id[:-1]))
    if not in_order:
        order = np.lexsort((price_units, trade_id, minute))
        trade_id, price_units, qty_units, quote_units, minute, is_buyer_maker = (
            column[order] for column in (trade_id, price_units, qty_units, quote_units, minute, is_buyer_maker)
        )
    starts = np.flatnonzero(np.concatenate(([True], minute[1:] != minute[:-1])))
    ends = np.concatenate((starts[1:], [count])) - 1
    taker_qty_units = np.where(is_buyer_maker, 0, qty_units)

    def sums(units: np.ndarray) -> list[int]:
        # int64 cannot overflow unless the largest value times the row count reaches 2^63; if it
        # could (huge quantities of a cheap coin), sum as Python ints instead.
        peak = int(units.max()) if len(units) else 0
        if peak * count < 2**63:
            return np.add.reduceat(units, starts).tolist()
        return np.add.reduceat(units.astype(object), starts).tolist()

    columns = zip(
        minute[starts].tolist(),
        np.diff(np.concatenate((starts, [count]))).tolist(),
        trade_id[starts].tolist(),
        price_units[starts].tolist(),
        trade_id[ends].tolist(),
        price_units[ends].tolist(),
        np.maximum.reduceat(price_units, starts).tolist(),
        np.minimum.reduceat(price_units, starts).tolist(),
        sums(price_units),
        sums(qty_units),
        sums(quote_units),
        np.add.reduceat(is_buyer_maker.astype(np.int64), starts).tolist(),
        sums(taker_qty_units),
    )
    return {values[0]: MinutePartial(*values[1:]) for values in columns}


def streaming_support_files() -> tuple[str, str]:
    """Absolute paths of the modules mapper.py/reducer.py import: pass them to Hadoop Streaming ``-files``."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "bars.py"), os.path.join(here, "schema.py")

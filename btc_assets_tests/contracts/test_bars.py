"""Minute-bar maths: exact bar values, merges in any order, and the vectorised path agreeing with the scalar one."""

from __future__ import annotations

import random

import numpy as np
import pytest

from btc_assets.contracts import bars, schema

MINUTE_MS = 1_743_465_600_000  # 2025-04-01 00:00 UTC


def trade(trade_id, price, qty, is_buyer_maker, time_ms=MINUTE_MS, quote_qty=None):
    quote = round(price * qty, 8) if quote_qty is None else quote_qty
    return schema.Trade(trade_id, price, qty, quote, time_ms * 1000, is_buyer_maker, True)


def test_a_hand_computed_bar():
    trades = [
        trade(12, 100.5, 2.0, True, MINUTE_MS + 59_999),
        trade(10, 100.0, 1.0, False, MINUTE_MS + 10),
        trade(11, 102.0, 1.0, True, MINUTE_MS + 20),
        trade(13, 99.0, 4.0, False, MINUTE_MS + 60_000),  # the next minute
    ]
    first, second = bars.bars_from_trades(trades)
    assert dict(zip(schema.BAR_FIELDS, first)) == {
        "minute": "2025-04-01 00:00",
        "trades": "3",
        "open": "100.0",  # trade 10 arrived second but has the lowest id
        "high": "102.0",
        "low": "100.0",
        "close": "100.5",
        "avg_price": repr((100.0 + 102.0 + 100.5) / 3),
        "vwap": repr((100.0 + 102.0 + 201.0) / 4.0),
        "volume": "4.0",
        "quote_volume": "403.0",
        "avg_quantity": repr(4.0 / 3),
        "avg_quote_quantity": repr(403.0 / 3),
        "maker_ratio": repr(2 / 3),
        "taker_buy_volume": "1.0",
        "first_trade_id": "10",
        "last_trade_id": "12",
    }
    assert second[:6] == ("2025-04-01 00:01", "1", "99.0", "99.0", "99.0", "99.0")


def test_bar_fields_follow_the_contract_order():
    partial = bars.MinutePartial.of_trade(7, 123_45000000, 100000, 12345000, False)
    assert list(partial.bar(1)) == list(schema.BAR_FIELDS)
    assert len(bars.finalize(1, partial)) == 16
    assert bars.bar_line(1, partial).split("\t")[0] == "1970-01-01 00:01"


def test_full_precision_and_exact_decimal_sums():
    # 0.1 + 0.2 is not 0.3 in floats; integer units keep decimal inputs exact until the one division.
    first, = bars.bars_from_trades([trade(1, 0.1, 0.1, False), trade(2, 0.2, 0.2, False)])
    fields = dict(zip(schema.BAR_FIELDS, first))
    assert fields["volume"] == "0.3" and fields["avg_price"] == "0.15"
    assert fields["vwap"] == repr(1 / 6)  # 0.05 / 0.3, correctly rounded once


def test_milliseconds_and_microseconds_give_the_same_minute():
    assert bars.minute_of(MINUTE_MS + 59_999) == bars.minute_of((MINUTE_MS + 59_999) * 1000)
    assert bars.minute_label(bars.minute_of(MINUTE_MS)) == "2025-04-01 00:00"
    assert bars.minute_from_label("2025-04-01 00:00") == MINUTE_MS // 60_000


def finalized(partials: dict[int, bars.MinutePartial]) -> list[tuple[str, ...]]:
    return [bars.finalize(minute, partials[minute]) for minute in sorted(partials)]


def test_merging_parts_in_any_order_gives_identical_bars(day_2024):
    trades = list(day_2024.trades())[:20_000]
    expected = bars.bars_from_trades(trades)
    rng = random.Random(1)
    for _ in range(3):
        rng.shuffle(trades)
        cuts = sorted(rng.sample(range(1, len(trades)), 6))
        parts = []
        for start, stop in zip([0, *cuts], [*cuts, len(trades)]):
            part: dict[int, bars.MinutePartial] = {}
            for one in trades[start:stop]:
                bars.add_trade(part, one)
            parts.append(part)
        rng.shuffle(parts)
        merged: dict[int, bars.MinutePartial] = {}
        for part in parts:
            for minute, partial in part.items():
                merged[minute] = bars.merge(merged[minute], partial) if minute in merged else partial
        assert finalized(merged) == expected


def columns_of(trades):
    return (
        np.array([one.trade_id for one in trades], dtype=np.int64),
        np.array([bars.to_units(one.price) for one in trades], dtype=np.int64),
        np.array([bars.to_units(one.qty) for one in trades], dtype=np.int64),
        np.array([bars.to_units(one.quote_qty) for one in trades], dtype=np.int64),
        np.array([schema.trade_time_to_ms(one.time) for one in trades], dtype=np.int64),
        np.array([one.is_buyer_maker for one in trades], dtype=bool),
    )


@pytest.mark.parametrize("shuffled", [False, True], ids=["id-order", "shuffled"])
def test_vectorised_partials_equal_one_trade_at_a_time(day_2025, shuffled):
    trades = list(day_2025.trades())[:30_000]
    if shuffled:
        random.Random(2).shuffle(trades)
    assert finalized(bars.partials_from_columns(*columns_of(trades))) == bars.bars_from_trades(trades)


def test_a_repeated_trade_id_breaks_ties_the_same_way_on_both_paths():
    trades = [
        trade(5, 101.0, 1.0, False),
        trade(5, 100.0, 1.0, True),
        trade(9, 99.0, 1.0, False),
        trade(9, 98.0, 1.0, True),
    ]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        arranged = [trades[i] for i in order]
        scalar = bars.bars_from_trades(arranged)
        assert scalar[0][2] == "100.0" and scalar[0][5] == "99.0"  # open: lower price, close: higher
        assert finalized(bars.partials_from_columns(*columns_of(arranged))) == scalar


def test_sums_that_would_overflow_int64_stay_exact():
    # 4,096 trades of 80 million coins each: unit sums pass 2^63, so they are summed as Python ints.
    count, qty = 4096, 80_000_000.0
    columns = (
        np.arange(count, dtype=np.int64),
        np.full(count, bars.to_units(0.5), dtype=np.int64),
        np.full(count, bars.to_units(qty), dtype=np.int64),
        np.full(count, bars.to_units(qty * 0.5), dtype=np.int64),
        np.full(count, MINUTE_MS, dtype=np.int64),
        np.zeros(count, dtype=bool),
    )
    (partial,) = bars.partials_from_columns(*columns).values()
    assert partial.volume_units == count * bars.to_units(qty) > 2**63
    assert partial.bar(0)["volume"] == count * qty


def test_partial_fields_round_trip_and_reject_bad_lines():
    partial = bars.MinutePartial.of_trade(3, 5, 7, 35, True)
    assert bars.MinutePartial.from_fields(partial.to_fields()) == partial
    assert len(partial.to_fields()) == len(bars.PARTIAL_FIELDS)
    with pytest.raises(ValueError):
        bars.MinutePartial.from_fields(partial.to_fields()[:-1])
    with pytest.raises(ValueError):
        bars.MinutePartial.from_fields(["x"] * len(bars.PARTIAL_FIELDS))


def test_streaming_support_files_are_the_modules_the_scripts_import():
    assert [path.rsplit("/", 1)[1] for path in bars.streaming_support_files()] == ["bars.py", "schema.py"]

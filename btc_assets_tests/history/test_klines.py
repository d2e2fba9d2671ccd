"""Bars checked against Binance's own 1-minute klines: a clean day passes, a hole in the trade file and a changed
kline close fail naming the minutes and fields, and klines files parse in both time units."""

from __future__ import annotations

from decimal import Decimal

import dagster as dg
import pytest

from btc_assets.contracts import schema
from btc_assets.defs.history.assets import exchange_klines, minute_bars, raw_trades
from btc_assets.defs.history.checks import bars_match_klines, minute_bar_checks
from btc_assets.history import klines
from btc_testkit import generator
from btc_testkit import klines as emulated

ASSETS = [raw_trades, exchange_klines, minute_bars, minute_bar_checks, bars_match_klines]
# Days no other test uses: the hole and the changed close are planted in the session's archive for good.
CLEAN_DAY, HOLE_DAY, CLOSE_DAY = "2025-03-20", "2025-03-21", "2024-12-20"


def _check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "bars_match_klines"]
    return evaluation


def test_bars_match_the_klines_of_an_emulated_day(history_resources, archive):
    result = dg.materialize(ASSETS, partition_key=CLEAN_DAY, resources=history_resources)
    assert result.success
    evaluation = _check(result)
    assert evaluation.passed, evaluation.description
    facts = evaluation.metadata["by_symbol"].value["BTCUSDT"]
    # 40,000 trades a day: some minutes trade nothing; their klines match the bars they do not have.
    assert facts["minutes"] == 1440 and facts["matched"] == 1440 and facts["empty_minutes"] > 0, facts
    assert evaluation.metadata["empty_minutes"].value == facts["empty_minutes"]
    meta = result.asset_materializations_for_node("exchange_klines")[0].metadata
    assert meta["rows"].value == 1440 and meta["time_unit"].value == "µs"
    storage = history_resources["storage"].storage
    stored = storage.fs.read(storage.path(schema.raw_klines_path("", "BTCUSDT", CLEAN_DAY).lstrip("/")))
    assert len(stored.splitlines()) == 1440


def test_a_hole_of_100_trades_fails_the_check_naming_minutes_and_fields(history_resources, archive):
    archive.archive.plant_hole("BTCUSDT", HOLE_DAY, trades=100)
    day = generator.generate_day("BTCUSDT", HOLE_DAY, seed=archive.archive.seed, trades=archive.archive.trades_per_day)
    middle = len(day) // 2
    holed = sorted({int(minute) for minute in day.time_ms[middle:middle + 100] // 60_000})
    labels = [klines_label(minute) for minute in holed]

    result = dg.materialize(ASSETS, partition_key=HOLE_DAY, resources=history_resources, raise_on_error=False)
    assert not result.success  # blocking: the day's bars are not to be used
    evaluation = _check(result)
    assert not evaluation.passed
    facts = evaluation.metadata["by_symbol"].value["BTCUSDT"]
    assert facts["mismatched_minutes"] == len(holed), (facts, labels)
    assert labels[0] in evaluation.description and "trades: bar " in evaluation.description, evaluation.description
    differing = {(minute, name) for minute, name, _, _ in facts["first_differences"]}
    assert {minute for minute, _ in differing} <= set(labels) and (labels[0], "volume") in differing, differing


def test_a_changed_kline_close_fails_the_check_naming_that_minute(history_resources, archive):
    archive.archive.change_close("BTCUSDT", CLOSE_DAY, minute=720)  # 12:00, a busy minute
    result = dg.materialize(ASSETS, partition_key=CLOSE_DAY, resources=history_resources, raise_on_error=False)
    evaluation = _check(result)
    assert not evaluation.passed
    facts = evaluation.metadata["by_symbol"].value["BTCUSDT"]
    assert facts["mismatched_minutes"] == 1
    assert facts["first_differences"][0][:2] == [f"{CLOSE_DAY} 12:00", "close"], facts
    assert f"{CLOSE_DAY} 12:00 close: bar " in evaluation.description
    meta = result.asset_materializations_for_node("exchange_klines")[0].metadata
    assert meta["time_unit"].value == "ms"  # 2024: milliseconds


def klines_label(minute: int) -> str:
    from btc_assets.contracts.bars import minute_label

    return minute_label(minute)


# Lines as Binance writes them (the 2025 µs file, and the ms file of before): 12 columns, no header.
MICROS_LINE = ("1743465600000000,82550.86000000,82576.00000000,82545.57000000,82572.13000000,9.91238000,"
               "1743465659999999,818442.78669900,2120,5.47233000,451847.22155060,0")
MILLIS_LINE = ("1717200000000,67472.41000000,67488.00000000,67472.40000000,67481.99000000,11.03297000,"
               "1717200059999,744569.44306960,1104,5.79455000,391052.46098680,0")


@pytest.mark.parametrize("line, minute", [(MICROS_LINE, 1743465600 // 60), (MILLIS_LINE, 1717200000 // 60)])
def test_a_binance_klines_line_parses_in_both_units(line, minute):
    (kline,) = klines.parse_klines(line + "\n")
    assert kline.minute == minute
    fields = line.split(",")
    assert (kline.open, kline.high, kline.low, kline.close) == tuple(Decimal(text) for text in fields[1:5])
    assert kline.volume == Decimal(fields[5]) and kline.quote_volume == Decimal(fields[7])
    assert kline.trades == int(fields[8]) and kline.taker_buy_volume == Decimal(fields[9])


@pytest.mark.parametrize("date, scale", [("2024-06-01", 1), ("2025-04-01", 1000)])
def test_emulated_klines_are_written_as_binance_writes_them(date, scale):
    day = generator.generate_day("BTCUSDT", date, seed=3, trades=5_000)
    lines = emulated.klines_csv(emulated.klines_frame(day)).decode().splitlines()
    assert len(lines) == 1440
    first = lines[0].split(",")
    assert len(first) == 12 and int(first[6]) - int(first[0]) == 60_000 * scale - 1
    assert all(len(value.split(".")[1]) == 8 for value in first[1:6])
    parsed = klines.parse_klines("\n".join(lines))
    assert [kline.minute for kline in parsed] == list(range(parsed[0].minute, parsed[0].minute + 1440))
    assert sum(kline.trades for kline in parsed) == 5_000


@pytest.mark.parametrize("text, reason", [
    ("1743465600000000,1,2,3\n", "line 1: 4 columns"),
    (MICROS_LINE + "\n" + MICROS_LINE.replace("82576.00000000", "n/a") + "\n", "line 2: not a number"),
    (MICROS_LINE.replace("1743465600000000", "1743465600123000", 1), "not the start of a minute"),
])
def test_a_malformed_klines_file_is_a_clear_error(text, reason):
    with pytest.raises(klines.KlinesError, match=reason):
        klines.parse_klines(text)

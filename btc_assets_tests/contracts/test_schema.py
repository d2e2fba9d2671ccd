"""The contract's names as code: paths, topics, archive names, the ms/µs rule, line and event parsing."""

from __future__ import annotations

import pytest

from btc_assets.contracts import schema

GOOD_LINE = "4681335411,94123.45000000,0.00012000,11.29481400,1735689600123456,True,True"


def test_time_unit_is_told_apart_per_value():
    assert schema.trade_time_to_ms(1_735_689_600_123) == 1_735_689_600_123  # ms (before 2025)
    assert schema.trade_time_to_ms(1_735_689_600_123_456) == 1_735_689_600_123  # µs (2025 on)
    assert schema.trade_time_to_ms(10**14 - 1) == 10**14 - 1
    assert schema.trade_time_to_ms(10**14) == 10**11


def test_storage_layout():
    assert (
        schema.raw_trades_path("/btc", "BTCUSDT", "2025-04-01")
        == "/btc/raw/trades/symbol=BTCUSDT/date=2025-04-01/BTCUSDT-trades-2025-04-01.csv"
    )
    assert schema.minute_bars_dir("hdfs://nn:8020/btc/", "BTCUSDT", "2025-04-01") == (
        "hdfs://nn:8020/btc/agg/minute/symbol=BTCUSDT/date=2025-04-01"
    )
    assert schema.model_dir("file:///data/btc", "gbt", "v3") == "file:///data/btc/models/gbt/v3"
    assert schema.checkpoint_dir("file:///", "bars") == "file:///checkpoints/bars"


def test_kafka_names():
    assert schema.trade_topic() == "BTCUSDT-TRADES"
    assert schema.trade_topic("ethusdt") == "ETHUSDT-TRADES"
    assert schema.trade_topic("BTCUSDT", "binance.{symbol}.trades") == "binance.BTCUSDT.trades"
    assert schema.dlq_topic("BTCUSDT-TRADES") == "BTCUSDT-TRADES.dlq"


def test_history_archive_names_and_url():
    assert schema.history_zip_url("BTCUSDT", "2025-04-01") == (
        "https://data.binance.vision/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-04-01.zip"
    )
    assert schema.history_checksum_name("BTCUSDT", "2025-04-01") == "BTCUSDT-trades-2025-04-01.zip.CHECKSUM"
    path = "/" + schema.history_zip_path("BTCUSDT", "2025-04-01")
    assert schema.parse_history_path(path) == ("BTCUSDT", "2025-04-01", False)
    assert schema.parse_history_path(path + ".CHECKSUM") == ("BTCUSDT", "2025-04-01", True)
    assert schema.parse_history_path("/data/spot/daily/trades/BTCUSDT/ETHUSDT-trades-2025-04-01.zip") is None
    assert schema.parse_history_path("/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-02-30.zip") is None
    text = schema.checksum_text("AB" * 32, "BTCUSDT-trades-2025-04-01.zip")
    assert text == "AB" * 32 + "  BTCUSDT-trades-2025-04-01.zip\n"
    assert schema.parse_checksum(text) == ("ab" * 32, "BTCUSDT-trades-2025-04-01.zip")


def test_bar_and_influx_fields():
    assert schema.BAR_FIELDS[0] == "minute" and len(schema.BAR_FIELDS) == 16
    assert schema.BAR_FIELDS[-2:] == ("first_trade_id", "last_trade_id")
    assert schema.BAR_MEASUREMENT_FIELDS == schema.BAR_FIELDS[1:]
    assert set(schema.INTEGER_BAR_FIELDS) <= set(schema.BAR_FIELDS)


def test_a_history_line_parses_with_lf_or_crlf():
    expected = schema.Trade(4681335411, 94123.45, 0.00012, 11.294814, 1735689600123456, True, True)
    assert schema.parse_history_line(GOOD_LINE) == expected
    assert schema.parse_history_line(GOOD_LINE + "\r\n") == expected


@pytest.mark.parametrize(
    "line, reason",
    [
        ("id,price,qty,quote_qty,time,is_buyer_maker", schema.HEADER_LINE),
        ("1,2,3", schema.WRONG_COLUMN_COUNT),
        ("", schema.WRONG_COLUMN_COUNT),
        (GOOD_LINE.replace("94123.45000000", "9412x"), schema.NON_NUMERIC),
        (GOOD_LINE.replace("4681335411", "4681335411.5"), schema.NON_NUMERIC),
        (GOOD_LINE.replace(",True,", ",TRUE,"), schema.BAD_BOOLEAN),
        (GOOD_LINE.replace("0.00012000", "0"), schema.BAD_VALUE),
        (GOOD_LINE.replace("0.00012000", "0.000000001"), schema.BAD_VALUE),  # rounds to no unit at all
        (GOOD_LINE.replace("94123.45000000", "inf"), schema.BAD_VALUE),
        (GOOD_LINE.replace("1735689600123456", "-5"), schema.BAD_VALUE),
    ],
)
def test_malformed_history_lines_name_their_reason(line, reason):
    with pytest.raises(schema.MalformedTrade) as raised:
        schema.parse_history_line(line)
    assert raised.value.reason == reason
    assert reason in schema.MALFORMED_REASONS


EVENT = {"e": "trade", "E": 1743465600125, "s": "BTCUSDT", "t": 12345, "p": "84123.45000000",
         "q": "0.00100000", "T": 1743465600123, "m": True, "M": True}  # fmt: skip


def test_a_live_event_parses_alone_or_wrapped_by_a_combined_stream():
    expected = schema.LiveTrade("BTCUSDT", 12345, "84123.45000000", "0.00100000", 1743465600123, 1743465600125, True)
    assert schema.trade_from_event(EVENT) == expected
    assert schema.trade_from_event({"stream": "btcusdt@trade", "data": EVENT}) == expected
    assert schema.trade_from_event({**EVENT, "b": 1, "a": 2, "X": "extra"}) == expected  # unknown keys ignored
    assert schema.trade_from_event({k: v for k, v in EVENT.items() if k != "M"}) == expected  # M is "ignore"


@pytest.mark.parametrize(
    "event, reason",
    [
        ({k: v for k, v in EVENT.items() if k != "p"}, "missing_key"),
        ({**EVENT, "p": "abc"}, schema.NON_NUMERIC),
        ({**EVENT, "q": None}, "missing_key"),  # a JSON null is missing, in the producer as in the Spark job
        ({**EVENT, "m": "true"}, schema.BAD_BOOLEAN),
        ({**EVENT, "e": "aggTrade"}, "not_a_trade"),
        ({**EVENT, "q": "-1"}, schema.BAD_VALUE),
    ],
)
def test_malformed_live_events_name_their_reason(event, reason):
    with pytest.raises(schema.MalformedTrade) as raised:
        schema.trade_from_event(event)
    assert raised.value.reason == reason


def test_influx_trade_points_are_unique_per_trade_and_the_same_from_live_or_history():
    live = schema.trade_point_time_ns(1_743_465_600_123, 4_681_335_411)
    history = schema.trade_point_time_ns(1_743_465_600_123_456, 4_681_335_411)
    assert live == history == 1_743_465_600_123 * 10**6 + 335_411
    assert schema.trade_point_time_ns(1_743_465_600_123, 4_681_335_412) == live + 1


def test_counter_lines_are_hadoop_streaming_reports():
    assert schema.counter_line(schema.TRADES_COUNTER, 42) == "reporter:counter:btc,trades,42\n"


def test_trade_lines_of_a_batch_are_trade_line_for_each_trade():
    import random

    from btc_assets.contracts import points

    rng = random.Random(7)
    columns = ([], [], [], [], [], [])
    for number in range(2_000):
        symbol = ("BTCUSDT", "ETHUSDT", "A B,C=D")[number % 3]  # the last one's tag needs escaping
        time = 1_735_689_600_123 + number * 7 if number % 2 else 1_735_689_600_123_456 + number  # ms and µs
        trade = (symbol, rng.randrange(0, 10**12), round(rng.uniform(1e-8, 2e5), rng.randrange(0, 9)),
                 rng.choice((1e-8, 0.1, 3.0, rng.uniform(1e-8, 1e3))), time, rng.random() < 0.5)
        for column, value in zip(columns, trade):
            column.append(value)
    assert points.trade_lines(*columns) == [points.trade_line(*trade) for trade in zip(*columns)]
    assert points.trade_lines([], [], [], [], [], []) == []

"""The Spark streaming job on the real stack: exactly once into InfluxDB, bars equal MapReduce, faults, DLQ, health."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest

from btc_assets.contracts import bars, schema

from btc_testkit import generator

from btc_assets.clients import kafka as kafka_io
from btc_assets.stream import spark_job
from btc_assets_tests.stream.spark_fixtures import (
    JobProcess,
    MarketSlice,
    StreamCase,
    TradeFeed,
    bar_differences,
    exactly_once_problems,
    expected_bars,
    health_points,
    influx_bars,
    market_slice,
    new_case,
    trade_count,
    trade_messages,
    wait_for,
)

SYMBOLS = ("BTCUSDT", "ETHUSDT")
HEALTH_FIELDS = ("input_rows_per_second", "processed_rows_per_second", "batch_duration_ms", "num_input_rows",
                 "lag", "restarts", "errors")


def _unique() -> str:
    return uuid.uuid4().hex[:10]


def _cleanup(case: StreamCase) -> None:
    for step in case.cleanup:
        try:
            step()
        except Exception:  # noqa: BLE001 - best effort: a leftover bucket only costs disk
            pass


def _wait_until_complete(case: StreamCase, market: MarketSlice, expected: dict, timeout: float,
                         state=lambda: None) -> None:
    """Every trade in Influx and every bar equal to MapReduce's (both are checked exactly afterwards)."""
    wait_for(lambda: trade_count(case.admin) >= market.count, timeout, f"{market.count} trades in InfluxDB",
             state=lambda: (trade_count(case.admin), state()))
    wait_for(lambda: not bar_differences(influx_bars(case.admin), expected), 120, "bars equal to MapReduce",
             state=lambda: (bar_differences(influx_bars(case.admin), expected)[:5], state()))


def _assert_complete(case: StreamCase, market: MarketSlice, expected: dict) -> None:
    assert exactly_once_problems(case.admin, market) == []
    assert bar_differences(influx_bars(case.admin), expected) == []


# --- the bar maths and the validation, without Kafka ------------------------------------------


def test_stream_bars_are_the_batch_bars(spark):
    assert tuple(spark_job.minute_partial_columns()) == bars.PARTIAL_FIELDS
    assert tuple(bars.MinutePartial.of_trade(1, 1, 1, 1, True).bar(0)) == schema.BAR_FIELDS
    day = generator.generate_day("BTCUSDT", "2025-04-01", seed=5, trades=400_000)
    rows = [("BTCUSDT-TRADES", 0, number, b"BTCUSDT", json.dumps(event).encode())
            for number, event in enumerate(generator.live_events(day, 200_000, 208_000))]
    raw = spark.createDataFrame(rows, "topic string, partition int, offset long, key binary, value binary")
    trades = spark_job.valid_trades(spark_job.parse_trades(raw, {"BTCUSDT-TRADES": ("BTCUSDT",)}))
    partials = spark_job.minute_partials(trades).orderBy(schema.MINUTE).toArrow().to_pylist()
    streamed = [bars.finalize(row[schema.MINUTE], spark_job.partial_of(row)) for row in partials]
    history = [trade for number, trade in enumerate(day.trades()) if 200_000 <= number < 208_000]
    assert streamed == bars.bars_from_trades(history)  # the same bytes, not just close


GOOD_EVENT = {"e": "trade", "E": 1743516000125, "s": "BTCUSDT", "t": 4473500000, "p": "84123.45000000",
              "q": "0.00150000", "T": 1743516000123, "m": True, "M": True}


def _event(**changes) -> str:
    event = {key: value for key, value in {**GOOD_EVENT, **changes}.items() if value is not KeyError}
    return json.dumps(event)


# (message, the job's reason); the reason's first part is also what schema.trade_from_event says.
VALIDATION_CASES = [
    (_event(), None),
    (_event(p=84123.45, t="4473500000", X={"extra": [1]}), None),  # numbers as JSON numbers or strings, extra keys
    ("not json", "invalid_json"),
    ('{"e":"trade","p":"1"', "invalid_json"),
    ("", "invalid_json"),
    ("[1, 2]", "invalid_json"),
    ("[" * 5000, "invalid_json"),
    ("{}", "missing_key:e"),
    (_event(p=KeyError), "missing_key:p"),
    (_event(m=KeyError), "missing_key:m"),
    (_event(p=None), "missing_key:p"),  # a JSON null counts as missing
    (_event(e="aggTrade"), "not_a_trade"),
    (_event(p="n/a"), "non_numeric:p"),
    (_event(q=""), "non_numeric:q"),
    (_event(t="id-1"), "non_numeric:t"),
    (_event(T=[1]), "non_numeric:T"),
    (_event(E="soon"), "non_numeric:E"),
    (_event(m="yes"), "bad_boolean:m"),
    (_event(m=1), "bad_boolean:m"),
    (_event(p="-84123.45"), "bad_value:p"),
    (_event(q="0.000000001"), "bad_value:q"),
    (_event(p="1e400"), "bad_value:p"),
    (_event(t=-5), "bad_value:t"),
    (_event(T=0), "bad_value:T"),
    (_event(s="ETHUSDT"), "wrong_symbol"),
]


def test_every_message_gets_a_verdict_and_bad_ones_a_reason(spark):
    raw = spark.createDataFrame(
        [("BTCUSDT-TRADES", 0, number, b"BTCUSDT", message.encode()) for number, (message, _) in
         enumerate(VALIDATION_CASES)] + [("BTCUSDT-TRADES", 0, len(VALIDATION_CASES), b"BTCUSDT", b"\xff\xfe\x00")],
        "topic string, partition int, offset long, key binary, value binary")
    rows = spark_job.parse_trades(raw, {"BTCUSDT-TRADES": ("BTCUSDT",)}).orderBy("offset").collect()
    verdicts = [row["error"] for row in rows]
    assert verdicts == [reason for _, reason in VALIDATION_CASES] + ["invalid_json"]
    first = rows[0]
    assert (first["symbol"], first["trade_id"], first["price"], first["quantity"], first["trade_time"],
            first["is_buyer_maker"]) == ("BTCUSDT", 4473500000, 84123.45, 0.0015, 1743516000123, True)
    assert (first["price_units"], first["quantity_units"], first["quote_units"]) == (
        bars.to_units(84123.45), bars.to_units(0.0015), bars.to_units(84123.45 * 0.0015))
    for message, reason in VALIDATION_CASES:  # the producer's validation agrees, reason by reason
        if reason is None:
            schema.trade_from_event(json.loads(message))
        elif reason not in ("invalid_json", "wrong_symbol"):
            with pytest.raises(schema.MalformedTrade) as raised:
                schema.trade_from_event(json.loads(message))
            assert raised.value.reason == reason.split(":")[0], message


def test_a_combined_stream_wrapper_in_kafka_is_a_dead_letter(spark):
    """Kafka holds the `data` object only (CONTRACTS.md section 2): the producer unwraps, the job does not."""
    wrapped = json.dumps({"stream": "btcusdt@trade", "data": GOOD_EVENT}).encode()
    raw = spark.createDataFrame([("BTCUSDT-TRADES", 0, 0, b"BTCUSDT", wrapped)],
                                "topic string, partition int, offset long, key binary, value binary")
    assert spark_job.parse_trades(raw, {"BTCUSDT-TRADES": ("BTCUSDT",)}).first()["error"] == "missing_key:e"


# --- 50,000 trades through Kafka -> Spark -> InfluxDB ------------------------------------------


@dataclass
class CleanRun:
    case: StreamCase
    market: MarketSlice
    expected: dict
    seconds: float
    stats: dict
    health: list[dict]
    was_running: bool


@pytest.fixture(scope="module")
def clean_run(stack, spark, tmp_path_factory):
    """50,000 trades of two symbols (every 50th sent twice) streamed by the job in this process, then stopped."""
    case = new_case(_unique(), SYMBOLS, max_offsets_per_trigger=20_000)
    try:
        market = market_slice(SYMBOLS, 50_000)
        expected = expected_bars(market, tmp_path_factory.mktemp("mapreduce"))
        job = spark_job.start_job(case.settings, spark)
        try:
            feed = TradeFeed(case.bootstrap, trade_messages(market, case.settings.topic_template, 50)).start()
            _wait_until_complete(case, market, expected, 300, state=lambda: job.stats)
            seconds = time.monotonic() - feed.started_at
            feed.join()
            time.sleep(2.5)  # let a pipeline_health report see the caught-up queries
            was_running = job.is_running
        finally:
            job.stop()
        stats = {name: value.snapshot() for name, value in job.stats.items()}
        print(f"\n50,000 trades (+{len(trade_messages(market, '{symbol}', 50)) - market.count} duplicates) "
              f"Kafka -> InfluxDB in {seconds:.1f}s, queries' warm-up included: {market.count / seconds:,.0f} "
              f"trades/s; {stats}")
        yield CleanRun(case, market, expected, seconds, stats, health_points(case.admin), was_running)
    finally:
        _cleanup(case)


def test_every_trade_exactly_once_in_influx(clean_run):
    assert clean_run.was_running
    assert clean_run.market.count == 50_000
    assert exactly_once_problems(clean_run.case.admin, clean_run.market) == []
    assert clean_run.stats["trades"]["restarts"] == 0 and clean_run.stats["trades"]["dead_letters"] == 0


def test_streamed_bars_equal_mapreduce_bars(clean_run):
    streamed = influx_bars(clean_run.case.admin)
    assert bar_differences(streamed, clean_run.expected) == []
    assert sum(len(minutes) for minutes in clean_run.expected.values()) >= 10
    # Both paths finish the same integer partial with bars.py: equal to the last bit, not only to 1e-9.
    assert streamed == clean_run.expected


def test_pipeline_health_points(clean_run):
    by_component: dict[str, list[dict]] = {}
    for point in clean_run.health:
        by_component.setdefault(point[schema.COMPONENT_TAG], []).append(point)
    assert set(by_component) == {"spark_trades", "spark_bars", "spark_predictions"}
    # The live scorer is on by default; no model is saved under this case's root, so it waits, without errors.
    scorer = by_component.pop("spark_predictions")[-1]
    assert scorer["models"] == 0 and scorer["errors"] == 0 and scorer["rounds"] == 0, scorer
    for component, points in by_component.items():
        assert len(points) >= 3, component
        assert all(all(point.get(name) is not None for name in HEALTH_FIELDS) for point in points[-2:]), component
        last = points[-1]
        assert last["lag"] == 0 and last["restarts"] == 0 and last["errors"] == 0, last
        assert max(point["num_input_rows"] for point in points) > 0
        assert max(point["processed_rows_per_second"] for point in points) > 0
    assert by_component["spark_trades"][-1]["dead_letters"] == 0


# --- garbage: 1% of the messages are not trades ----------------------------------------------


def _garbage(number: int, symbol: str) -> tuple[bytes, str]:
    """A bad message (unique by ``number``) and the reason the job must give for it."""
    event = {**GOOD_EVENT, "s": symbol, "t": 10**12 + number, "n": number}
    kinds = [
        (f"not json {number}".encode(), "invalid_json"),
        (json.dumps({k: v for k, v in event.items() if k != "p"}).encode(), "missing_key:p"),
        (json.dumps({**event, "p": f"n/a-{number}"}).encode(), "non_numeric:p"),
        (json.dumps({**event, "q": ""}).encode(), "non_numeric:q"),
        (json.dumps({**event, "t": f"id-{number}"}).encode(), "non_numeric:t"),
        (json.dumps({**event, "m": "yes"}).encode(), "bad_boolean:m"),
        (json.dumps({**event, "e": "aggTrade"}).encode(), "not_a_trade"),
        (json.dumps({**event, "p": "-1"}).encode(), "bad_value:p"),
        (json.dumps({**event, "s": "DOGEUSDT"}).encode(), "wrong_symbol"),
        (b"\xff\xfe" + number.to_bytes(4, "big"), "invalid_json"),
    ]
    return kinds[number % len(kinds)]


def test_garbage_goes_to_the_dead_letter_topic(stack, spark, tmp_path):
    case = new_case(_unique(), SYMBOLS)
    try:
        market = market_slice(SYMBOLS, 10_000, seed=12)
        expected = expected_bars(market, tmp_path)
        messages = trade_messages(market, case.settings.topic_template)
        garbage = {}
        for number in range(len(messages) // 100):  # 1%: one bad message after every 99 good ones
            symbol = SYMBOLS[number % 2]
            value, reason = _garbage(number, symbol)
            garbage[value] = (symbol, reason)
            messages.insert(number * 100 + 99, (schema.trade_topic(symbol, case.settings.topic_template),
                                                symbol.encode(), value))
        job = spark_job.start_job(case.settings, spark)
        try:
            TradeFeed(case.bootstrap, messages).start().join()
            _wait_until_complete(case, market, expected, 180, state=lambda: job.stats)
            wait_for(lambda: job.stats["trades"].dead_letters >= len(garbage), 60, "dead letters sent")
            assert job.is_running
            stats = {name: value.snapshot() for name, value in job.stats.items()}
        finally:
            job.stop()
        _assert_complete(case, market, expected)
        assert stats["trades"]["restarts"] == 0 and stats["trades"]["dead_letters"] == len(garbage) == 100

        dead = []
        for topic in case.settings.topics:
            consumer = kafka_io.consumer(case.bootstrap, schema.dlq_topic(topic), group_id=None,
                                        consumer_timeout_ms=3_000)
            try:
                dead += [(topic, record) for record in consumer]
            finally:
                consumer.close()
        assert Counter(record.value for _, record in dead) == Counter(list(garbage))  # each once, the original bytes
        for topic, record in dead:
            symbol, reason = garbage[record.value]
            headers = dict(record.headers)
            assert headers[schema.DLQ_ERROR_HEADER].decode() == reason
            assert headers[schema.DLQ_SOURCE_HEADER] == b"spark"
            assert record.key == symbol.encode() and topic == schema.trade_topic(symbol, case.settings.topic_template)
    finally:
        _cleanup(case)


# --- faults mid-stream: each ends with every trade once and the bars still equal ---------------


def test_a_query_that_dies_is_restarted_from_its_checkpoint(stack, spark, tmp_path):
    case = new_case(_unique(), SYMBOLS)
    try:
        market = market_slice(SYMBOLS, 8_000, seed=24)
        expected = expected_bars(market, tmp_path)
        messages = trade_messages(market, case.settings.topic_template)
        TradeFeed(case.bootstrap, messages[:4_000]).start().join()
        job = spark_job.start_job(case.settings, spark)
        try:
            wait_for(lambda: trade_count(case.admin) >= 4_000, 120, "the first trades in InfluxDB")
            for name, sink in job.sinks.items():  # the next write of each query fails for good: the query dies
                def fail_once(chunk, sink=sink, name=name):
                    del sink._write_chunk
                    raise RuntimeError(f"injected failure of {name}")
                sink._write_chunk = fail_once
            TradeFeed(case.bootstrap, messages[4_000:]).start().join()
            _wait_until_complete(case, market, expected, 120, state=lambda: job.stats)
            assert job.is_running
        finally:
            job.stop()
        _assert_complete(case, market, expected)
        for name, stats in job.stats.items():
            assert stats.restarts == 1 and f"injected failure of {name}" in stats.last_error, stats
    finally:
        _cleanup(case)


def _fault_run(stack, spark, tmp_path, fault, *, trades: int, rate: float, seed: int, timeout: float = 240):
    """Feed ``trades`` at ``rate``/s into a job in this process; call ``fault`` once a third is in InfluxDB."""
    case = new_case(_unique(), SYMBOLS)
    try:
        market = market_slice(SYMBOLS, trades, seed=seed)
        expected = expected_bars(market, tmp_path)
        job = spark_job.start_job(case.settings, spark)
        try:
            feed = TradeFeed(case.bootstrap, trade_messages(market, case.settings.topic_template), rate=rate).start()
            wait_for(lambda: trade_count(case.admin) >= trades // 3, 120, "a third of the trades in InfluxDB")
            began = time.monotonic()
            fault()
            feed.join(timeout)
            _wait_until_complete(case, market, expected, timeout, state=lambda: job.stats)
            print(f"\nrecovered {time.monotonic() - began:.0f}s after the fault began; "
                  f"feed resent {feed.resent}; {[stats.snapshot() for stats in job.stats.values()]}")
            assert job.is_running
        finally:
            job.stop()
        _assert_complete(case, market, expected)
        return job
    finally:
        _cleanup(case)


def test_kafka_broker_killed_and_restarted_mid_stream(stack, spark, tmp_path):
    broker = stack.services["kafka"]

    def kill_broker():
        broker.stop(kill=True)  # SIGKILL: no controlled shutdown
        time.sleep(3)
        broker.start()

    _fault_run(stack, spark, tmp_path, kill_broker, trades=20_000, rate=1_000, seed=21)


def test_influxdb_stopped_for_30_seconds(stack, spark, tmp_path):
    influxdb = stack.services["influxdb"]

    def stop_influx():
        influxdb.stop()
        time.sleep(30)
        influxdb.start()

    job = _fault_run(stack, spark, tmp_path, stop_influx, trades=20_000, rate=1_000, seed=22)
    assert job.stats["trades"].errors > 0  # the outage was seen and waited out, not missed


def test_spark_job_stopped_killed_and_restarted(stack, tmp_path):
    """The standalone job: SIGTERM (clean stop), then SIGKILL of driver and JVM mid-stream; each restart resumes."""
    case = new_case(_unique(), SYMBOLS)
    runs: list[JobProcess] = []

    def run_job() -> JobProcess:
        runs.append(JobProcess(case.env(), tmp_path / "spark-job.log").start())
        return runs[-1]

    def wait_count(count: int, what: str) -> None:
        wait_for(lambda: trade_count(case.admin) >= count, 120, what, state=runs[-1].log_tail)

    try:
        trades = 20_000
        market = market_slice(SYMBOLS, trades, seed=23)
        expected = expected_bars(market, tmp_path)
        messages = trade_messages(market, case.settings.topic_template)
        first, second, third = messages[:6_000], messages[6_000:12_000], messages[12_000:]
        TradeFeed(case.bootstrap, first).start().join()
        job = run_job()
        wait_count(3_000, "the first trades in InfluxDB")
        feed = TradeFeed(case.bootstrap, second, rate=400).start()  # trades keep coming while the job is down
        assert job.terminate() == 0, job.log_tail()  # SIGTERM: the running micro-batches finish, then exit 0
        assert "stopped cleanly" in job.log_tail()
        job = run_job()
        wait_count(8_000, "trades after the first restart")
        feed.join()
        # The feed holds after 4,000 of the third part, so the kill always comes before the rest is sent (the rest
        # then arrives while the killed job's successor starts).
        feed = TradeFeed(case.bootstrap, third, rate=600, hold_at=4_000).start()
        wait_count(13_500, "trades of the third part")
        job.kill()  # SIGKILL to the driver and its JVM, mid-stream and as likely as not mid-batch
        feed.release()
        job = run_job()
        wait_for(lambda: job.log_text().count("query spark_bars running") >= 3, 120, "the third run's queries",
                 state=job.log_tail)
        feed.join()
        _wait_until_complete(case, market, expected, 180, state=job.log_tail)
        assert job.process.poll() is None, job.log_tail()
        assert job.terminate() == 0, job.log_tail()
        _assert_complete(case, market, expected)
    finally:
        for run in runs:
            run.kill()
        _cleanup(case)

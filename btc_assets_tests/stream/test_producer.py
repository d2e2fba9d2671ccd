"""The WebSocket -> Kafka producer against the Binance emulator and a real Kafka: every trade exactly once, whatever the feed does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from btc_assets.clients import kafka as kafka_io
from btc_assets.contracts import schema
from btc_localstack.base import REPO_ROOT
from btc_testkit.binance_emulator import BinanceEmulator

from .helpers import produce_all, producer_settings, read_topic, running_producer, trade_ids, wait_for


@pytest.mark.parametrize("client", kafka_io.PRODUCER_CLIENTS)  # kafka-python, and librdkafka
def test_every_trade_once_in_id_order_as_sent(kafka_bootstrap, topic_template, client):
    symbols = ("BTCUSDT", "ETHUSDT")
    with BinanceEmulator(symbols, trades=10_000, rate=0, seed=1) as binance:  # 20,000 trades, as fast as read
        settings = producer_settings(binance, kafka_bootstrap, topic_template, kafka_client=client)
        stats = produce_all(binance, settings, 20_000)
        for symbol in symbols:
            records = read_topic(kafka_bootstrap, schema.trade_topic(symbol, topic_template))
            assert trade_ids(records) == binance.generated_ids(symbol)  # each once, in id order, no gap
            assert {record.key for record in records} == {symbol.encode()}
            assert len({record.partition for record in records}) == 1  # one key: one partition, one order
            sent = binance.sent_payloads(symbol)
            assert all(record.value == sent[trade_id] for record, trade_id in zip(records, trade_ids(records)))
            assert stats["last_trade_id"][symbol] == binance.generated_ids(symbol)[-1]
    assert stats["produced"] == 20_000
    assert stats["backfilled"] == stats["duplicates_dropped"] == stats["malformed"] == stats["reconnects"] == 0


def test_three_drops_with_skipped_ids_are_backfilled(kafka_bootstrap, topic_template):
    with BinanceEmulator(("BTCUSDT",), trades=12_000, rate=4_000, seed=2) as binance:
        with running_producer(producer_settings(binance, kafka_bootstrap, topic_template)) as producer:
            for round_number, skipped in enumerate((17, 250, 1_500)):
                binance.wait_sent(2_000 * (round_number + 1))
                if round_number == 0:  # the HTTP control endpoint does the same as the methods
                    requests.post(f"{binance.base_url}/control/skip?n={skipped}", timeout=5).raise_for_status()
                    requests.post(f"{binance.base_url}/control/drop", timeout=5).raise_for_status()
                else:
                    binance.skip(skipped)
                    binance.drop()
                binance.wait_until(lambda: binance.connections == round_number + 2, what="a reconnect")
            binance.wait_until_done()
            wait_for(lambda: producer.stats()["last_trade_id"].get("BTCUSDT") == binance.generated_ids("BTCUSDT")[-1])
        stats = producer.stats()
    records = read_topic(kafka_bootstrap, schema.trade_topic("BTCUSDT", topic_template))
    assert trade_ids(records) == binance.generated_ids("BTCUSDT")
    assert len(binance.skipped_ids("BTCUSDT")) == 17 + 250 + 1_500
    assert stats["reconnects"] == 3
    # Every skipped id came from REST; so may a few trades the emulator had written to a socket it
    # then dropped (they never reached the producer): still each id exactly once, checked above.
    assert stats["backfilled"] >= 17 + 250 + 1_500
    assert stats["produced"] == 12_000
    assert stats["gaps_unfilled"] == stats["duplicates_dropped"] == 0
    skipped = binance.skipped_ids("BTCUSDT")[0]
    backfilled = json.loads(records[trade_ids(records).index(skipped)].value)
    original = binance.event("BTCUSDT", skipped)
    assert backfilled == {**original, schema.EVENT_TIME: original[schema.EVENT_TRADE_TIME]}  # REST: E = T


@pytest.mark.parametrize("client", kafka_io.PRODUCER_CLIENTS)  # kafka-python, and librdkafka
def test_a_full_queue_holds_the_feed_back_and_loses_nothing(kafka_bootstrap, topic_template, client):
    with BinanceEmulator(("BTCUSDT",), trades=5_000, rate=0, seed=11) as binance:
        stats = produce_all(binance, producer_settings(binance, kafka_bootstrap, topic_template, kafka_client=client,
                                                         queue_size=20), 5_000)
    assert stats["backpressure_waits"] > 0
    records = read_topic(kafka_bootstrap, schema.trade_topic("BTCUSDT", topic_template))
    assert trade_ids(records) == binance.generated_ids("BTCUSDT")


@pytest.mark.parametrize("client", kafka_io.PRODUCER_CLIENTS)  # kafka-python, and librdkafka
def test_a_restarted_producer_resumes_after_the_last_trade_in_kafka(kafka_bootstrap, topic_template, client):
    with BinanceEmulator(("BTCUSDT",), trades=6_000, rate=3_000, seed=8) as binance:
        settings = producer_settings(binance, kafka_bootstrap, topic_template, kafka_client=client)
        with running_producer(settings) as first:
            binance.wait_sent(2_000)
        binance.skip(30)  # traded while no producer ran: only REST can give these back
        with running_producer(settings) as second:
            binance.wait_until_done()
            last_id = binance.generated_ids("BTCUSDT")[-1]
            wait_for(lambda: second.stats()["last_trade_id"].get("BTCUSDT") == last_id)
    records = read_topic(kafka_bootstrap, schema.trade_topic("BTCUSDT", topic_template))
    assert trade_ids(records) == binance.generated_ids("BTCUSDT")
    # The 30 skipped ids come only from REST; so do trades in flight when the first producer closed its socket
    # (on a loaded machine a few were sent but never read): all of them once, none twice.
    assert second.stats()["backfilled"] >= 30 and second.stats()["duplicates_dropped"] == 0
    assert first.stats()["produced"] + second.stats()["produced"] == 6_000


@pytest.mark.parametrize("client", kafka_io.PRODUCER_CLIENTS)  # kafka-python, and librdkafka
def test_garbage_goes_to_the_dead_letter_topic(kafka_bootstrap, topic_template, client):
    with BinanceEmulator(("BTCUSDT",), trades=10_000, rate=0, seed=3, garbage_ratio=0.01) as binance:
        settings = producer_settings(binance, kafka_bootstrap, topic_template, kafka_client=client)
        with running_producer(settings) as producer:
            binance.wait_until_done()
            expected = 10_000 + len(binance.garbage_sent)
            wait_for(lambda: producer.stats()["produced"] + producer.stats()["malformed"] == expected,
                     state=lambda: (producer.stats(), binance.stats()))
        stats = producer.stats()
    topic = schema.trade_topic("BTCUSDT", topic_template)
    assert trade_ids(read_topic(kafka_bootstrap, topic)) == binance.generated_ids("BTCUSDT")
    dead_letters = read_topic(kafka_bootstrap, schema.dlq_topic(topic))
    assert 50 <= len(binance.garbage_sent) <= 200  # about 1% of 10,000
    assert [record.value for record in dead_letters] == binance.garbage_sent  # as received, in order
    assert stats["malformed"] == len(binance.garbage_sent)
    reasons = set()
    for record in dead_letters:
        headers = dict(record.headers)
        assert headers[schema.DLQ_SOURCE_HEADER] == b"producer"
        reasons.add(headers[schema.DLQ_ERROR_HEADER].decode().split(":")[0])
    assert reasons == {"invalid_json", "missing_key", "non_numeric"}


@pytest.mark.parametrize("client", kafka_io.PRODUCER_CLIENTS)  # kafka-python, and librdkafka
def test_the_broker_killed_mid_stream_and_restarted_loses_and_repeats_nothing(stack, topic_template, client):
    """The suite's broker SIGKILLed while trades stream in, started again 5 s later: the producer holds the feed
    back (its queue, then the socket), its client retries what was in flight (idempotent: no copy), and every
    trade is in Kafka once, in id order; nothing is counted as refused."""
    broker = stack.services["kafka"]
    with BinanceEmulator(("BTCUSDT",), trades=16_000, rate=2_000, seed=41) as binance:
        settings = producer_settings(binance, broker.bootstrap_servers, topic_template, kafka_client=client)
        with running_producer(settings) as producer:
            binance.wait_sent(4_000)
            broker.stop(kill=True)  # no controlled shutdown: in-flight batches get no answer
            time.sleep(5)
            broker.start()
            binance.wait_until_done()
            last_id = binance.generated_ids("BTCUSDT")[-1]
            wait_for(lambda: producer.stats()["last_trade_id"].get("BTCUSDT") == last_id, timeout=180,
                     what="the producer caught up", state=producer.stats)
        stats = producer.stats()
    records = read_topic(broker.bootstrap_servers, schema.trade_topic("BTCUSDT", topic_template))
    assert trade_ids(records) == binance.generated_ids("BTCUSDT")  # each once, in id order, no gap
    assert stats["send_errors"] == 0 and stats["gaps_unfilled"] == 0, stats


def test_pings_answered_and_server_shutdown_moves_to_a_new_connection(kafka_bootstrap, topic_template):
    with BinanceEmulator(("BTCUSDT", "ETHUSDT"), trades=4_000, rate=2_500, seed=4, ping_interval=0.25,
                         ping_payload=b"are-you-there") as binance:
        with running_producer(producer_settings(binance, kafka_bootstrap, topic_template)) as producer:
            binance.wait_sent(3_000)
            assert binance.server_shutdown() == 1
            binance.wait_until(lambda: binance.connections == 2, what="a new connection after serverShutdown")
            binance.wait_until_done()
            wait_for(lambda: producer.stats()["produced"] == 8_000)
            binance.stop_pings()
            binance.wait_until(lambda: len(binance.pongs_received) == len(binance.pings_sent), timeout=5,
                               what="a pong for every ping")
            pings, pongs, answered = list(binance.pings_sent), list(binance.pongs_received), producer.stats()["pings"]
        stats = producer.stats()
    assert len(pings) >= 4
    assert pongs == pings  # every ping answered, with its own payload
    assert all(payload.startswith(b"are-you-there-") for payload in pongs)
    assert answered == len(pings)
    assert stats["reconnects"] == 1
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert trade_ids(read_topic(kafka_bootstrap, schema.trade_topic(symbol, topic_template))) == \
            binance.generated_ids(symbol)


def test_connection_renewed_before_its_age_limit_without_loss(kafka_bootstrap, topic_template):
    with BinanceEmulator(("BTCUSDT",), trades=6_000, rate=2_000, seed=5) as binance:
        settings = producer_settings(binance, kafka_bootstrap, topic_template, max_connection_age_s=1.0)
        stats = produce_all(binance, settings, 6_000)
    assert stats["reconnects"] >= 1 and binance.connections == stats["reconnects"] + 1
    records = read_topic(kafka_bootstrap, schema.trade_topic("BTCUSDT", topic_template))
    assert trade_ids(records) == binance.generated_ids("BTCUSDT")


def test_rest_outage_leaves_a_counted_gap_and_the_stream_goes_on(kafka_bootstrap, topic_template):
    with BinanceEmulator(("BTCUSDT",), trades=6_000, rate=3_000, seed=6) as binance:
        with running_producer(producer_settings(binance, kafka_bootstrap, topic_template)) as producer:
            binance.wait_sent(1_000)
            binance.set_rest_status(503)
            binance.skip(25)
            wait_for(lambda: producer.stats()["gaps_unfilled"] == 1, what="the gap reported as unfilled")
            binance.set_rest_status(200)
            binance.wait_until_done()
            wait_for(lambda: producer.stats()["produced"] == 6_000 - 25)
            assert producer.feed.running
        stats = producer.stats()
    skipped = set(binance.skipped_ids("BTCUSDT"))
    assert len(skipped) == 25
    records = read_topic(kafka_bootstrap, schema.trade_topic("BTCUSDT", topic_template))
    assert trade_ids(records) == [trade_id for trade_id in binance.generated_ids("BTCUSDT") if trade_id not in skipped]
    assert stats["trades_unfilled"] == 25 and stats["backfilled"] == 0
    assert binance.stats()["rest_calls"] == 1 + 2  # the first try and two retries


def test_sigterm_drains_everything_sent_and_exits_zero(kafka_bootstrap, topic_template):
    with BinanceEmulator(("BTCUSDT",), rate=8_000, seed=7) as binance:  # endless
        command = [sys.executable, "-m", "btc_assets.stream.producer", "--symbols", "BTCUSDT",
                   "--ws-url", binance.ws_url, "--rest-url", binance.base_url,
                   "--bootstrap-servers", kafka_bootstrap, "--topic-template", topic_template,
                   "--stats-interval", "1", "--queue-size", "5000"]
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env={**os.environ, "BTC_PROFILE": "cluster"})
        try:
            binance.wait_until(lambda: binance.connections == 1, timeout=60, what="the producer connected")
            time.sleep(3)
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 0, output.decode()[-3000:]
        binance.wait_until(lambda: binance.open_connections == 0, what="the producer's connection closed")
        sent = binance.sent_ids("BTCUSDT")
    records = read_topic(kafka_bootstrap, schema.trade_topic("BTCUSDT", topic_template))
    assert trade_ids(records) == sent  # nothing lost, nothing twice
    # The market is endless: a batch it made while the producer's connection was closing went to no one. What it
    # sent is everything it made up to there, with no gap (the trades after it are the next producer's to fetch).
    made = binance.generated_ids("BTCUSDT")
    assert sent and sent == made[:len(sent)]
    log = output.decode()
    assert "SIGTERM received" in log and f"stopped: produced={len(sent)} " in log
    rates = [int(rate) for rate in re.findall(r"rate=(\d+)/s", log)]
    assert rates, log[-3000:]
    print(f"\nproducer subprocess into Kafka, trades/s in each stats interval: {rates} ({len(sent):,} in all)")

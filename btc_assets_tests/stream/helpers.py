"""Helpers for the live path's tests: a producer on the emulator, waiting, reading topics back."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Callable, Iterator

from btc_assets import config
from btc_assets.clients import kafka as kafka_io

from btc_assets.contracts import schema
from btc_assets.stream.producer import ProducerSettings, TradeProducerService


def producer_settings(binance, bootstrap: str, template: str, **overrides) -> ProducerSettings:
    """Settings for a producer reading the emulator, with timings shortened for tests; its Kafka client is the
    configured one (``BTC_KAFKA_PRODUCER_CLIENT``), so the suite runs with either."""
    settings = dict(symbols=list(binance.symbols), ws_url=binance.ws_url, rest_url=binance.base_url,
                    kafka_client=config.get("BTC_KAFKA_PRODUCER_CLIENT"),
                    bootstrap_servers=bootstrap, topic_template=template, stats_interval_s=1.0,
                    backoff_min_s=0.2, backoff_max_s=2.0, healthy_after_s=0.5, rest_retries=2,
                    rest_retry_delay_s=0.1)
    settings.update(overrides)
    return ProducerSettings(**settings)


@contextlib.contextmanager
def running_producer(settings: ProducerSettings) -> Iterator[TradeProducerService]:
    """The producer service in this process (its feed and sink threads), stopped cleanly on exit."""
    service = TradeProducerService(settings)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def produce_all(binance, settings: ProducerSettings, produced: int) -> dict:
    """Run a producer until the emulator's market is done and ``produced`` trades went to Kafka; its last stats."""
    with running_producer(settings) as producer:
        binance.wait_until_done()
        wait_for(lambda: producer.stats()["produced"] == produced, what=f"{produced} trades produced",
                 state=producer.stats)
    return producer.stats()


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "condition",
             state: Callable[[], object] | None = None, interval: float = 0.02):
    """Poll ``condition`` until it returns something true, and return that; on timeout the error shows ``state()``
    (e.g. the producer's stats)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout:.0f}s" + (f"; state: {state()}" if state else ""))
        time.sleep(interval)
    return value


def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of ``topic`` (all partitions), each partition in offset order."""
    expected = sum(kafka_io.end_offsets(bootstrap, topic).values())
    consumer = kafka_io.consumer(bootstrap, topic, group_id=None, consumer_timeout_ms=10_000)
    records = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) >= expected:
                break
    finally:
        consumer.close()
    return records


def trade_ids(records: list) -> list[int]:
    """The trade ids of trade topic records, in the order read."""
    return [json.loads(record.value)[schema.EVENT_TRADE_ID] for record in records]

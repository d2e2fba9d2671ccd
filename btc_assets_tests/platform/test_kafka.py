"""Kafka on the local stack: a 3-partition topic, 10,000 messages through the resource, durable across restarts."""

from __future__ import annotations

import time

from btc_assets.clients import kafka as kafka_io

MESSAGES = 10_000


def consume_all(kafka, topic: str, expected: int, timeout_s: float = 120.0) -> list[bytes]:
    """Read the topic from the start until ``expected`` records arrived (or the deadline passed).

    Right after a broker restart its partitions may still be electing leaders, so one short poll
    could see nothing; keep polling rather than conclude the data is gone.
    """
    consumer = kafka.consumer(topic, group_id=None, consumer_timeout_ms=1_000)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1_000).values():
                values.extend(record.value for record in records)
        return values
    finally:
        consumer.close()


def test_produce_consume_and_survive_restarts(stack, resources, unique):
    kafka = resources["kafka"]
    topic = f"platform-test-{unique}"
    assert kafka.ensure_trade_topics([topic]) == [topic, f"{topic}.dlq"]
    assert kafka.ensure_trade_topics([topic]) == []  # idempotent
    assert kafka_io.partition_count(kafka.bootstrap_servers, topic) == kafka.partitions == 3

    producer = kafka.producer()
    for number in range(MESSAGES):
        producer.send(topic, key=str(number % 97).encode(), value=f"message-{number}".encode())
    producer.flush()
    producer.close()

    expected = {f"message-{number}".encode() for number in range(MESSAGES)}
    first = consume_all(kafka, topic, MESSAGES)
    assert len(first) == MESSAGES and set(first) == expected
    assert sum(kafka.end_offsets(topic).values()) == MESSAGES

    broker = stack.services["kafka"]
    broker.stop()
    assert not broker.is_running()
    broker.start()
    assert set(consume_all(kafka, topic, MESSAGES)) == expected

    broker.stop(kill=True)  # an unclean stop: the log must recover
    broker.start()
    after_kill = consume_all(kafka, topic, MESSAGES)
    assert len(after_kill) == MESSAGES and set(after_kill) == expected

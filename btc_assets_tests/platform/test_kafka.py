"""Kafka on the local stack: a 3-partition topic, 10,000 messages through the resource, durable across restarts."""

from __future__ import annotations

import time

import pytest

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


@pytest.mark.parametrize("client", kafka_io.PRODUCER_CLIENTS)  # kafka-python, and librdkafka's shared callback
def test_a_refused_record_is_reported_once_and_the_others_land(stack, resources, unique, client):
    """A record over the producer's size limit (a 1.5 MB garbage message on its way to a DLQ, say) is refused:
    the refusal hook gets that record's topic and value, exactly once; the records sent around it are written."""
    kafka = resources["kafka"]
    topic = f"refusals-{client}-{unique}"
    kafka_io.ensure_topic(kafka.bootstrap_servers, topic, partitions=1)
    refused: list[tuple[Exception, str, bytes]] = []
    values = [f"small-{number}".encode() for number in range(200)]
    too_large = b"x" * 1_500_000

    def on_refused(error: Exception, where: str, value: bytes) -> None:
        refused.append((error, where, value))

    producer = kafka_io.producer(kafka.bootstrap_servers, client=client, client_id=f"refusals-{unique}")
    try:
        for number, value in enumerate(values):
            kafka_io.send_reported(producer, topic, b"k", value, None, on_refused)
            if number == 100:
                kafka_io.send_reported(producer, topic, b"k", too_large, None, on_refused)
        producer.flush()
    finally:
        producer.close()
    assert [(where, len(value)) for _, where, value in refused] == [(topic, len(too_large))], refused
    assert "TOO_LARGE" in repr(refused[0][0]).upper().replace("SIZETOOLARGE", "SIZE_TOO_LARGE"), refused[0][0]
    assert consume_all(kafka, topic, len(values)) == values  # the refused one is not among them


def test_kafka_python_flush_waits_for_a_batch_the_broker_split(stack, resources, unique):
    """A topic whose max.message.bytes is below the producer's batch size: the broker refuses the batch as too
    large, kafka-python splits it and sends the halves, and ``flush`` waits for them (kafka-python's own flush
    raised 'Future not done' here); every record lands once, in order."""
    kafka = resources["kafka"]
    topic = f"split-batches-{unique}"
    kafka_io.ensure_topic(kafka.bootstrap_servers, topic, partitions=1, config={"max.message.bytes": "2048"})
    refused: list[Exception] = []
    values = [f"small-{number}".encode() for number in range(300)]

    def on_refused(error: Exception, *_) -> None:
        refused.append(error)

    producer = kafka_io.producer(kafka.bootstrap_servers, client_id=f"split-{unique}")
    try:
        for value in values:
            kafka_io.send_reported(producer, topic, b"k", value, None, on_refused)
        producer.flush()
    finally:
        producer.close()
    assert refused == []
    assert consume_all(kafka, topic, len(values)) == values

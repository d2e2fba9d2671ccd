"""Kafka on the local stack: a 3-partition topic, 10,000 messages through the resource, durable across restarts."""

from __future__ import annotations

from btc_assets.lib import kafka_io

MESSAGES = 10_000


def consume_all(kafka, topic: str) -> list[bytes]:
    consumer = kafka.consumer(topic, group_id=None, consumer_timeout_ms=5_000)
    try:
        return [record.value for record in consumer]
    finally:
        consumer.close()


def test_produce_consume_and_survive_restarts(stack, resources, unique):
    kafka = resources["kafka"]
    topic = f"platform-test-{unique}"
    assert kafka.ensure_topic(topic, partitions=3) is True
    assert kafka.ensure_topic(topic, partitions=3) is False  # idempotent
    assert kafka_io.partition_count(kafka.bootstrap_servers, topic) == 3

    producer = kafka.producer()
    for number in range(MESSAGES):
        producer.send(topic, key=str(number % 97).encode(), value=f"message-{number}".encode())
    producer.flush()
    producer.close()

    expected = {f"message-{number}".encode() for number in range(MESSAGES)}
    first = consume_all(kafka, topic)
    assert len(first) == MESSAGES and set(first) == expected
    assert sum(kafka.end_offsets(topic).values()) == MESSAGES

    broker = stack.services["kafka"]
    broker.stop()
    assert not broker.is_running()
    broker.start()
    assert set(consume_all(kafka, topic)) == expected

    broker.stop(kill=True)  # an unclean stop: the log must recover
    broker.start()
    after_kill = consume_all(kafka, topic)
    assert len(after_kill) == MESSAGES and set(after_kill) == expected

"""Kafka access for the pipeline: topics, a safe producer, consumers and end offsets.

The producer is idempotent with ``acks=all`` so a retried batch never duplicates a trade in the
raw log, and batches with a short linger for throughput.
"""

from __future__ import annotations

import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError


def admin(bootstrap_servers: str, **overrides) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="btc-pipeline-admin", **overrides)


def ensure_topics(bootstrap_servers: str, names, *, partitions: int, replication: int = 1,
                  config: dict[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet, with one admin connection; return the names created."""
    client = admin(bootstrap_servers)
    try:
        existing = set(client.list_topics())
        created = []
        for name in dict.fromkeys(names):
            if name in existing:
                continue
            try:
                client.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication,
                                               topic_configs=config or {})])
                created.append(name)
            except TopicAlreadyExistsError:  # created meanwhile by another component
                pass
        return created
    finally:
        client.close()


def ensure_topic(bootstrap_servers: str, name: str, *, partitions: int, replication: int = 1,
                 config: dict[str, str] | None = None) -> bool:
    """Create the topic if it does not exist; return True if it was created."""
    return bool(ensure_topics(bootstrap_servers, [name], partitions=partitions, replication=replication, config=config))


def delete_topics(bootstrap_servers: str, names, *, timeout_s: float = 60.0) -> list[str]:
    """Delete the topics that exist and wait until the broker no longer lists them; return the names deleted."""
    client = admin(bootstrap_servers)
    try:
        doomed = [name for name in dict.fromkeys(names) if name in set(client.list_topics())]
        if doomed:
            client.delete_topics(doomed, timeout_ms=int(timeout_s * 1000))
        deadline = time.monotonic() + timeout_s
        while doomed and set(doomed) & set(client.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka still lists {sorted(set(doomed) & set(client.list_topics()))} "
                                   f"{timeout_s:.0f}s after deleting them")
            time.sleep(0.5)
        return doomed
    finally:
        client.close()


def trade_topic_config(replication: int) -> dict[str, str]:
    """A replicated topic takes a write (acks=all) while one replica is down, never with only one left:
    ``min.insync.replicas`` = replication - 1 (2 of 3), 1 without replication."""
    return {"min.insync.replicas": str(max(1, replication - 1))}


def ensure_trade_topics(bootstrap_servers: str, topics, *, partitions: int, replication: int = 1,
                        wait_seconds: float = 0.0, should_stop=lambda: False, log=None) -> list[str]:
    """Every trade topic and its dead-letter topic (``schema.dlq_topic``), created if missing: the one place
    the pipeline creates topics (the producer, the Spark job and the ``trade_topics`` asset all call it).

    ``wait_seconds``: keep retrying this long while Kafka is not reachable yet (a service starting beside
    its broker). Returns the names of the topics created.
    """
    from btc_assets.contracts.schema import dlq_topic

    names = [name for topic in topics for name in (topic, dlq_topic(topic))]
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return ensure_topics(bootstrap_servers, names, partitions=partitions, replication=replication,
                                 config=trade_topic_config(replication))
        except KafkaError as error:
            if time.monotonic() >= deadline or should_stop():
                raise
            if log is not None:
                log(f"Kafka not ready for topic creation ({error}); retrying")
            time.sleep(2)


def partition_count(bootstrap_servers: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def producer(bootstrap_servers: str, **overrides) -> KafkaProducer:
    settings = dict(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True,
                    linger_ms=20, batch_size=256 * 1024, retries=2**31 - 1,
                    max_in_flight_requests_per_connection=5, client_id="btc-pipeline-producer")
    settings.update(overrides)
    return KafkaProducer(**settings)


def consumer(bootstrap_servers: str, *topics: str, **overrides) -> KafkaConsumer:
    settings = dict(bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest",
                    enable_auto_commit=False, consumer_timeout_ms=10_000)
    settings.update(overrides)
    return KafkaConsumer(*topics, **settings)


def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """Log-end offset of each partition of ``topic`` (the number of records ever written to it)."""
    client = KafkaConsumer(bootstrap_servers=bootstrap_servers)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(client.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in client.end_offsets(partitions).items()}
    finally:
        client.close()

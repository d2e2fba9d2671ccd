"""The cluster topology's Kafka: 3 KRaft nodes (each a broker and a controller voter) on one machine.

Trade topics are replicated 3 times with min.insync.replicas=2; the producer writes with acks=all
(idempotent). The broker leading a trade partition is SIGKILLed mid-stream and restarted 30 s later:
every acknowledged message is there exactly once, and the test reports the longest time without an
acknowledgement during the failover.
"""

from __future__ import annotations

import threading
import time

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from btc_assets.clients import kafka as kafka_io
from btc_assets.contracts import schema
from btc_assets_tests.cluster.conftest import running, cluster_paths

BASE_PORT = 39092  # nodes on 39092/39093, 39094/39095, 39096/39097 (never a user's 29092 cluster topology)
RATE = 1_000  # messages per second while the leader is killed
RESTART_AFTER_S = 30  # long enough for the partitions to move to the survivors and the producer to follow


@pytest.fixture(scope="module")
def cluster():
    from btc_localstack.kafka import KafkaCluster

    yield from running(KafkaCluster(cluster_paths(), nodes=3, base_port=BASE_PORT))


def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    client = kafka_io.admin(bootstrap)
    try:
        (description,) = client.describe_topics([topic])
        return next(p["leader_id"] for p in description["partitions"] if p["partition_index"] == partition)
    finally:
        client.close()


def test_three_brokers_replicate_and_survive_the_leader_killed(cluster, unique):
    bootstrap = cluster.bootstrap_servers
    assert len(bootstrap.split(",")) == 3
    topic = f"cluster-{unique}"
    kafka_io.ensure_trade_topics(bootstrap, [topic], partitions=3, replication=cluster.nodes[0].replication)
    client = kafka_io.admin(bootstrap)
    try:
        (description,) = client.describe_topics([topic])
        assert all(len(p["replica_nodes"]) == 3 and len(p["isr_nodes"]) == 3 for p in description["partitions"])
        configs = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        (by_name,) = [entries for kind in configs.values() for entries in kind.values()]
        assert by_name["min.insync.replicas"]["value"] == "2", by_name
        brokers = {b["broker_id"] for b in client.describe_cluster()["brokers"]}
        assert brokers == {1, 2, 3}
    finally:
        client.close()
    assert schema.dlq_topic(topic)  # its dead-letter topic came with it

    producer = kafka_io.producer(bootstrap)  # acks=all, idempotent: the project's producer settings
    acked: list[tuple[float, int]] = []
    failed: list[BaseException] = []
    stop = threading.Event()

    def feed():
        number = 0
        while not stop.is_set():
            started = time.monotonic()
            for _ in range(RATE // 10):
                future = producer.send(topic, key=str(number % 7).encode(), value=str(number).encode())
                future.add_callback(lambda _meta, n=number: acked.append((time.monotonic(), n)))
                future.add_errback(failed.append)
                number += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    time.sleep(5)
    victim = cluster.node(leader_of(bootstrap, topic, 0))
    killed_at = time.monotonic()
    victim.process.stop(kill=True)
    time.sleep(RESTART_AFTER_S)
    victim.start()
    time.sleep(5)
    stop.set()
    thread.join()
    producer.flush(timeout=120)
    producer.close()
    assert not failed, failed[:3]

    times = sorted(t for t, _ in acked if t >= killed_at - 1)
    longest_gap = max(b - a for a, b in zip(times, times[1:]))
    print(f"\n[kafka cluster] node {victim.node_id} (leader of partition 0) SIGKILLed, restarted after "
          f"{RESTART_AFTER_S}s; {len(acked):,} messages acknowledged; longest time without an ack: {longest_gap:.1f}s")
    assert longest_gap < RESTART_AFTER_S, "the producer stalled until the killed broker came back"

    sent = {n for _, n in acked}
    consumer = kafka_io.consumer(bootstrap, topic, consumer_timeout_ms=5_000)
    values = []
    deadline = time.monotonic() + 120
    while len(values) < len(sent) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1_000).values():
            values.extend(int(record.value) for record in records)
    consumer.close()
    assert len(values) == len(set(values)) == len(sent), (len(values), len(set(values)), len(sent))
    assert set(values) == sent
    # The restarted node caught up: every partition back to 3 in-sync replicas.
    client = kafka_io.admin(bootstrap)
    try:
        deadline = time.monotonic() + 60
        while True:
            (description,) = client.describe_topics([topic])
            if all(len(p["isr_nodes"]) == 3 for p in description["partitions"]) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert all(len(p["isr_nodes"]) == 3 for p in description["partitions"]), description
    finally:
        client.close()

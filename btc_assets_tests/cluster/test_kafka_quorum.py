"""Stopping the cluster topology's Kafka quorum: every node shuts down cleanly, none waits for a quorum that is gone."""

from __future__ import annotations

from btc_localstack.base import StackPaths

BASE_PORT = 24192  # a quorum of its own, beside the session's on 24092..


def test_a_stopped_quorum_shuts_every_node_down_cleanly(tmp_path):
    from btc_localstack.kafka import KafkaCluster

    cluster = KafkaCluster(StackPaths(cache_dir=StackPaths.from_env().cache_dir, state_dir=tmp_path), nodes=3,
                           base_port=BASE_PORT)
    cluster.provision()
    cluster.start()
    try:
        assert cluster.is_running()
    finally:
        cluster.stop()
    assert not any(node.is_running() for node in cluster.nodes)
    # Kafka writes this marker only at the end of a clean shutdown: a node SIGKILLed after the stop timeout
    # (the last of a quorum stopped one node at a time) has none and recovers its logs at the next start.
    assert [(node.data_dir / ".kafka_cleanshutdown").exists() for node in cluster.nodes] == [True, True, True]

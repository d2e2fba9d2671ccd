"""The cluster topology's wiring, without starting it: every daemon's ports distinct, and the env file pointing
the pipeline at the topology (BTC_PROFILE=cluster, YARN, the standalone master, 3 Kafka nodes)."""

from __future__ import annotations

import pytest

from btc_assets_tests.cluster.conftest import HADOOP_BASE_PORT
from btc_localstack.base import StackError, StackPaths
from btc_localstack.hadoop import HadoopService, HadoopTopology
from btc_localstack.manager import LocalStack


def test_every_daemon_of_the_cluster_topology_has_ports_of_its_own(tmp_path):
    hadoop = HadoopService(StackPaths(cache_dir=tmp_path / "cache", state_dir=tmp_path / "state"),
                           HadoopTopology.cluster(base_port=HADOOP_BASE_PORT))
    ports = [port for _, kind, node in hadoop._daemons() for port, _ in hadoop._ports_of(kind, node)]
    assert len(ports) == len(set(ports)) == 2 + 3 * 3 + 5 + 2 * 5 + 3
    hadoop.write_config()
    for node in (1, 2):  # each NodeManager's own configuration directory carries its own ports
        yarn_site = (hadoop.node_conf_dir("nodemanager", node) / "yarn-site.xml").read_text()
        assert f"127.0.0.1:{hadoop.topology.port('nm_address', node)}" in yarn_site
    data_dirs = {(hadoop.node_conf_dir("datanode", node) / "hdfs-site.xml").read_text().count(f"data-{node}")
                 for node in (1, 2, 3)}
    assert data_dirs == {1}


def test_the_cluster_env_file_points_the_pipeline_at_the_topology(tmp_path, monkeypatch):
    for name in ("BTC_STACK_KAFKA_PORT", "BTC_STACK_INFLUX_PORT", "BTC_SPARK_MASTER", "BTC_KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    stack = LocalStack(StackPaths(cache_dir=tmp_path / "cache", state_dir=tmp_path / "state"), topology="cluster")
    assert set(stack.services) == {"hadoop", "kafka", "influxdb", "spark", "spark-standalone"}
    env = stack.env()
    assert env["BTC_PROFILE"] == "cluster"
    assert env["BTC_MAPREDUCE_FRAMEWORK"] == "yarn" and env["BTC_HDFS_URL"] == "hdfs://127.0.0.1:28020"
    assert env["BTC_KAFKA_BOOTSTRAP_SERVERS"].count(",") == 2 and env["BTC_KAFKA_REPLICATION"] == "3"
    assert env["BTC_SPARK_MASTER"] == "spark://127.0.0.1:27077"
    with pytest.raises(StackError, match="unknown topology"):
        LocalStack(StackPaths(cache_dir=tmp_path, state_dir=tmp_path), topology="mesh")

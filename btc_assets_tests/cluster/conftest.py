"""The cluster topology the cluster tests run on: HDFS (a NameNode, 3 DataNodes), YARN (a ResourceManager,
2 NodeManagers, the JobHistory server) and Spark standalone (a master, 2 workers), all on 127.0.0.1, on
ports of their own (23020.., 22077.. and 24092..: never a user's cluster topology on 28020.., 27077.. and
29092.., and below Linux's ephemeral range, 32768-60999, where any outgoing connection may hold a port
for a while and a daemon's bind then fails), under the suite's state dir. Started once for this package's tests and stopped right after them
(``BTC_KEEP_STACK=1`` keeps it), so its 14 JVMs (~6 GB) do not sit beside the rest of the suite.
"""

from __future__ import annotations

import getpass
import os
import signal
from pathlib import Path

import psutil
import pytest

from btc_assets.defs.resources import BinanceHistoryResource, MapReduceResource, StorageResource
from btc_assets_tests.conftest import test_stack_dir
from btc_assets_tests.history.conftest import archive, history_resources  # noqa: F401 - shared fixtures

__all__ = ["archive", "history_resources"]  # the history tests' fixtures, also these tests'

HADOOP_BASE_PORT = 23020
SPARK_BASE_PORT = 22077
KAFKA_BASE_PORT = 24092  # nodes on 24092/24093, 24094/24095, 24096/24097 (never a user's 29092 cluster topology)


def cluster_paths():
    from btc_localstack.base import StackPaths

    return StackPaths(cache_dir=StackPaths.from_env().cache_dir,
                      state_dir=(Path(test_stack_dir()) / "cluster-topology").resolve())


def running(service):
    """Provision and start ``service`` for the cluster tests; stop it after them unless ``BTC_KEEP_STACK=1``."""
    service.provision()
    service.start()
    yield service
    if os.environ.get("BTC_KEEP_STACK") != "1":
        service.stop(kill=True)


@pytest.fixture(scope="package")
def hadoop_cluster():
    from btc_localstack.hadoop import HadoopService, HadoopTopology

    yield from running(HadoopService(cluster_paths(), HadoopTopology.cluster(base_port=HADOOP_BASE_PORT)))


@pytest.fixture(scope="package")
def kafka_cluster():
    from btc_localstack.kafka import KafkaCluster

    yield from running(KafkaCluster(cluster_paths(), nodes=3, base_port=KAFKA_BASE_PORT))


def topic_partitions(bootstrap: str, topic: str) -> list[dict]:
    """The admin API's description of each partition of ``topic`` (leader, replicas, ISR)."""
    from btc_assets.clients import kafka as kafka_io

    client = kafka_io.admin(bootstrap)
    try:
        (description,) = client.describe_topics([topic])
        return description["partitions"]
    finally:
        client.close()


def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    """The node id of the broker leading ``topic``'s ``partition``."""
    return next(p["leader_id"] for p in topic_partitions(bootstrap, topic) if p["partition_index"] == partition)


@pytest.fixture(scope="package")
def spark_cluster():
    from btc_localstack.spark import SparkStandalone

    yield from running(SparkStandalone(cluster_paths(), base_port=SPARK_BASE_PORT))


@pytest.fixture(scope="package")
def cluster_resources(hadoop_cluster, history_resources, archive):  # noqa: F811 - the imported fixtures
    """The code location's resources with storage and MapReduce on the cluster topology (HDFS, YARN)."""
    env = hadoop_cluster.env()
    return {**history_resources,
            "storage": StorageResource(filesystem_url=env["BTC_HDFS_URL"], webhdfs_url=env["BTC_WEBHDFS_URL"],
                                       user=getpass.getuser(), root="/btc"),
            "mapreduce": MapReduceResource(framework="yarn", hadoop_classpath=env["BTC_HADOOP_CLASSPATH"],
                                           streaming_jar=env["BTC_HADOOP_STREAMING_JAR"],
                                           conf_dir=env["HADOOP_CONF_DIR"], hdfs_url=env["BTC_HDFS_URL"]),
            "binance_history": BinanceHistoryResource(base_url=archive.base_url, retries=1, backoff_seconds=0.1)}


def node_processes(hadoop, node: int) -> list[psutil.Process]:
    """NodeManager ``node`` and every container process it started: the processes whose working directory
    lies in that NodeManager's own directory (containers run in its local dirs, in a session of their own)."""
    home = str(hadoop.nodemanager_dir(node).resolve())
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            cwd = process.cwd()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if cwd == home or cwd.startswith(home + os.sep):
            found.append(process)
    return found


def runs_a_task(processes: list[psutil.Process]) -> bool:
    """Whether one of them is a MapReduce task JVM (``YarnChild``: a map or reduce attempt, not the AM)."""
    for process in processes:
        try:
            if "org.apache.hadoop.mapred.YarnChild" in process.cmdline():
                return True
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return False


def kill_node(hadoop, node: int) -> list[int]:
    """SIGKILL NodeManager ``node`` with its containers, as a node dying takes them all (containers outlive a
    NodeManager killed alone). Returns their pids."""
    return kill_all(node_processes(hadoop, node))


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants at once (a Spark worker and its executors)."""
    parent = psutil.Process(pid)
    return kill_all([parent, *parent.children(recursive=True)])


def kill_all(victims: list[psutil.Process]) -> list[int]:
    """SIGKILL every one of them at once, as a machine dying takes them; their pids."""
    for process in victims:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=15)
    return [process.pid for process in victims]

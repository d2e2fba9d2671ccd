"""History days on the cluster topology: HDFS with 3 DataNodes, MapReduce on YARN (2 NodeManagers).

The minute_bars job runs as a YARN application (the ResourceManager's and JobHistory server's REST APIs
show it and where its attempts ran), its mapper and reducer under each node's own ``python3`` (no pyarrow,
no project virtualenv), and gives bars byte-identical to the local profile's. A NodeManager SIGKILLed with
its containers mid-job: the job still succeeds, the lost attempts run again on the other node.
"""

from __future__ import annotations

import threading

import dagster as dg

from btc_assets.defs.history.assets import minute_bars, raw_trades
from btc_assets_tests.cluster.conftest import kill_node, node_processes, runs_a_task
from btc_assets_tests.history.test_history_assets import archive_csv, bar_lines
from btc_assets_tests.reference import assert_bars_equal, duckdb_bars
from btc_assets_tests.stream.spark_fixtures import wait_for

ASSETS = [raw_trades, minute_bars]


def yarn_application(hadoop, name: str) -> dict:
    apps = (hadoop.yarn_rest("/ws/v1/cluster/apps?applicationTypes=MAPREDUCE").get("apps") or {}).get("app") or []
    named = [app for app in apps if app["name"] == name]
    assert named, f"no YARN application {name!r} in {[app['name'] for app in apps]}"
    return max(named, key=lambda app: app["startedTime"])  # the newest (a kept cluster has older runs too)


def task_attempts(hadoop, app: dict) -> list[dict]:
    """Every map and reduce attempt of the job, from the JobHistory server: type, state, node."""
    job = app["id"].replace("application_", "job_")
    base = hadoop.historyserver_url
    tasks = hadoop.yarn_rest(f"/ws/v1/history/mapreduce/jobs/{job}/tasks", base=base)["tasks"]["task"]
    attempts = []
    for task in tasks:
        found = hadoop.yarn_rest(f"/ws/v1/history/mapreduce/jobs/{job}/tasks/{task['id']}/attempts", base=base)
        attempts += found["taskAttempts"]["taskAttempt"]
    return attempts


def test_a_day_on_yarn_gives_the_local_profiles_bytes(cluster_resources, history_resources, hadoop_cluster,
                                                      archive, tmp_path):
    day = "2025-04-02"
    result = dg.materialize(ASSETS, partition_key=day, resources=cluster_resources)
    assert result.success
    assert hadoop_cluster.live_datanodes() == 3
    on_yarn = bar_lines(cluster_resources["storage"].storage, day)

    app = yarn_application(hadoop_cluster, f"minute_bars BTCUSDT {day}")
    assert app["state"] == "FINISHED" and app["finalStatus"] == "SUCCEEDED", app
    attempts = task_attempts(hadoop_cluster, app)
    kinds = sorted(attempt["type"] for attempt in attempts)
    assert kinds.count("REDUCE") == 1 and kinds.count("MAP") >= 1, attempts
    assert all(attempt["state"] == "SUCCEEDED" for attempt in attempts), attempts
    nodes = {node["nodeHTTPAddress"] for node in hadoop_cluster.running_nodemanagers()}
    assert {attempt["nodeHttpAddress"] for attempt in attempts} <= nodes

    # The same day with the local profile (one DataNode, the LocalJobRunner, this interpreter): same bytes.
    assert dg.materialize(ASSETS, partition_key=day, resources=history_resources).success
    local = bar_lines(history_resources["storage"].storage, day)
    assert on_yarn == local and len(on_yarn) > 1400  # quiet minutes have no bar
    archive_csv(archive, day, tmp_path)
    assert_bars_equal(on_yarn, duckdb_bars(tmp_path / f"{day}.csv"))


def test_a_nodemanager_killed_mid_job_reruns_its_attempts_on_the_other_node(cluster_resources, hadoop_cluster,
                                                                             archive, tmp_path):
    day = "2025-04-03"
    assert dg.materialize([raw_trades], partition_key=day, resources=cluster_resources).success
    outcome: dict[str, object] = {}
    runner = threading.Thread(target=lambda: outcome.update(result=dg.materialize(
        [minute_bars], partition_key=day, resources=cluster_resources, raise_on_error=False)))
    runner.start()

    def node_running_a_task() -> int | None:
        """The NodeManager whose containers include a running map or reduce task JVM."""
        for index in range(1, len(hadoop_cluster.nodemanagers) + 1):
            if runs_a_task(node_processes(hadoop_cluster, index)):
                return index
        return None

    victim = wait_for(node_running_a_task, 120, "a task container running on a NodeManager", interval=0.2)
    try:
        killed = kill_node(hadoop_cluster, victim)
        assert len(killed) >= 2, killed  # the NodeManager and at least the task's container
        runner.join(timeout=600)
        assert not runner.is_alive(), "the job did not finish within 10 minutes of the node's death"
    finally:
        hadoop_cluster.start_daemon("nodemanager", victim)
    result = outcome["result"]
    assert result.success, [str(event.step_failure_data.error) for event in result.all_events if event.is_step_failure]

    app = yarn_application(hadoop_cluster, f"minute_bars BTCUSDT {day}")
    assert app["finalStatus"] == "SUCCEEDED", app
    attempts = task_attempts(hadoop_cluster, app)
    lost_port = hadoop_cluster.topology.port("nm_http", victim)
    survivor_port = hadoop_cluster.topology.port("nm_http", 3 - victim)

    def port(attempt) -> int:  # nodes are named by reverse DNS (localhost:<port>): compare ports
        return int(attempt["nodeHttpAddress"].rsplit(":", 1)[1])

    # What the node was running was lost: a task attempt there that did not succeed, or (the node ran the
    # ApplicationMaster too) a second ApplicationMaster attempt.
    lost_attempts = [attempt for attempt in attempts if port(attempt) == lost_port and attempt["state"] != "SUCCEEDED"]
    am_attempts = hadoop_cluster.yarn_rest(f"/ws/v1/cluster/apps/{app['id']}/appattempts")["appAttempts"]["appAttempt"]
    assert lost_attempts or len(am_attempts) > 1, (attempts, am_attempts)
    # Every task's successful attempt ran on the surviving node.
    winners = [attempt for attempt in attempts if attempt["state"] == "SUCCEEDED"]
    assert winners and {port(attempt) for attempt in winners} == {survivor_port}, attempts
    archive_csv(archive, day, tmp_path)
    assert_bars_equal(bar_lines(cluster_resources["storage"].storage, day), duckdb_bars(tmp_path / f"{day}.csv"))
    wait_for(lambda: len(hadoop_cluster.running_nodemanagers()) == 2, 120, "the NodeManager back")

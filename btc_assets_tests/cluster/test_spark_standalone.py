"""Training and predictions on Spark standalone (a master, 2 workers) give what local mode gives.

``spark_jobs`` materializes ``training_set``, ``price_models`` and ``price_predictions`` in a process of its
own, once with ``local[2]`` and once with the standalone master (the project shipped to the executors as
``spark.submit.pyFiles``, their Python set by ``BTC_SPARK_PYTHON``), on the cluster topology's HDFS and the
suite's InfluxDB. The master's JSON API shows the cluster run's applications; the test metrics of every
model are the same numbers, and so are the predictions.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from btc_assets.contracts import schema
from btc_assets.defs.resources import InfluxResource
from btc_assets_tests.stream.spark_fixtures import wait_for
from btc_localstack.base import REPO_ROOT

# A process has one SparkContext: the three assets share the application the first of them created.
APPS = {"btc-training-set"}


@pytest.fixture
def buckets(resources):
    """Two fresh InfluxDB buckets (one per run), deleted afterwards."""
    influx = resources["influx"]
    admin = influx.admin()
    names = {run: f"cluster-{run}-{uuid.uuid4().hex[:8]}" for run in ("local", "cluster")}
    ids = [admin.ensure_bucket(name) for name in names.values()]
    yield names
    for bucket_id in ids:
        admin.client.buckets_api().delete_bucket(bucket_id)
    admin.close()


def start_jobs(master: str, hadoop, influx: InfluxResource, bucket: str, root: str, last_minute: int, out,
               log) -> subprocess.Popen:
    env = {**os.environ, "BTC_INFLUX_WRITE_TOKEN": influx.write_token, "BTC_INFLUX_READ_TOKEN": influx.read_token}
    command = [sys.executable, "-m", "btc_assets_tests.cluster.spark_jobs", "--master", master,
               "--hdfs-url", hadoop.hdfs_url, "--webhdfs-url", hadoop.webhdfs_url, "--root", root,
               "--influx-url", influx.url, "--influx-org", influx.org, "--bucket", bucket,
               "--last-minute", str(last_minute), "--out", str(out), "--python", sys.executable]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_training_and_predictions_on_the_master_equal_local_mode(resources, hadoop_cluster, spark_cluster,
                                                                 buckets, tmp_path):
    influx = resources["influx"]
    last_minute = int(time.time() // 60) - 10  # complete bars, settled long ago
    # The two runs at once (each mostly waits on JVM and executor start-ups): nothing of one is the other's.
    runs, processes, roots = {}, {}, {}
    for run, master in (("local", "local[2]"), ("cluster", spark_cluster.master_url)):
        roots[run] = f"/btc-sparktest-{run}-{uuid.uuid4().hex[:8]}"
        with open(tmp_path / f"{run}.log", "wb") as log:
            processes[run] = start_jobs(master, hadoop_cluster, influx, buckets[run], roots[run], last_minute,
                                        tmp_path / f"{run}.json", log)
    try:
        for run, process in processes.items():
            code = process.wait(900)
            assert code == 0, (run, (tmp_path / f"{run}.log").read_text(errors="replace")[-4000:])
            runs[run] = json.loads((tmp_path / f"{run}.json").read_text())
            assert runs[run]["success"], run
            hadoop_cluster._webhdfs().delete(roots[run], recursive=True)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()

    # The master moves an application to "completed" once it has seen its driver go, a moment after the
    # driver's process exited.
    def completed() -> dict[str, dict]:
        return {app["name"]: app for app in spark_cluster.master_json()["completedapps"]}

    wait_for(lambda: APPS <= set(completed()), timeout=60, what="the runs' applications completed on the master",
             state=lambda: sorted(completed()))
    state = spark_cluster.master_json()
    finished = {app["name"]: app for app in state["completedapps"]}
    assert APPS <= set(finished), sorted(finished)
    assert all(finished[name]["state"] == "FINISHED" and finished[name]["cores"] >= 1 for name in APPS)
    assert state["aliveworkers"] == 2

    local, cluster = runs["local"], runs["cluster"]
    assert set(local["metrics"]) == set(schema.MODELS)
    for model in schema.MODELS:
        assert cluster["metrics"][model] == local["metrics"][model], model
        here, there = local["predictions"][model], cluster["predictions"][model]
        assert len(here) == len(there) == 30, model  # 45 live bars, 16 of history each: 30 predictions
        for (_, expected), (_, got) in zip(here, there):
            # LR's dot product sums in another order on the executors: equal to the last few bits.
            assert math.isclose(got, expected, rel_tol=1e-9), (model, got, expected)


def test_the_workers_and_their_executors_map_sparks_classes_from_the_drivers_archive(spark_cluster):
    """The standalone daemons run from the Spark home the drivers' class-data archive was dumped from, and map it;
    the executors a worker starts inherit the option (JDK_JAVA_OPTIONS) and the classpath, and start sooner."""
    home, archive = spark_cluster._home_and_archive()
    assert archive and Path(archive).parent == Path(home), (home, archive)
    for worker in spark_cluster.workers:
        assert archive in Path(f"/proc/{worker.pid()}/maps").read_text(), worker.name
    # The executors of the runs before (the comparison above, in this module) logged the options they started with.
    logs = [path.read_text(errors="replace") for path in spark_cluster.state.glob("worker-*/app-*/*/stderr")]
    assert logs and all(f"-XX:SharedArchiveFile={archive}" in log for log in logs), len(logs)

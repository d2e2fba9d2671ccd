"""Spark standalone daemons and executors with and without the drivers' class-data archive.

    .venv/bin/python bench/standalone_start_bench.py [--rounds 3]

Needs no running stack (the archive is the local stack's: ``btc-pipeline stack provision`` dumps it). Each run
starts a fresh master and 2 workers (``SparkStandalone``, ports from 25077 up, a temporary state directory), then
a driver process (with the archive, as every driver of the pipeline) that runs one grouped count on the master,
and stops them. The runs alternate, the daemons with the archive (as the cluster topology starts them) and
without (pyspark's own home, no archive); the first run without is repeated last as a control. Prints, per run,
the daemons' start, when each executor registered with the driver after its worker was asked to launch it (from
the workers' and executors' logs), the driver's session and first job; then the medians and the ratios with /
without (the target: under 1).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btc_localstack import spark as spark_services  # noqa: E402
from btc_localstack.base import StackPaths  # noqa: E402

DRIVER = """
import json, sys, time
from btc_assets.clients.spark import SparkSettings, build_session
started = time.monotonic()
spark = build_session(SparkSettings(app_name="btc-standalone-bench", master=sys.argv[1], python=sys.executable,
                                    cores_max="2", executor_memory="1g", class_archive=sys.argv[2]))
session = time.monotonic()
spark.range(0, 2_000_000, numPartitions=4).selectExpr("id % 97 AS k").groupBy("k").count().collect()
print(json.dumps({"session": session - started, "first_job": time.monotonic() - session}))
spark.stop()
"""
CLOCK = r"(\d\d):(\d\d):(\d\d)"


class WithoutArchive(spark_services.SparkStandalone):
    def _home_and_archive(self) -> tuple[str, str]:
        return spark_services._pyspark_home(), ""


def _seconds(match: re.Match) -> int:
    hours, minutes, seconds = (int(part) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def one_run(with_archive: bool, port: int, archive: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="btc-standalone-bench-") as state:
        paths = StackPaths(cache_dir=StackPaths.from_env().cache_dir, state_dir=Path(state))
        kind = spark_services.SparkStandalone if with_archive else WithoutArchive
        cluster = kind(paths, base_port=port)
        began = time.monotonic()
        cluster.start()
        result = {"daemons_up": time.monotonic() - began}
        try:
            done = subprocess.run([sys.executable, "-c", DRIVER, cluster.master_url, archive], capture_output=True,
                                  text=True, timeout=600)
            if done.returncode != 0:
                raise SystemExit(f"the driver failed:\n{done.stderr[-3000:]}")
            result.update(json.loads(done.stdout.strip().splitlines()[-1]))
            asked = [_seconds(m) for log in cluster.state.glob("worker-*.log")
                     for m in re.finditer(CLOCK + r" INFO Worker: Asked to launch", log.read_text())]
            registered = [_seconds(m) for log in cluster.state.glob("worker-*/app-*/*/stderr")
                          for m in re.finditer(CLOCK + r" INFO CoarseGrainedExecutorBackend: Successfully registered",
                                               log.read_text(errors="replace"))]
            if asked and registered:
                result["executor_registered"] = statistics.mean(registered) - min(asked)
        finally:
            cluster.stop(kill=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    service = spark_services.SparkService(StackPaths.from_env())
    service.provision()
    archive = service.class_archive
    if not archive.is_file():
        raise SystemExit(f"no class-data archive at {archive}: `btc-pipeline stack provision` makes it")
    runs: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
    plan = [False, True] * args.rounds + [False]  # the last run without: a control for the order
    for index, with_archive in enumerate(plan):
        result = one_run(with_archive, 25077 + 100 * index, str(archive))
        label = "with" if with_archive else "without"
        runs[label].append(result)
        print(f"[standalone-start] run {index + 1}/{len(plan)} {label:7} " +
              ", ".join(f"{key} {value:.1f}s" for key, value in result.items()), flush=True)
    for key in ("daemons_up", "executor_registered", "session", "first_job"):
        medians = {label: statistics.median(run[key] for run in results if key in run)
                   for label, results in runs.items()}
        print(f"[standalone-start] {key}: median {medians['with']:.1f}s with the archive, "
              f"{medians['without']:.1f}s without; ratio {medians['with'] / medians['without']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

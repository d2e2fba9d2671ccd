"""Spark driver start-up with and without the class-data archive (``BTC_SPARK_CLASS_ARCHIVE``).

    .venv/bin/python bench/spark_start_bench.py [--rounds 5]

Needs no running stack: the archive and the Kafka connector jars are the local stack's (``btc-pipeline stack
provision`` resolves the jars and dumps the archive; this script does too if they are missing). Each round starts
two fresh Python processes, with and without the archive, in alternating order, each building the pipeline's
session (``SparkSettings``: local[2], the connector jars) and running a first query (a grouped count, then a pandas
frame through Arrow), as every asset's and the stream job's session does first. Prints each start, the medians and
the ratio with / without (the target: under 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btc_localstack.manager import LocalStack  # noqa: E402

CHILD = """
import json, sys, time
started = time.monotonic()
from btc_assets.clients.spark import SparkSettings, build_session
spark = build_session(SparkSettings(app_name="btc-start-bench", jars=sys.argv[1], class_archive=sys.argv[2],
                                    extra={"spark.sql.execution.arrow.pyspark.enabled": "true"}))
session = time.monotonic()
spark.range(100_000).selectExpr("id % 10 AS bucket").groupBy("bucket").count().collect()
spark.range(1_000).toPandas()
query = time.monotonic()
print(json.dumps({"session": session - started, "first_query": query - session}))
spark.stop()
"""


def start(jars: str, archive: str) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", CHILD, jars, archive], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"the session failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="starts with and without the archive (default 5)")
    args = parser.parse_args()
    spark = LocalStack().services["spark"]
    spark.provision()  # the connector jars and the archive, once (no-ops when cached)
    archive, jars = spark.class_archive, ",".join(str(jar) for jar in spark.jars())
    if not archive.exists():
        print(f"no class-data archive at {archive}: see {archive.parent / 'class-archive.log'}", file=sys.stderr)
        return 1
    print(f"archive {archive} ({archive.stat().st_size / 2**20:.0f} MiB)")
    totals: dict[str, list[float]] = {"with": [], "without": []}
    for round_ in range(1, args.rounds + 1):
        order = ("with", "without") if round_ % 2 else ("without", "with")
        for kind in order:
            timing = start(jars, str(archive) if kind == "with" else "")
            totals[kind].append(timing["session"] + timing["first_query"])
            print(f"round {round_} {kind:>7} the archive: session {timing['session']:.2f} s, "
                  f"first query {timing['first_query']:.2f} s", flush=True)
    with_archive, without = statistics.median(totals["with"]), statistics.median(totals["without"])
    print(f"median session + first query: {with_archive:.2f} s with the archive, {without:.2f} s without; "
          f"ratio {with_archive / without:.2f} (target < 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

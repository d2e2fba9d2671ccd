"""MapReduce minute-bar benchmark: a realistic 4.7M-trade day through the asset's Hadoop Streaming job vs DuckDB.

    ./pipeline stack up && .venv/bin/python bench/mapreduce_bench.py [--trades 4700000] [--repeat 1]

Generates one BTCUSDT day (the original project's average of ~4.7 million trades), writes it to
HDFS at the raw-trades path, then times, in this one process:
  * the MapReduce path exactly as the `minute_bars` asset runs it (``compute_minute_bars``), from
    job start to bars in HDFS;
  * a real ``minute_bars`` materialization of the same day (``dagster.materialize`` with the code
    location's asset, the job going through Dagster Pipes as in every run): the trades/s the asset
    reports in its metadata (what the UI shows) and the whole run's wall time;
  * the reference: DuckDB's GROUP BY computing the same bars from the same CSV on local disk;
  * the levers, as the same job without each: the class-data archive (``BTC_HADOOP_CLASS_ARCHIVE``) and the
    block reader (``BTC_MAPREDUCE_INPUT=blocks``: mapreduce/LineBlockInputFormat.java, against Hadoop's
    TextInputFormat handing the mapper a line at a time).
It prints trades/s for each and the ratios to DuckDB, and checks all give the same number of bars.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btc_assets.defs.history.assets import compute_minute_bars, day_path  # noqa: E402
from btc_assets.defs.history.assets import minute_bars  # noqa: E402
from btc_assets.defs.resources import MapReduceResource, MarketResource, StorageResource  # noqa: E402
from btc_testkit import generator  # noqa: E402
from bench.stack_env import bench_storage_resource, use_running_stack  # noqa: E402

SYMBOL, DAY = "BTCUSDT", "2025-04-01"
ORIGINAL_PROJECT_TRADES_PER_S = 51_000  # 61M trades in ~20 minutes


def duckdb_bars(csv_path: Path) -> int:
    import duckdb

    return duckdb.sql(f"""
        WITH trades AS (
            SELECT *, CASE WHEN time < 100000000000000 THEN time ELSE time // 1000 END AS time_ms
            FROM read_csv('{csv_path}', header = false, columns = {{
                'id': 'BIGINT', 'price': 'DOUBLE', 'qty': 'DOUBLE', 'quote_qty': 'DOUBLE', 'time': 'BIGINT',
                'is_buyer_maker': 'BOOLEAN', 'is_best_match': 'BOOLEAN'}}))
        SELECT time_ms // 60000 AS minute, count(*), arg_min(price, id), max(price), min(price),
               arg_max(price, id), avg(price), sum(quote_qty) / sum(qty), sum(qty), sum(quote_qty),
               sum(qty) / count(*), sum(quote_qty) / count(*), avg(is_buyer_maker::INT),
               sum(qty) FILTER (WHERE NOT is_buyer_maker), min(id), max(id)
        FROM trades GROUP BY minute ORDER BY minute""").fetchall().__len__()


def materialize_minute_bars(storage_resource: StorageResource, mapreduce: MapReduceResource) -> tuple[float, dict]:
    """One ``minute_bars`` run of DAY, as Dagster runs it: (wall seconds, the materialization's metadata)."""
    import dagster as dg

    started = time.monotonic()
    result = dg.materialize([minute_bars], partition_key=DAY, resources={
        "storage": storage_resource, "mapreduce": mapreduce, "market": MarketResource(symbols=SYMBOL)})
    seconds = time.monotonic() - started
    if not result.success:
        raise SystemExit("the minute_bars materialization failed")
    (materialization,) = result.asset_materializations_for_node("minute_bars")
    return seconds, {key: value.value for key, value in materialization.metadata.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=4_700_000)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each path (best is reported)")
    args = parser.parse_args()

    if not use_running_stack("hadoop"):
        return 2
    env = os.environ
    storage_resource = bench_storage_resource("/btc-bench")
    storage = storage_resource.storage
    mapreduce = MapReduceResource(framework="local", hadoop_classpath=env["BTC_HADOOP_CLASSPATH"],
                                  streaming_jar=env["BTC_HADOOP_STREAMING_JAR"], conf_dir=env["HADOOP_CONF_DIR"],
                                  hdfs_url=env["BTC_HDFS_URL"], class_archive=env.get("BTC_HADOOP_CLASS_ARCHIVE", ""))
    # The levers, each timed against the asset's own set-up in the same run: the class-data archive (the same
    # job with the JVM loading every class from the jars) and the block reader (the same job reading a line at a time).
    without_archive = mapreduce.model_copy(update={"class_archive": ""})
    line_by_line = mapreduce.model_copy(update={"input": "lines"})

    with tempfile.TemporaryDirectory(prefix="btc-bench-") as workdir:
        csv_path = Path(workdir) / f"{SYMBOL}-trades-{DAY}.csv"
        started = time.monotonic()
        trades = generator.generate_day(SYMBOL, DAY, seed=2025, trades=args.trades)
        generator.write_csv(trades, csv_path)
        size_mb = csv_path.stat().st_size / 1e6
        print(f"generated {len(trades):,} trades ({size_mb:.0f} MB CSV) in {time.monotonic() - started:.1f}s")
        with open(csv_path, "rb") as handle:
            storage.replace(day_path(storage, "raw", SYMBOL, DAY), handle)
        print(f"uploaded to HDFS: {day_path(storage, 'raw', SYMBOL, DAY)}")

        mapreduce_seconds, reference_seconds, asset_runs, no_archive_seconds, lines_seconds = [], [], [], [], []
        for attempt in range(args.repeat):
            counters, seconds, target = compute_minute_bars(mapreduce, storage, SYMBOL, DAY)
            mapreduce_seconds.append(seconds)
            if mapreduce.class_archive:
                no_archive_seconds.append(compute_minute_bars(without_archive, storage, SYMBOL, DAY)[1])
            lines_seconds.append(compute_minute_bars(line_by_line, storage, SYMBOL, DAY)[1])
            bars = counters.get("btc.minute_bars")
            asset_runs.append(materialize_minute_bars(storage_resource, mapreduce))
            started = time.monotonic()
            reference_bars = duckdb_bars(csv_path)
            reference_seconds.append(time.monotonic() - started)
            if not bars == reference_bars == asset_runs[-1][1]["bars"]:
                print(f"MISMATCH: MapReduce wrote {bars} bars, the asset {asset_runs[-1][1]['bars']}, "
                      f"DuckDB computed {reference_bars}", file=sys.stderr)
                return 1
        storage.fs.delete("/btc-bench", recursive=True)

    best_mr, best_ref = min(mapreduce_seconds), min(reference_seconds)
    mr_rate, ref_rate = len(trades) / best_mr, len(trades) / best_ref
    print(f"bars: {bars} (both paths)")
    print(f"MapReduce (Hadoop Streaming, LocalJobRunner, job start -> bars in HDFS): "
          f"{best_mr:.2f}s = {mr_rate:,.0f} trades/s")
    print(f"DuckDB GROUP BY on the same CSV (reference):                          "
          f"{best_ref:.2f}s = {ref_rate:,.0f} trades/s")
    print(f"ratio MapReduce / DuckDB: {mr_rate / ref_rate:.3f}")
    if no_archive_seconds:
        print(f"the same job without the class-data archive (BTC_HADOOP_CLASS_ARCHIVE unset): "
              f"{min(no_archive_seconds):.2f}s = {len(trades) / min(no_archive_seconds):,.0f} trades/s; "
              f"with / without: {best_mr / min(no_archive_seconds):.3f}")
    else:
        print("no class-data archive (BTC_HADOOP_CLASS_ARCHIVE): `btc-pipeline stack provision` dumps one")
    print(f"the same job reading a line at a time (BTC_MAPREDUCE_INPUT=lines, Hadoop's TextInputFormat): "
          f"{min(lines_seconds):.2f}s = {len(trades) / min(lines_seconds):,.0f} trades/s; "
          f"blocks / lines: {best_mr / min(lines_seconds):.3f}")
    run_seconds, metadata = min(asset_runs, key=lambda run: run[1]["duration_s"])
    asset_rate = metadata["trades_per_second"]
    print(f"minute_bars materialization (Dagster, through Pipes): the asset's job {metadata['duration_s']:.2f}s = "
          f"{asset_rate:,.0f} trades/s (its metadata); the whole run {run_seconds:.2f}s = "
          f"{len(trades) / run_seconds:,.0f} trades/s")
    print(f"ratio asset path / DuckDB: {asset_rate / ref_rate:.3f}; whole run / DuckDB: "
          f"{len(trades) / run_seconds / ref_rate:.3f}; target >= 1,000,000 trades/s in the asset path: "
          f"{'met' if asset_rate >= 1_000_000 else 'NOT met'}")
    print(f"vs the original project (~{ORIGINAL_PROJECT_TRADES_PER_S:,} trades/s): "
          f"{mr_rate / ORIGINAL_PROJECT_TRADES_PER_S:.1f}x; target >= 500,000 trades/s: "
          f"{'met' if mr_rate >= 500_000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pipeline's batch Spark jobs with a given master: ``training_set``, ``price_models`` and ``price_predictions``.

Run as its own process (``python -m btc_assets_tests.cluster.spark_jobs --master ...``), one per Spark
master, because a process holds one SparkContext: the cluster test runs it with ``local[2]`` and with the
standalone master, on the same bars, and compares what each wrote. The bars are a week of generated bars
with a planted signal (the model tests' ``signal_bars``): 4 days train the models, and 45 minutes of the
last day, written to the given InfluxDB bucket as live bars, are predicted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import dagster as dg

from btc_assets.contracts import points, schema
from btc_assets.defs.ml.assets import price_models, training_set
from btc_assets.defs.ml.predictions import price_predictions
from btc_assets.defs.resources import InfluxResource, MarketResource, SparkResource, StorageResource
from btc_assets.ml import features, models, predictions
from btc_testkit import bars as known_bars

SYMBOL = "BTCUSDT"
LIVE_BARS = 45
# The model tests' small sizes: this is about where the jobs run, not about accuracy.
SMALL = {"rf_num_trees": 20, "rf_max_depth": 5, "rf_max_bins": 32, "gbt_max_iter": 20, "gbt_max_depth": 4,
         "gbt_max_bins": 32, "version": "v1"}


def signal_bars():
    return known_bars.generated_bars("2025-04-01", 5, symbol=SYMBOL, trades_per_day=40_000, seed=5,
                                     taker_signal=0.0015)


def live_bars(bars, last_minute: int):
    """45 bars of the last generated day, relabelled to the minutes ending at ``last_minute`` (epoch minutes)."""
    day = bars[bars[schema.MINUTE].str.startswith(sorted(set(bars[schema.MINUTE].str[:10]))[-1])]
    chosen = day.iloc[600:600 + LIVE_BARS].reset_index(drop=True)
    labels = [time.strftime(schema.MINUTE_FORMAT, time.gmtime((last_minute - LIVE_BARS + 1 + offset) * 60))
              for offset in range(LIVE_BARS)]
    return chosen.assign(**{schema.MINUTE: labels})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("master", "hdfs-url", "webhdfs-url", "root", "influx-url", "influx-org", "bucket", "last-minute",
                 "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--python", default="")
    args = parser.parse_args(argv)

    storage = StorageResource(filesystem_url=args.hdfs_url, webhdfs_url=args.webhdfs_url, root=args.root)
    spark = SparkResource(master=args.master, hdfs_url=args.hdfs_url, jars=os.environ.get("BTC_SPARK_JARS", ""),
                          driver_memory="1g", python=args.python, cores_max="2",
                          class_archive=os.environ.get("BTC_SPARK_CLASS_ARCHIVE", ""))
    influx = InfluxResource(url=args.influx_url, org=args.influx_org, bucket=args.bucket,
                            write_token=os.environ["BTC_INFLUX_WRITE_TOKEN"],
                            read_token=os.environ["BTC_INFLUX_READ_TOKEN"])
    bars = signal_bars()
    known_bars.write_bars(storage.storage, bars.iloc[:-1440], SYMBOL)  # the last day is the "live" one
    writer = influx.writer()
    writer.write_lines([points.bar_line(SYMBOL, row) for row in live_bars(bars, int(args.last_minute))
                        .to_dict("records")])
    writer.close()

    trained = dg.materialize([training_set, price_models], resources={"spark": spark, "storage": storage},
                             run_config={"ops": {"price_models": {"config": SMALL}}})
    predicted = dg.materialize([price_predictions], resources={"spark": spark, "storage": storage, "influx": influx,
                                                               "market": MarketResource(symbols=SYMBOL)},
                               run_config={"ops": {"price_predictions": {"config": {"settle_seconds": 300.0}}}})
    reader = influx.reader()
    stored = {model: sorted((row["_time"].isoformat() if hasattr(row["_time"], "isoformat") else str(row["_time"]),
                             row.get("predicted_price"))
                            for row in reader.query(predictions.predictions_flux(args.bucket, SYMBOL, model, 24 * 60)))
              for model in schema.MODELS}
    reader.close()
    metrics = {name: json.loads(storage.storage.fs.read(
        f"{storage.storage.root}/models/{name}/v1/{schema.MODEL_METRICS_FILE}"))["test"]
        for name in schema.MODELS}
    result = {"success": trained.success and predicted.success, "metrics": metrics, "predictions": stored,
              "features": list(features.FEATURES), "models": sorted(models.model_versions(storage.storage, "lr"))}
    with open(args.out, "w") as handle:
        json.dump(result, handle, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

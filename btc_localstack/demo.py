"""The steps of `btc-pipeline demo`: each a title and a command run against the local stack.

The demo drives Dagster through its own CLI (`dagster asset materialize -m btc_assets.definitions`),
exactly as a user would, so what it shows is what a user gets. Binance is replaced by the
project's emulators (same URLs, same formats) unless ``--source binance`` asks for the real one.
"""

from __future__ import annotations

import sys
from datetime import date, timedelta

from btc_assets.defs.ml.assets import MODEL_ASSETS

from .dagster import CODE_MODULE

DAGSTER = [sys.executable, "-m", "dagster"]
MIN_TRAINING_DAYS = 3
WARMUP_MINUTES = 30  # the emulator's market opens this far in the past: bars to predict from at once
MODULE = ["-m", CODE_MODULE]


def materialize(selection: str, partition: str | None = None) -> list[str]:
    command = DAGSTER + ["asset", "materialize", *MODULE, "--select", selection]
    return command + (["--partition", partition] if partition else [])


def demo_days(start: str, count: int) -> list[str]:
    first = date.fromisoformat(start)
    return [(first + timedelta(days=offset)).isoformat() for offset in range(count)]


def demo_steps(args) -> list[tuple[str, list[str]]]:
    steps = [
        ("listing the code location's assets", DAGSTER + ["asset", "list", *MODULE]),
        ("materializing the platform assets (Kafka topics, InfluxDB bucket)",
         materialize("trade_topics,influx_bucket")),
    ]
    for day in demo_days(args.start, args.days):
        steps.append((f"history {day}: raw trades and Binance's klines into HDFS, MapReduce minute bars, checks",
                      materialize("raw_trades,exchange_klines,minute_bars", partition=day)))
    if trains_models(args):
        steps.append(("training set and price models (LR, RF, GBT, persistence) on those days",
                      materialize(",".join(["training_set", *MODEL_ASSETS.values()]))))
    return steps


def trains_models(args) -> bool:
    """Models need a chronological train / validation / test split: three days at least."""
    return args.days >= MIN_TRAINING_DAYS and not args.no_models


def prediction_step() -> tuple[str, list[str]]:
    # The stream scores each minute as it completes; the asset scores the last hour at once (the warm-up's
    # minutes included) and shows the rolling errors and the plot in Dagster.
    return ("price_predictions: every saved model on the last hour of live bars -> InfluxDB, with their errors",
            materialize("price_predictions"))

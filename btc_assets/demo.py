"""The steps of `btc-pipeline demo`: each a title and a command run against the local stack.

The demo drives Dagster through its own CLI (`dagster asset materialize -m btc_assets.definitions`),
exactly as a user would, so what it shows is what a user gets. Binance is replaced by the
project's emulators (same URLs, same formats) unless ``--source binance`` asks for the real one.
"""

from __future__ import annotations

import sys
from datetime import date, timedelta

DAGSTER = [sys.executable, "-m", "dagster"]
MODULE = ["-m", "btc_assets.definitions"]


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
        steps.append((f"history {day}: raw trades into HDFS, MapReduce minute bars, checks",
                      materialize("raw_trades,minute_bars", partition=day)))
    return steps

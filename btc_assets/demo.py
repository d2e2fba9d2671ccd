"""The steps of `btc-pipeline demo`: each a title and a command run against the local stack.

The demo drives Dagster through its own CLI (`dagster asset materialize -m btc_assets.definitions`),
exactly as a user would, so what it shows is what a user gets.
"""

from __future__ import annotations

import sys

DAGSTER = [sys.executable, "-m", "dagster"]
MODULE = ["-m", "btc_assets.definitions"]


def materialize(selection: str, partition: str | None = None) -> list[str]:
    command = DAGSTER + ["asset", "materialize", *MODULE, "--select", selection]
    return command + (["--partition", partition] if partition else [])


def demo_steps(args) -> list[tuple[str, list[str]]]:
    return [
        ("listing the code location's assets", DAGSTER + ["asset", "list", *MODULE]),
        ("materializing the platform assets (Kafka topics, InfluxDB bucket)",
         materialize("trade_topics,influx_bucket")),
    ]

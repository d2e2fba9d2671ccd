"""How the live stream is doing, measured from the outside (no Dagster): lag, freshness, liveness.

    lag                    Kafka end offsets - the offsets of the Spark checkpoint's last committed batch
    seconds_since_bar      now - the newest `bars_1m` point in InfluxDB
    seconds_since_health   now - the newest `pipeline_health` point the Spark job wrote (its heartbeat)

A Spark checkpoint keeps ``offsets/<batch>`` (three lines: ``v1``, batch metadata JSON, then one JSON
per source: ``{"BTCUSDT-TRADES": {"0": 1234, "1": 1200, "2": 1250}}``) and ``commits/<batch>`` once a
batch is done, so the processed position is ``offsets/<newest commit>``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from btc_assets.contracts import schema


@dataclass(frozen=True)
class StreamHealth:
    end_offsets: int
    processed_offsets: int | None
    lag: int | None
    seconds_since_bar: float | None
    seconds_since_health: float | None
    last_bar_time: str | None

    def as_dict(self) -> dict:
        return asdict(self)

    def problem(self, stall_seconds: float) -> str | None:
        """Why the stream needs a restart, or None when it is healthy."""
        if self.seconds_since_health is None:
            return "the Spark job has never reported pipeline_health"
        if self.seconds_since_health > stall_seconds:
            return f"no pipeline_health heartbeat for {self.seconds_since_health:.0f}s (> {stall_seconds:.0f}s)"
        if self.lag and (self.seconds_since_bar is None or self.seconds_since_bar > stall_seconds):
            return f"{self.lag} records waiting in Kafka but no new bar for {self.seconds_since_bar}s"
        return None


def checkpoint_offsets(fs, checkpoint: str) -> dict[str, dict[int, int]] | None:
    """Offsets per topic and partition of the newest committed batch, or None before the first one."""
    if not fs.exists(f"{checkpoint}/commits"):
        return None
    batches = [int(status.path.rsplit("/", 1)[-1]) for status in fs.list(f"{checkpoint}/commits")
               if status.path.rsplit("/", 1)[-1].isdigit()]
    if not batches:
        return None
    lines = fs.read(f"{checkpoint}/offsets/{max(batches)}").decode().splitlines()
    merged: dict[str, dict[int, int]] = {}
    for source in lines[2:]:
        for topic, partitions in json.loads(source).items():
            merged.setdefault(topic, {}).update({int(p): int(o) for p, o in partitions.items()})
    return merged


def newest_time(influx, measurement: str, lookback: str = "-30d") -> float | None:
    """Epoch seconds of the newest point of a measurement (any tag), or None if there is none."""
    rows = influx.query(
        f'from(bucket: "{influx.bucket}") |> range(start: {lookback})\n'
        f'  |> filter(fn: (r) => r._measurement == "{measurement}")\n'
        f'  |> keep(columns: ["_time"]) |> group() |> max(column: "_time")')
    return rows[0]["_time"].timestamp() if rows else None


def measure(*, end_offsets: dict[str, dict[int, int]], fs, checkpoint: str, influx) -> StreamHealth:
    processed = checkpoint_offsets(fs, checkpoint)
    end_total = sum(sum(partitions.values()) for partitions in end_offsets.values())
    processed_total = None if processed is None else sum(
        processed.get(topic, {}).get(partition, 0)
        for topic, partitions in end_offsets.items() for partition in partitions)
    now = time.time()
    last_bar = newest_time(influx, schema.BARS_MEASUREMENT)
    last_health = newest_time(influx, schema.HEALTH_MEASUREMENT)
    return StreamHealth(
        end_offsets=end_total, processed_offsets=processed_total,
        lag=None if processed_total is None else max(0, end_total - processed_total),
        seconds_since_bar=None if last_bar is None else round(now - last_bar, 1),
        seconds_since_health=None if last_health is None else round(now - last_health, 1),
        last_bar_time=None if last_bar is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_bar)))

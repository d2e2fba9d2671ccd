"""How the live stream is doing, measured from the outside (no Dagster): lag, freshness, liveness.

    lag                    Kafka end offsets - the offsets of the Spark checkpoint's last committed batch
    seconds_since_bar      now - the newest `bars_1m` point in InfluxDB
    seconds_since_health   now - the newest `pipeline_health` point the Spark job wrote (its heartbeat)
    seconds_since_producer now - the newest `pipeline_health` point of the producer (its heartbeat)
    seconds_since_bars_batch now - the bars query's newest committed micro-batch (its checkpoint's commits/)
    newest_trade_age       the producer's own word: seconds since the newest trade it wrote to Kafka
                           (a silent WebSocket: connected, heartbeating, but no trades)

``problems`` says, per component that needs a restart (``producer``, ``spark-job``), why.

A Spark checkpoint keeps ``offsets/<batch>`` (three lines: ``v1``, batch metadata JSON, then one JSON
per source: ``{"BTCUSDT-TRADES": {"0": 1234, "1": 1200, "2": 1250}}``) and ``commits/<batch>`` once a
batch is done, so the processed position is ``offsets/<newest commit>``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from btc_assets.contracts import schema

BAR_SECONDS = 60  # a bars_1m point is stamped with its minute's start
BARS_CHECKPOINT = "bars"  # the Spark job's bars query, beside its trades query's checkpoint
PRODUCER_COMPONENT = "producer"  # the producer's pipeline_health component tag (btc_assets.stream.producer)


@dataclass(frozen=True)
class StreamHealth:
    end_offsets: int
    processed_offsets: int | None
    lag: int | None
    seconds_since_bar: float | None
    seconds_since_health: float | None
    last_bar_time: str | None
    seconds_since_producer: float | None = None
    newest_trade_age: float | None = None
    seconds_since_bars_batch: float | None = None  # the bars query's newest committed micro-batch

    def as_dict(self) -> dict:
        return asdict(self)

    def problem(self, stall_seconds: float) -> str | None:
        """Why the Spark job needs a restart, or None when it is healthy."""
        if self.seconds_since_health is None:
            return "the Spark job has never reported pipeline_health"
        if self.seconds_since_health > stall_seconds:
            return f"no Spark job pipeline_health heartbeat for {self.seconds_since_health:.0f}s (> {stall_seconds:.0f}s)"
        # A bar's time is its minute's start: a healthy stream's newest bar is up to a minute (and a bars trigger) old.
        # A stream catching up on a backlog writes bars of past minutes: its bars query still commits batches.
        catching_up = self.seconds_since_bars_batch is not None and self.seconds_since_bars_batch <= stall_seconds
        if self.lag and not catching_up and (self.seconds_since_bar is None
                                             or self.seconds_since_bar > stall_seconds + BAR_SECONDS):
            return (f"{self.lag} records waiting in Kafka but the newest bar started {self.seconds_since_bar}s ago "
                    f"(> {stall_seconds + BAR_SECONDS:.0f}s)")
        return None

    def producer_problem(self, stall_seconds: float) -> str | None:
        """Why the producer needs a restart (dead, or its WebSocket silent), or None when it is healthy."""
        if self.seconds_since_producer is None:
            return "the producer has never reported pipeline_health"
        if self.seconds_since_producer > stall_seconds:
            return f"no producer heartbeat for {self.seconds_since_producer:.0f}s (> {stall_seconds:.0f}s)"
        if self.newest_trade_age is not None and self.newest_trade_age > stall_seconds:
            return f"the WebSocket is silent: the newest trade is {self.newest_trade_age:.0f}s old (> {stall_seconds:.0f}s)"
        return None

    def problems(self, stall_seconds: float) -> dict[str, str]:
        """component -> why it needs a restart, for every component that does."""
        found = {"producer": self.producer_problem(stall_seconds), "spark-job": self.problem(stall_seconds)}
        return {component: reason for component, reason in found.items() if reason}


def newest_commit_age(fs, checkpoint: str, now: float) -> float | None:
    """Seconds since the checkpoint's newest committed batch (None before the first one)."""
    if not fs.exists(f"{checkpoint}/commits"):
        return None
    times = [status.modification_ms for status in fs.list(f"{checkpoint}/commits")
             if status.path.rsplit("/", 1)[-1].isdigit()]
    return round(now - max(times) / 1000.0, 1) if times else None


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


def newest_time(influx, measurement: str, lookback: str = "-30d", component: str | None = None) -> float | None:
    """Epoch seconds of the newest point of a measurement, or None if there is none.

    ``component``: only ``pipeline_health`` points whose component tag starts with it (``spark`` for the
    Spark job's two queries, ``producer``)."""
    where = f' and strings.hasPrefix(v: r.{schema.COMPONENT_TAG}, prefix: "{component}")' if component else ""
    rows = influx.query(
        ('import "strings"\n' if component else "")
        + f'from(bucket: "{influx.bucket}") |> range(start: {lookback})\n'
        f'  |> filter(fn: (r) => r._measurement == "{measurement}"{where})\n'
        f'  |> keep(columns: ["_time"]) |> group() |> max(column: "_time")')
    return rows[0]["_time"].timestamp() if rows else None


def newest_field(influx, component: str, field: str, lookback: str = "-1h") -> float | None:
    """The newest value of a ``pipeline_health`` field of one component, or None."""
    rows = influx.query(
        f'from(bucket: "{influx.bucket}") |> range(start: {lookback})\n'
        f'  |> filter(fn: (r) => r._measurement == "{schema.HEALTH_MEASUREMENT}" and '
        f'r.{schema.COMPONENT_TAG} == "{component}" and r._field == "{field}")\n'
        f'  |> group() |> last()')
    return float(rows[0]["_value"]) if rows else None


def measure(*, end_offsets: dict[str, dict[int, int]], fs, checkpoint: str, influx) -> StreamHealth:
    processed = checkpoint_offsets(fs, checkpoint)
    end_total = sum(sum(partitions.values()) for partitions in end_offsets.values())
    processed_total = None if processed is None else sum(
        processed.get(topic, {}).get(partition, 0)
        for topic, partitions in end_offsets.items() for partition in partitions)
    now = time.time()
    last_bar = newest_time(influx, schema.BARS_MEASUREMENT)
    last_health = newest_time(influx, schema.HEALTH_MEASUREMENT, component="spark")
    last_producer = newest_time(influx, schema.HEALTH_MEASUREMENT, "-1h", component=PRODUCER_COMPONENT)
    trade_age = newest_field(influx, PRODUCER_COMPONENT, "newest_trade_age_s") if last_producer else None
    bars_checkpoint = checkpoint.rstrip("/").rsplit("/", 1)[0] + "/" + BARS_CHECKPOINT
    return StreamHealth(
        end_offsets=end_total, processed_offsets=processed_total,
        lag=None if processed_total is None else max(0, end_total - processed_total),
        seconds_since_bar=None if last_bar is None else round(now - last_bar, 1),
        seconds_since_health=None if last_health is None else round(now - last_health, 1),
        last_bar_time=None if last_bar is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_bar)),
        seconds_since_producer=None if last_producer is None else round(now - last_producer, 1),
        # The heartbeat's age of the newest trade, grown by the heartbeat's own age; -1: no trade yet.
        newest_trade_age=None if trade_age is None or trade_age < 0 else round(trade_age + (now - last_producer), 1),
        seconds_since_bars_batch=newest_commit_age(fs, bars_checkpoint, now))

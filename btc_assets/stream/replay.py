"""A stored day replayed as the live stream: its trades from HDFS through the Binance emulator, X times faster.

    btc-pipeline replay --symbol BTCUSDT --date 2025-04-01 --speed 60      (a run of `replay_job` in Dagster)

The day's raw trade file (``raw_trades``) is served by the Binance WebSocket/REST emulator
(``python -m btc_testkit.binance_emulator --replay-csv``, a process of its own), paced by its own trade
times at ``speed`` (60: a day in 24 minutes), each time shifted by one offset so the first trade served
falls in the next minute from now. The product's own producer
and Spark job run on it as they run live, with every name of their own, so the live stream is never
touched:

| what | live | replay |
|---|---|---|
| Kafka topic | `BTC_KAFKA_TOPIC_TEMPLATE` (`BTCUSDT-TRADES`) | `BTC_REPLAY_TOPIC_TEMPLATE` (`BTCUSDT-REPLAY-TRADES`) |
| Spark checkpoints | `/btc/checkpoints/trades`, `…/bars` | `/btc/checkpoints/replay-trades`, `…/replay-bars` |
| InfluxDB bucket | `BTC_INFLUX_BUCKET` (`btc`) | `BTC_REPLAY_BUCKET` (`btc_replay`) |
| processes | `$BTC_STACK_DIR/stream/` | `$BTC_STACK_DIR/replay/` |

A replay starts from scratch: its topics are deleted and created anew (the producer drops ids at or
below the last one in a topic), its checkpoints removed, the symbol's points in the replay bucket
deleted. The saved models (``/btc/models``) score every completed minute as they do live.

Before the day, the last ``LEAD_IN_MINUTES`` of the day before are replayed when that day is stored:
the features of the day's first minutes need 15 bars before them, so every minute of the day gets its
prediction. When all trades are sent, the replay waits until Kafka has every one, InfluxDB has every
trade and the day's last bar, and the scorer has scored through the day's newest complete minute; then
it stops its services and reports (``ReplayReport``): trades landed, the live bars against the day's
MapReduce bars (time-shifted back, ints exact, floats to 1e-9 relative), and each model's skill over
the day. The day's last minute has no later trade, so it is never complete: its error stays unwritten.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import urllib.request
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from btc_assets import config
from btc_assets.clients import kafka as kafka_io
from btc_assets.clients.influx import Influx
from btc_assets.clients.storage import Storage
from btc_assets.contracts import schema
from btc_assets.history.bar_files import INT_FIELDS, read_bars
from btc_assets.ml import predictions
from btc_assets.processes import free_port
from btc_assets.stream import scorer, spark_job
from btc_assets.stream.services import StreamServices

# Of the day before: history for the first minutes' features (features.LOOKBACK_BARS = 16), with room for the
# scorer's first round (it scores the newest minute only) to fall before the day starts.
LEAD_IN_MINUTES = 60
CHECKPOINT_PREFIX = "replay-"
SERVICES_DIR = "replay"
EMULATOR = "binance-emulator"
SERVICES = ("spark-job", EMULATOR, "producer")
REL_TOL = 1e-9  # floats of a live bar against its MapReduce twin (sums in another order)
PROGRESS_SECONDS = 10.0
MINUTE_MS = 60_000
DAY_MINUTES = 1440


class ReplayError(RuntimeError):
    """A replay that cannot start or did not finish; the message says what to do."""


# --- the day's trades as a tape ------------------------------------------------------------------


@dataclass
class TapeFacts:
    """What one pass over a raw trade file found (the rows at or after ``since_ms`` only)."""

    trades: int = 0
    malformed: int = 0
    first_id: int | None = None
    last_id: int | None = None
    id_sum: int = 0


def _rows(path: Path, since_ms: int | None) -> Iterator[tuple[list[str], schema.Trade]]:
    """(the CSV fields, the parsed trade) of each well-formed row at or after ``since_ms``; malformed rows
    are yielded as (fields, None), as MapReduce skips and counts them."""
    with path.open("r", encoding="utf-8", newline="") as lines:
        for line in lines:
            try:
                trade = schema.parse_history_line(line)
            except schema.MalformedTrade:
                yield [], None
                continue
            if since_ms is None or schema.trade_time_to_ms(trade.time) >= since_ms:
                yield line.rstrip("\r\n").split(","), trade


def scan(path: Path, since_ms: int | None = None, keep: Path | None = None) -> TapeFacts:
    """Count a raw file's trades and check they are in id order (the producer drops an id at or below the last);
    with ``keep``, the well-formed rows counted are written there too (the lead-in's tape, in the same pass)."""
    facts = TapeFacts()
    with (keep.open("w", encoding="utf-8") if keep is not None else contextlib.nullcontext()) as kept:
        for line_number, (fields, trade) in enumerate(_rows(path, since_ms), start=1):
            if trade is None:
                facts.malformed += 1
                continue
            if facts.last_id is not None and trade.trade_id <= facts.last_id:
                raise ReplayError(f"{path.name}: trade {trade.trade_id} on line {line_number} is not above "
                                  f"{facts.last_id}: a replay serves a day in id order, as Binance publishes it")
            facts.first_id = trade.trade_id if facts.first_id is None else facts.first_id
            facts.last_id = trade.trade_id
            facts.trades += 1
            facts.id_sum += trade.trade_id
            if kept is not None:
                kept.write(",".join(fields) + "\n")
    return facts


def events(paths: Iterable[Path], symbol: str, offset_ms: int) -> Iterator[dict]:
    """The files' trades, one file after the other, as Binance WebSocket trade events, times shifted by
    ``offset_ms``: price and quantity are the file's own text, so the live path parses exactly the decimals
    MapReduce did."""
    for fields, trade in (row for path in paths for row in _rows(path, None)):
        if trade is None:
            continue
        trade_ms = schema.trade_time_to_ms(trade.time) + offset_ms
        yield {schema.EVENT_TYPE: schema.TRADE_EVENT_TYPE, schema.EVENT_TIME: trade_ms, schema.EVENT_SYMBOL: symbol,
               schema.EVENT_TRADE_ID: trade.trade_id, schema.EVENT_PRICE: fields[1], schema.EVENT_QUANTITY: fields[2],
               schema.EVENT_TRADE_TIME: trade_ms, schema.EVENT_IS_BUYER_MAKER: trade.is_buyer_maker,
               schema.EVENT_IGNORE: trade.is_best_match}


# --- where the replay's stream goes ----------------------------------------------------------------


@dataclass(frozen=True)
class ReplayTargets:
    """The engines the replay's services use, and the replay's own names on them."""

    bootstrap_servers: str
    influx_url: str
    influx_org: str
    write_token: str
    read_token: str
    hdfs_url: str
    webhdfs_url: str
    storage_root: str
    admin_token: str = ""  # creates the replay bucket when it is missing
    partitions: int = schema.DEFAULT_PARTITIONS
    replication: int = 1
    bucket: str = config.default("BTC_REPLAY_BUCKET")
    topic_template: str = config.default("BTC_REPLAY_TOPIC_TEMPLATE")

    def __post_init__(self):
        if self.bucket == config.get_optional("BTC_INFLUX_BUCKET") or self.bucket == schema.DEFAULT_BUCKET:
            raise ReplayError(f"the replay bucket {self.bucket!r} is the live one: set BTC_REPLAY_BUCKET to "
                              "a bucket of its own (a replay deletes its symbol's points there first)")
        if "{symbol}" not in self.topic_template:
            raise ReplayError(f"BTC_REPLAY_TOPIC_TEMPLATE={self.topic_template!r} has no {{symbol}}")
        if self.topic_template == config.get_optional("BTC_KAFKA_TOPIC_TEMPLATE"):
            raise ReplayError("BTC_REPLAY_TOPIC_TEMPLATE is the live topic template: a replay deletes its topics")

    @classmethod
    def from_env(cls) -> ReplayTargets:
        return cls(bootstrap_servers=config.get("BTC_KAFKA_BOOTSTRAP_SERVERS"),
                   influx_url=config.get("BTC_INFLUX_URL"), influx_org=config.get("BTC_INFLUX_ORG"),
                   write_token=config.get("BTC_INFLUX_WRITE_TOKEN"), read_token=config.get("BTC_INFLUX_READ_TOKEN"),
                   admin_token=config.get_optional("BTC_INFLUX_TOKEN") or "",
                   hdfs_url=config.get("BTC_HDFS_URL"), webhdfs_url=config.get("BTC_WEBHDFS_URL"),
                   storage_root=config.get("BTC_STORAGE_ROOT"), partitions=config.get_int("BTC_KAFKA_PARTITIONS"),
                   replication=config.get_int("BTC_KAFKA_REPLICATION"), bucket=config.get("BTC_REPLAY_BUCKET"),
                   topic_template=config.get("BTC_REPLAY_TOPIC_TEMPLATE"))

    def topic(self, symbol: str) -> str:
        return schema.trade_topic(symbol, self.topic_template)

    def reader(self) -> Influx:
        return Influx(self.influx_url, self.influx_org, self.bucket, self.read_token)

    def writer(self) -> Influx:
        return Influx(self.influx_url, self.influx_org, self.bucket, self.write_token)

    def service_env(self, symbol: str, speed: float) -> dict[str, str]:
        """The settings the replay's producer and Spark job run with."""
        # A bars batch covers at most 10 minutes of the day whatever the speed, well inside the scorer's catch-up.
        bars_trigger = min(10.0, max(1.0, 600.0 / speed))
        return {
            "BTC_SYMBOLS": symbol, "BTC_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "BTC_KAFKA_TOPIC_TEMPLATE": self.topic_template, "BTC_KAFKA_PARTITIONS": str(self.partitions),
            "BTC_KAFKA_REPLICATION": str(self.replication),
            "BTC_INFLUX_URL": self.influx_url, "BTC_INFLUX_ORG": self.influx_org, "BTC_INFLUX_BUCKET": self.bucket,
            "BTC_INFLUX_WRITE_TOKEN": self.write_token, "BTC_INFLUX_READ_TOKEN": self.read_token,
            "BTC_HDFS_URL": self.hdfs_url, "BTC_WEBHDFS_URL": self.webhdfs_url, "BTC_STORAGE_ROOT": self.storage_root,
            "BTC_STREAM_BARS_TRIGGER": f"{bars_trigger:g} seconds",
        }


# --- the report -----------------------------------------------------------------------------------


@dataclass
class ReplayReport:
    symbol: str
    date: str
    speed: float
    day_start: str  # the day's first minute as replayed (ISO, UTC)
    offset_ms: int
    trades: int  # of the day (the lead-in's not counted)
    lead_in_trades: int
    malformed: int
    trades_landed: int = 0  # the day's trades points in the replay bucket
    trade_ids_match: bool = False  # their trade_id sum equals the file's
    live_bars: int = 0
    mapreduce_bars: int = 0
    bars_equal: int = 0
    bar_differences: list[str] = field(default_factory=list)  # the first ones: "HH:MM field live != mapreduce"
    predicted_minutes: dict[str, int] = field(default_factory=dict)  # model -> minutes of the day with one
    errors_written: dict[str, int] = field(default_factory=dict)  # model -> minutes with actual_price and error
    skill: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> rows, rmse_usd, mae_usd, skill
    wall_seconds: float = 0.0
    evaluation_png: bytes = b""  # the day's predictions against the actual closes (evaluation_png), if any

    @property
    def bars_match(self) -> bool:
        return self.mapreduce_bars > 0 and self.live_bars == self.mapreduce_bars == self.bars_equal

    def summary_lines(self) -> list[str]:
        lines = [f"replayed {self.symbol} {self.date} at {self.speed:g}x in {self.wall_seconds:.0f}s, the day "
                 f"starting {self.day_start}",
                 f"trades: {self.trades_landed:,} of {self.trades:,} in InfluxDB"
                 f"{' (every trade id once)' if self.trade_ids_match else ' (trade ids do NOT match)'}"
                 f", {self.lead_in_trades:,} more of the day before, {self.malformed:,} malformed rows skipped",
                 f"bars: {self.bars_equal:,} of {self.mapreduce_bars:,} MapReduce bars equal the live ones "
                 f"({self.live_bars:,} live)" + ("" if not self.bar_differences else
                                                 "; first differences: " + "; ".join(self.bar_differences[:5]))]
        for name, metrics in self.skill.items():
            lines.append(f"{name}: {self.predicted_minutes.get(name, 0):,} minutes predicted, "
                         f"{metrics.get('rows', 0):,} with their error, RMSE {metrics.get('rmse_usd', math.nan):.4f} "
                         f"USD, skill {metrics.get('skill', math.nan):+.4f}")
        return lines

    def skill_markdown(self) -> str:
        rows = ["| model | minutes predicted | minutes with error | RMSE (USD) | MAE (USD) | skill vs persistence |",
                "|---|---:|---:|---:|---:|---:|"]
        for name, metrics in self.skill.items():
            rows.append(f"| {name} | {self.predicted_minutes.get(name, 0):,} | {metrics.get('rows', 0):,} | "
                        f"{metrics.get('rmse_usd', math.nan):.4f} | {metrics.get('mae_usd', math.nan):.4f} | "
                        f"{metrics.get('skill', math.nan):+.4f} |")
        return "\n".join(rows)


def compare_bars(live: pd.DataFrame, mapreduce: pd.DataFrame, offset_ms: int,
                 limit: int = 20) -> tuple[int, list[str]]:
    """(bars equal, the first differences): live bars (minute shifted back by ``offset_ms``) against MapReduce's."""
    live = live.assign(**{schema.MINUTE: live[schema.MINUTE] - pd.Timedelta(milliseconds=offset_ms)})
    left = live.set_index(schema.MINUTE)
    right = mapreduce.set_index(schema.MINUTE)
    differences: list[str] = []
    equal = 0
    for minute in sorted(set(left.index) | set(right.index)):
        label = minute.strftime("%H:%M")
        if minute not in right.index or minute not in left.index:
            differences.append(f"{label} {'no MapReduce bar' if minute not in right.index else 'no live bar'}")
            continue
        same = True
        for name in schema.BAR_MEASUREMENT_FIELDS:
            a, b = left.at[minute, name], right.at[minute, name]
            exact = name in INT_FIELDS
            if (a != b) if exact else not math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-12):
                same = False
                differences.append(f"{label} {name} {a!r} != {b!r}")
        equal += same
    return equal, differences[:limit]


# --- the replay -----------------------------------------------------------------------------------


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Replay:
    """One stored day replayed once: ``run()`` returns its ReplayReport (``prepare`` / ``start`` / ``finish`` /
    ``report`` are its steps)."""

    def __init__(self, storage: Storage, targets: ReplayTargets, symbol: str, date: str, speed: float = 60.0, *,
                 state_dir: Path | None = None, log: Callable[[str], None] = print, timeout_s: float = 600.0):
        if not speed > 0 or speed > 100_000:
            raise ReplayError(f"speed must be above 0 and at most 100000, got {speed}")
        try:
            self.day = Date.fromisoformat(date)
        except ValueError:
            raise ReplayError(f"date must be YYYY-MM-DD, got {date!r}") from None
        self.symbol = config.parse_symbols(symbol)[0]
        self.storage, self.targets, self.speed, self.log, self.timeout_s = storage, targets, float(speed), log, timeout_s
        self.date = self.day.isoformat()
        self.services = StreamServices(state_dir, extra={EMULATOR: ["-m", "btc_testkit.binance_emulator"]},
                                       name=SERVICES_DIR)
        self._emulator_port = 0
        self._workdir: Path | None = None  # the day's file, copied out of HDFS (prepare; removed by stop)
        self.day_start_ms = int(datetime(self.day.year, self.day.month, self.day.day, tzinfo=timezone.utc).timestamp()
                                * 1000)
        self.offset_ms = 0
        self.facts = TapeFacts()
        self.lead_in = TapeFacts()
        self._lead_in_path: Path | None = None
        self._day_path: Path | None = None
        self._started = self._started_wall = 0.0

    # -- steps ------------------------------------------------------------------------------------
    def _fetch(self, day: Date) -> Path | None:
        relative = schema.raw_trades_path("", self.symbol, day.isoformat()).lstrip("/")
        source = self.storage.path(relative)
        if not self.storage.fs.exists(source):
            return None
        local = self._workdir / source.rsplit("/", 1)[-1]
        with self.storage.fs.open(source) as stream, local.open("wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        return local

    def prepare(self) -> None:
        """The day's file (and the day before's tail) read and checked; the replay's namespace emptied."""
        self._workdir = Path(tempfile.mkdtemp(prefix=f"replay-{self.symbol}-{self.date}-"))
        self._day_path = self._fetch(self.day)
        if self._day_path is None:
            raise ReplayError(f"no stored trades of {self.symbol} on {self.date} in "
                              f"{self.storage.url(self.storage.path('raw/trades'))}: materialize raw_trades for "
                              f"{self.date} first (`btc-pipeline backfill --start {self.date} --end {self.date}`)")
        self.facts = scan(self._day_path)
        if not self.facts.trades:
            raise ReplayError(f"{self._day_path.name} has no trade that parses ({self.facts.malformed} malformed rows)")
        day_before = self._fetch(self.day - timedelta(days=1))
        if day_before is not None:
            # Only its last minutes are served: kept in a tape of their own as they are scanned.
            self._lead_in_path = self._workdir / "lead-in.csv"
            self.lead_in = scan(day_before, since_ms=self.day_start_ms - LEAD_IN_MINUTES * MINUTE_MS,
                                keep=self._lead_in_path)
            day_before.unlink()
            if self.lead_in.last_id is not None and self.lead_in.last_id >= self.facts.first_id:
                self.log(f"the day before's ids reach {self.lead_in.last_id}, not below {self.facts.first_id}: "
                         "no lead-in")
                self.lead_in = TapeFacts()
            if not self.lead_in.trades:
                self._lead_in_path = None
        self.log(f"{self.symbol} {self.date}: {self.facts.trades:,} trades (ids {self.facts.first_id}.."
                 f"{self.facts.last_id}, {self.facts.malformed} malformed rows skipped)"
                 + (f", a lead-in of {self.lead_in.trades:,} trades of the day before's last {LEAD_IN_MINUTES} minutes"
                    if self.lead_in.trades else ", no lead-in (the day before is not stored): the first ~15 minutes "
                    "get no prediction"))
        topic = self.targets.topic(self.symbol)
        deleted = kafka_io.delete_topics(self.targets.bootstrap_servers, [topic, schema.dlq_topic(topic)])
        for query in (spark_job.TRADES, spark_job.BARS):
            self.storage.fs.delete(self.storage.path(
                schema.checkpoint_dir("", CHECKPOINT_PREFIX + query).lstrip("/")), recursive=True)
        self._ensure_bucket()
        writer = self.targets.writer()
        try:
            writer.delete(f'{schema.SYMBOL_TAG}="{self.symbol}"')
        finally:
            writer.close()
        self.log(f"replay namespace emptied: topics {deleted or '(none yet)'}, checkpoints {CHECKPOINT_PREFIX}*, "
                 f"{self.symbol} in bucket {self.targets.bucket}")

    def _ensure_bucket(self) -> None:
        reader = self.targets.reader()
        try:
            exists = bool(reader.query(f'buckets() |> filter(fn: (r) => r.name == "{self.targets.bucket}")'))
        finally:
            reader.close()
        if exists:
            return
        if not self.targets.admin_token:
            raise ReplayError(f"InfluxDB has no bucket {self.targets.bucket!r}: create it (the pipeline's write and "
                              "read tokens cover every bucket of the org) or set BTC_INFLUX_TOKEN to let the replay")
        admin = Influx(self.targets.influx_url, self.targets.influx_org, self.targets.bucket, self.targets.admin_token)
        try:
            admin.ensure_bucket(self.targets.bucket)
        finally:
            admin.close()
        self.log(f"InfluxDB bucket {self.targets.bucket} created")

    def _tape(self) -> list[str]:
        """The files to serve, in id order: the day before's tail (if any), then the day."""
        return [str(path) for path in (self._lead_in_path, self._day_path) if path is not None]

    def start(self) -> None:
        """The Spark job first (so it reads the day from its start), then the emulator and the producer."""
        self._started, self._started_wall = time.monotonic(), time.time()
        env = self.targets.service_env(self.symbol, self.speed)
        self.services.start("spark-job", ["--checkpoint-prefix", CHECKPOINT_PREFIX, "--predictions-catch-up-minutes",
                                          str(DAY_MINUTES + LEAD_IN_MINUTES)], env=env)
        self._wait(self._spark_ready, 300, "the replay's Spark job writing its heartbeat")
        # The first trade served (the lead-in's, else the day's) falls in the next minute from now.
        now_ms = int(time.time() * 1000)
        first_minute = (now_ms // MINUTE_MS + 1) * MINUTE_MS + (LEAD_IN_MINUTES * MINUTE_MS if self.lead_in.trades else 0)
        self.offset_ms = first_minute - self.day_start_ms
        # The Binance emulator (btc_testkit) as a process of its own, as the local stack runs it: the product
        # package never imports the test kit.
        self._emulator_port = free_port()
        self.services.start(EMULATOR, ["--symbols", self.symbol, "--port", str(self._emulator_port),
                                       *(arg for path in self._tape() for arg in ("--replay-csv", path)),
                                       "--replay-offset-ms", str(self.offset_ms), "--speed", f"{self.speed:g}"])
        self._wait(lambda: self.emulator_stats() is not None, 60, "the replay's Binance emulator answering")
        self.services.start("producer", env={**env, "BTC_BINANCE_WS_URL": f"ws://127.0.0.1:{self._emulator_port}",
                                             "BTC_BINANCE_REST_URL": f"http://127.0.0.1:{self._emulator_port}"})
        self.log(f"replaying at {self.speed:g}x: the day starts {_iso(first_minute)}, ends "
                 f"{_iso(first_minute + DAY_MINUTES * MINUTE_MS)} (about {DAY_MINUTES * 60 / self.speed / 60:.0f} "
                 f"minutes from now); InfluxDB bucket {self.targets.bucket}")

    def finish(self) -> None:
        """Until every trade is sent, in Kafka and InfluxDB, the day's last bar written and the day scored."""
        total = self.facts.trades + self.lead_in.trades
        last_progress = 0.0
        stats: dict = {}
        while True:
            stats = self.emulator_stats() or stats  # a busy emulator that did not answer: its last counts
            sent = stats.get("sent_total", {}).get(self.symbol, 0)
            if sent >= total and stats.get("done"):
                break
            self._check_alive()
            if time.monotonic() - last_progress >= PROGRESS_SECONDS:
                last_progress = time.monotonic()
                self.log(self._progress(sent, total))
            time.sleep(0.5)
        self.log(f"all {total:,} trades sent in {time.monotonic() - self._started:.0f}s; waiting for the stream")
        topic = self.targets.topic(self.symbol)
        self._wait(lambda: sum(kafka_io.end_offsets(self.targets.bootstrap_servers, topic).values()) >= total,
                   self.timeout_s, f"all {total:,} trades in Kafka topic {topic}")
        self._wait(lambda: self._last_bar_id() == self.facts.last_id, self.timeout_s,
                   f"the bar with the day's last trade ({self.facts.last_id})")
        self._wait(lambda: self.count_trades()[0] >= self.facts.trades, self.timeout_s,
                   f"all {self.facts.trades:,} trades of the day in InfluxDB")
        if self.scored_models():
            newest_complete = self._last_bar_minute() - 1
            self._wait(lambda: (self._scorer_health().get("scored_through") or 0) >= newest_complete,
                       self.timeout_s, "the scorer through the day's newest complete minute")
        else:
            self.log("no saved model: the replay has no predictions (materialize trained_models first)")

    def scored_models(self) -> list[str]:
        """The models the replay's scorer has to score with: those it is set to use that have a saved version.

        Decided from storage, not from the scorer's heartbeat: a busy scorer may not have loaded them yet when
        the last trade lands, and a replay must not end before its predictions."""
        from btc_assets.ml import models

        wanted = config.model_list(config.get("BTC_STREAM_PREDICTIONS_MODELS"))
        return [name for name in wanted if models.newest_version(self.storage, name) is not None]

    def stop(self) -> None:
        for name in ("producer", "spark-job", EMULATOR):
            self.services.stop(name)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def refuse_if_running(self) -> None:
        """A replay's services still running (another replay): refused before anything is touched."""
        for name in SERVICES:
            process = self.services.processes[name]
            if process.is_running():
                raise ReplayError(f"a replay is running already ({name} pid {process.pid()}, {process.directory}): "
                                  "wait for it to end")

    def run(self) -> ReplayReport:
        self.refuse_if_running()  # outside the try: a refused replay stops nothing
        try:
            self.prepare()
            self.start()
            self.finish()
        finally:
            self.stop()
        report = self.report()
        for line in report.summary_lines():
            self.log(line)
        if report.skill:
            self.log("skill over the replayed day:\n" + report.skill_markdown())
        return report

    # -- what landed ------------------------------------------------------------------------------
    def _range(self) -> str:
        start = self.day_start_ms + self.offset_ms
        return f"range(start: {rfc3339(start)}, stop: {rfc3339(start + DAY_MINUTES * MINUTE_MS)})"

    def count_trades(self) -> tuple[int, int]:
        """(points, sum of their trade ids) of the day's trades in the replay bucket.

        Two aggregates InfluxDB computes in its storage engine (count, sum): a Flux reduce() over every point of
        a 2.1 M-trade day ran past the client's 30 s timeout."""
        ids = (f'from(bucket: "{self.targets.bucket}") |> {self._range()}'
               f' |> filter(fn: (r) => r._measurement == "{schema.TRADES_MEASUREMENT}"'
               f' and r.{schema.SYMBOL_TAG} == "{self.symbol}" and r._field == "trade_id") |> group()')
        counted, summed = self._query(ids + " |> count()"), self._query(ids + " |> sum()")
        return (int(counted[0]["_value"]), int(summed[0]["_value"])) if counted and summed else (0, 0)

    def _last_bar(self) -> dict:
        flux = (f'from(bucket: "{self.targets.bucket}") |> {self._range()}'
                f' |> filter(fn: (r) => r._measurement == "{schema.BARS_MEASUREMENT}"'
                f' and r.{schema.SYMBOL_TAG} == "{self.symbol}" and r._field == "last_trade_id") |> last()')
        rows = self._query(flux)
        return rows[0] if rows else {}

    def _last_bar_id(self) -> int | None:
        return self._last_bar().get("_value")

    def _last_bar_minute(self) -> int:
        bar = self._last_bar()
        return int(bar["_time"].timestamp()) // 60 if bar else 0

    def _health(self, component: str) -> dict:
        flux = (f'from(bucket: "{self.targets.bucket}") |> range(start: -1h, stop: 2d)'
                f' |> filter(fn: (r) => r._measurement == "{schema.HEALTH_MEASUREMENT}"'
                f' and r.{schema.COMPONENT_TAG} == "{component}")'
                ' |> last() |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
        rows = self._query(flux)
        return rows[0] if rows else {}

    def _scorer_health(self) -> dict:
        return self._health(scorer.COMPONENT)

    def _spark_ready(self) -> bool:
        self._check_alive(("spark-job",))
        point = self._health(spark_job.COMPONENTS[spark_job.TRADES])
        return bool(point) and point["_time"].timestamp() >= self._started_wall - 1.0

    def _query(self, flux: str) -> list[dict]:
        reader = self.targets.reader()
        try:
            return reader.query(flux)
        finally:
            reader.close()

    def _progress(self, sent: int, total: int) -> str:
        clock = ""
        done = sent / total if total else 1.0
        scored = self._scorer_health().get("scored_through")
        if scored:
            minute = scored * MINUTE_MS - self.offset_ms
            clock = f"; scored through {datetime.fromtimestamp(minute / 1000, tz=timezone.utc):%Y-%m-%d %H:%M} UTC"
        return f"replay {self.symbol} {self.date} at {self.speed:g}x: {sent:,} of {total:,} trades sent ({done:.0%}){clock}"

    def emulator_stats(self) -> dict | None:
        """The replay emulator's counters (``/control/stats``), None while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self._emulator_port}/control/stats", timeout=5) as reply:
                return json.loads(reply.read())
        except (OSError, ValueError):
            return None

    def _check_alive(self, names=SERVICES) -> None:
        for name in names:
            process = self.services.processes[name]
            if process.pid() is not None and not process.is_running():
                raise ReplayError(f"the replay's {name} exited: see {process.log_file}")

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``condition()``; a question that fails on the way (InfluxDB or Kafka slow to answer under load)
        counts as "not yet", and the last such failure is named if the time runs out."""
        deadline = time.monotonic() + timeout
        failure = ""
        while True:
            try:
                if condition():
                    return
            except ReplayError:
                raise
            except Exception as error:  # noqa: BLE001 - a timeout or refused connection: ask again
                failure = f" (last try: {type(error).__name__}: {str(error)[:200]})"
            self._check_alive()
            if time.monotonic() > deadline:
                raise ReplayError(f"replay: {what} not reached in {timeout:.0f}s{failure}")
            time.sleep(1.0)

    def report(self) -> ReplayReport:
        start = self.day_start_ms + self.offset_ms
        report = ReplayReport(self.symbol, self.date, self.speed, _iso(start), self.offset_ms, self.facts.trades,
                              self.lead_in.trades, self.facts.malformed + self.lead_in.malformed,
                              wall_seconds=time.monotonic() - self._started)
        report.trades_landed, id_sum = self.count_trades()
        report.trade_ids_match = report.trades_landed == self.facts.trades and id_sum == self.facts.id_sum
        last_minute = (start // MINUTE_MS) + DAY_MINUTES - 1
        reader = self.targets.reader()
        try:
            live = predictions.read_live_bars(reader, [self.symbol], DAY_MINUTES, through_minute=last_minute)
        finally:
            reader.close()
        report.live_bars = len(live)
        directory = self.storage.path(schema.minute_bars_dir("", self.symbol, self.date).lstrip("/"))
        if self.storage.fs.exists(directory):
            mapreduce = read_bars(self.storage.fs, directory)
            report.mapreduce_bars = len(mapreduce)
            report.bars_equal, report.bar_differences = compare_bars(live, mapreduce, self.offset_ms)
        else:
            report.bar_differences = [f"no MapReduce bars of {self.date}: materialize minute_bars to compare"]
        stored = self._predictions(start)
        for name, rows in stored.items():
            report.predicted_minutes[name] = int(rows["predicted_price"].notna().sum())
            report.errors_written[name] = int(rows["error"].notna().sum()) if "error" in rows else 0
        if "persistence" in stored:
            baseline = stored["persistence"]["predicted_price"]
            for name, rows in stored.items():
                known = rows.join(baseline.rename("baseline"), how="inner").dropna(subset=["actual_price", "baseline"])
                report.skill[name] = ({"rows": 0} if known.empty else
                                      {key: value for key, value in _metrics(known).items()})
        if stored:
            report.evaluation_png = evaluation_png(stored, self.symbol, self.offset_ms)
        return report

    def _predictions(self, start_ms: int) -> dict[str, pd.DataFrame]:
        flux = (f'from(bucket: "{self.targets.bucket}") |> {self._range()}'
                f' |> filter(fn: (r) => r._measurement == "{schema.PREDICTIONS_MEASUREMENT}"'
                f' and r.{schema.SYMBOL_TAG} == "{self.symbol}")'
                ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
        rows = self._query(flux)
        if not rows:
            return {}
        frame = pd.DataFrame(rows)
        out = {}
        for name in schema.MODELS:
            part = frame[frame[schema.MODEL_TAG] == name]
            if len(part):
                out[name] = part.set_index("_time")[[c for c in ("predicted_price", "actual_price", "error")
                                                    if c in part]].astype(float)
        return out


def evaluation_png(stored: dict[str, pd.DataFrame], symbol: str, offset_ms: int) -> bytes:
    """The replayed day's predictions as ``models.evaluation_png`` draws a test period: actual vs predicted close
    over the whole day, the rolling RMSE, predicted vs actual return; on the day's own times (shifted back)."""
    from btc_assets.ml import features, models

    frame = pd.DataFrame({f"predicted_{name}": rows["predicted_price"] for name, rows in stored.items()}).sort_index()
    known = [rows["actual_price"] for rows in stored.values() if "actual_price" in rows]
    if frame.empty or not known:
        return b""
    actual = pd.concat(known, axis=1).max(axis=1).reindex(frame.index)
    frame[features.NEXT_CLOSE] = actual
    # Persistence predicts the close of the minute before: the close each forecast was made from.
    frame[features.CLOSE] = frame.get(f"predicted_{models.PERSISTENCE}", actual.shift(1))
    made_from = pd.DatetimeIndex(frame.index) - pd.Timedelta(milliseconds=offset_ms) - pd.Timedelta(minutes=1)
    frame[schema.MINUTE] = made_from.strftime(schema.MINUTE_FORMAT)
    frame[features.MINUTE_INDEX] = made_from.asi8 // 60_000_000_000
    frame[features.SYMBOL] = symbol
    return models.evaluation_png(frame.reset_index(drop=True), list(stored), last_minutes=DAY_MINUTES,
                                 period="replayed")


def _metrics(known: pd.DataFrame) -> dict[str, float]:
    from btc_assets.ml import models

    metrics = models.price_metrics(known["actual_price"], known["predicted_price"], known["baseline"])
    return {"rows": int(metrics["rows"]), "rmse_usd": metrics["rmse_usd"], "mae_usd": metrics["mae_usd"],
            "skill": metrics["skill"] if not np.isnan(metrics["skill"]) else math.nan}

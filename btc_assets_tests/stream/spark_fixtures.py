"""Helpers for the Spark streaming job's tests: trades into Kafka, MapReduce reference bars, Influx read-back."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from btc_testkit import generator

from btc_assets.clients import kafka as kafka_io

from btc_assets.contracts import schema
from btc_assets.clients.influx import Influx
from btc_assets.processes import with_java_tmpdir
from btc_assets.stream.spark_job import StreamSettings
from btc_assets_tests.stream import helpers

REPO_ROOT = Path(__file__).resolve().parents[2]
MAPREDUCE_DIR = REPO_ROOT / "mapreduce"
DATE = "2025-04-01"
BUSY_HOUR_MS = 14 * 3_600_000  # 14:00 UTC, the generator's US session


# The Spark and cluster waits poll InfluxDB and the engines: every 0.5 s, not every 20 ms.
wait_for = partial(helpers.wait_for, interval=0.5)


# --- trades -------------------------------------------------------------------------------------


def _slice(day: generator.TradeDay, rows: np.ndarray) -> generator.TradeDay:
    arrays = {spec.name: getattr(day, spec.name)[rows] for spec in dataclasses.fields(day)
              if isinstance(getattr(day, spec.name), np.ndarray)}
    return dataclasses.replace(day, **arrays)


@dataclass
class MarketSlice:
    """``count`` consecutive trades of several symbols (the same minutes for all), as the live feed has them."""

    days: dict[str, generator.TradeDay]  # per symbol, only the trades in the slice
    events: list[tuple[str, dict]]  # (symbol, WebSocket event), in trade time order across symbols

    @property
    def count(self) -> int:
        return len(self.events)

    def trade_ids(self, symbol: str) -> list[int]:
        return self.days[symbol].trade_id.tolist()


def market_slice(symbols: tuple[str, ...], count: int, seed: int = 11, day_size: int = 4_000_000) -> MarketSlice:
    """The first ``count`` trades (all symbols together) from 14:00 UTC on of a busy generated day."""
    days = {symbol: generator.generate_day(symbol, DATE, seed=seed, trades=day_size) for symbol in symbols}
    start = {symbol: int(np.searchsorted(day.time_ms, day.time_ms[0] - day.time_ms[0] % 86_400_000 + BUSY_HOUR_MS))
             for symbol, day in days.items()}
    # Merge by time: the slice ends where `count` trades of all symbols together are reached.
    times = np.sort(np.concatenate([day.time_ms[start[s]:start[s] + count] for s, day in days.items()]))
    end_ms = int(times[count - 1])
    sliced = {}
    for symbol, day in days.items():
        rows = np.arange(start[symbol], len(day))
        rows = rows[day.time_ms[rows] <= end_ms]
        sliced[symbol] = _slice(day, rows)
    events = [(symbol, event) for symbol, day in sliced.items() for event in generator.live_events(day)]
    events.sort(key=lambda pair: (pair[1][schema.EVENT_TRADE_TIME], pair[0], pair[1][schema.EVENT_TRADE_ID]))
    extra = len(events) - count  # trades sharing the last millisecond: drop them from the end, per symbol
    for _ in range(extra):
        symbol, event = events.pop()
        sliced[symbol] = _slice(sliced[symbol], np.arange(len(sliced[symbol]) - 1))
    return MarketSlice(sliced, events)


class TradeFeed:
    """Sends messages to Kafka from a thread, like the producer does: key = symbol, in the given order.

    ``rate`` (messages/s) paces it; None sends as fast as Kafka takes them. With ``hold_at`` the feed
    stops after that many messages until ``release()`` (or ``join()``), so a test can act while the rest
    is still to come however slow the machine is. A send that Kafka finally refuses is sent again
    (duplicates are harmless downstream; a lost trade would fail the test).
    """

    def __init__(self, bootstrap: str, messages: list[tuple[str, bytes, bytes]], rate: float | None = None,
                 hold_at: int | None = None):
        self.bootstrap, self.messages, self.rate, self.hold_at = bootstrap, messages, rate, hold_at
        self._released = threading.Event()
        self.sent = 0
        self.resent = 0
        self.started_at = self.finished_at = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trade-feed", daemon=True)

    def start(self) -> TradeFeed:
        self._thread.start()
        return self

    def release(self) -> None:
        """Lets a feed that holds at ``hold_at`` send the rest."""
        self._released.set()

    def join(self, timeout: float = 300) -> None:
        self.release()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the feed sent only {self.sent}/{len(self.messages)} in {timeout}s")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            producer = kafka_io.producer(self.bootstrap, client_id="spark-job-test-feed", max_block_ms=120_000)
            self.started_at = time.monotonic()
            pending = []
            for number, (topic, key, value) in enumerate(self.messages):
                if number == self.hold_at:
                    producer.flush()
                    self._released.wait()
                    if self.rate:  # the rest paced from the release, not from before the hold
                        self.started_at = time.monotonic() - number / self.rate
                if self.rate:
                    lag = self.started_at + number / self.rate - time.monotonic()
                    if lag > 0:
                        time.sleep(lag)
                pending.append((producer.send(topic, key=key, value=value), topic, key, value))
                self.sent += 1
            producer.flush()
            for future, topic, key, value in pending:
                try:
                    future.get(timeout=300)
                except Exception:  # noqa: BLE001 - refused after all retries: send it once more
                    producer.send(topic, key=key, value=value).get(timeout=300)
                    self.resent += 1
            producer.close()
            self.finished_at = time.monotonic()
        except BaseException as error:  # noqa: BLE001 - reported by join()
            self.error = error


def trade_messages(market: MarketSlice, template: str, duplicate_every: int = 0) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of each event; with ``duplicate_every`` every n-th trade is sent twice in a row."""
    messages = []
    for number, (symbol, event) in enumerate(market.events):
        message = (schema.trade_topic(symbol, template), symbol.encode(), json.dumps(event).encode())
        messages.append(message)
        if duplicate_every and number % duplicate_every == 0:
            messages.append(message)
    return messages


def create_topics(bootstrap: str, settings: StreamSettings) -> None:
    for topic in settings.topics:
        kafka_io.ensure_topic(bootstrap, topic, partitions=settings.partitions)


# --- the MapReduce reference ------------------------------------------------------------------


def mapreduce_bars(day: generator.TradeDay, workdir: Path) -> list[str]:
    """The minute bars of ``day``'s trades by ``mapper.py | LC_ALL=C sort | reducer.py`` over its history CSV."""
    csv_path = workdir / schema.history_csv_name(day.symbol, day.date)
    generator.write_csv(day, csv_path)
    return mapreduce_csv_bars(csv_path)


def write_events_csv(events: list[dict], path: Path) -> Path:
    """Live trade events as a history CSV (the REST row of each: what data.binance.vision has of it)."""
    from btc_testkit.binance_emulator import historical_trade

    true, false = schema.TRUE_VALUES[0], schema.FALSE_VALUES[0]
    with open(path, "w") as file:
        for event in events:
            row = historical_trade(event)
            file.write(f"{row['id']},{row['price']},{row['qty']},{row['quoteQty']},{row['time']},"
                       f"{true if row['isBuyerMaker'] else false},{true if row['isBestMatch'] else false}\n")
    return path


def mapreduce_csv_bars(csv_path: Path) -> list[str]:
    """The bar lines ``mapper.py | LC_ALL=C sort | reducer.py`` make of a history CSV."""
    python = sys.executable
    script = (f"set -o pipefail; cat '{csv_path}' | '{python}' '{MAPREDUCE_DIR / 'mapper.py'}' | LC_ALL=C sort "
              f"| '{python}' '{MAPREDUCE_DIR / 'reducer.py'}'")
    result = subprocess.run(["bash", "-c", script], capture_output=True, cwd=MAPREDUCE_DIR)
    if result.returncode != 0:
        raise RuntimeError(f"mapper | sort | reducer failed (exit {result.returncode}): {result.stderr.decode()[-2000:]}")
    return result.stdout.decode().splitlines()


def parse_bar_line(line: str) -> tuple:
    """A MapReduce bar line as typed values, in schema.BAR_FIELDS order."""
    values = []
    for name, text in zip(schema.BAR_FIELDS, line.split(schema.BAR_SEPARATOR)):
        values.append(text if name == schema.MINUTE else int(text) if name in schema.INTEGER_BAR_FIELDS
                      else float(text))
    return tuple(values)


# --- InfluxDB read-back -------------------------------------------------------------------------


def influx_for(bucket: str, token_variable: str = "BTC_INFLUX_TOKEN") -> Influx:
    return Influx(os.environ["BTC_INFLUX_URL"], os.environ["BTC_INFLUX_ORG"], bucket, os.environ[token_variable],
                  timeout_ms=60_000)


def trade_count(influx: Influx) -> int:
    """How many `trades` points the bucket holds."""
    try:
        rows = influx.query(f'from(bucket: "{influx.bucket}") |> range(start: 0)'
                            f' |> filter(fn: (r) => r._measurement == "{schema.TRADES_MEASUREMENT}"'
                            ' and r._field == "trade_id") |> group() |> count()')
    except Exception:  # noqa: BLE001 - InfluxDB may be down on purpose
        return -1
    return int(rows[0]["_value"]) if rows else 0


def trade_points(influx: Influx) -> dict[str, list[tuple[int, int]]]:
    """Per symbol, (trade_id, point time in ns) of every `trades` point."""
    rows = influx.query(f'from(bucket: "{influx.bucket}") |> range(start: 0)'
                        f' |> filter(fn: (r) => r._measurement == "{schema.TRADES_MEASUREMENT}"'
                        ' and r._field == "trade_id")'
                        ' |> map(fn: (r) => ({r with time_ns: int(v: r._time)}))')
    found: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        found.setdefault(row[schema.SYMBOL_TAG], []).append((int(row["_value"]), int(row["time_ns"])))
    return found


def influx_bars(influx: Influx) -> dict[str, list[tuple]]:
    """Per symbol, the `bars_1m` points as typed tuples in schema.BAR_FIELDS order, by minute."""
    rows = influx.query(f'from(bucket: "{influx.bucket}") |> range(start: 0)'
                        f' |> filter(fn: (r) => r._measurement == "{schema.BARS_MEASUREMENT}")'
                        ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    found: dict[str, list[tuple]] = {}
    for row in sorted(rows, key=lambda r: r["_time"]):
        minute = row["_time"].strftime(schema.MINUTE_FORMAT)
        found.setdefault(row[schema.SYMBOL_TAG], []).append(
            (minute, *(row.get(name) for name in schema.BAR_MEASUREMENT_FIELDS)))
    return found


def health_points(influx: Influx) -> list[dict]:
    """Every `pipeline_health` point, fields pivoted into one dict per (component, time)."""
    return influx.query(f'from(bucket: "{influx.bucket}") |> range(start: -1d)'
                        f' |> filter(fn: (r) => r._measurement == "{schema.HEALTH_MEASUREMENT}")'
                        ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')


def expected_bars(market: MarketSlice, workdir: Path) -> dict[str, list[tuple]]:
    """Per symbol, the MapReduce bars of the slice's trades, typed."""
    return {symbol: [parse_bar_line(line) for line in mapreduce_bars(day, workdir)]
            for symbol, day in market.days.items()}


def bar_differences(streamed: dict[str, list[tuple]], expected: dict[str, list[tuple]],
                    rel_tol: float = 1e-9) -> list[str]:
    """Where streamed bars differ from the expected ones: ints and minutes exactly, floats to ``rel_tol``."""
    problems = []
    for symbol, bars in expected.items():
        got = streamed.get(symbol, [])
        if [bar[0] for bar in got] != [bar[0] for bar in bars]:
            problems.append(f"{symbol}: minutes {[bar[0] for bar in got]} != {[bar[0] for bar in bars]}")
            continue
        for have, want in zip(got, bars):
            for name, value, reference in zip(schema.BAR_FIELDS, have, want):
                if name in schema.INTEGER_BAR_FIELDS or name == schema.MINUTE:
                    same = value == reference
                else:
                    same = value is not None and abs(value - reference) <= rel_tol * abs(reference)
                if not same:
                    problems.append(f"{symbol} {want[0]} {name}: streamed {value!r}, MapReduce {reference!r}")
    return problems


def exactly_once_problems(influx: Influx, market: MarketSlice) -> list[str]:
    """Every trade of the slice exactly once in Influx `trades`, at schema.trade_point_time_ns."""
    points = trade_points(influx)
    problems = []
    for symbol, day in market.days.items():
        ids = [trade_id for trade_id, _ in points.get(symbol, [])]
        expected_ids = day.trade_id.tolist()
        if len(ids) != len(set(ids)) or sorted(ids) != expected_ids:
            problems.append(f"{symbol}: {len(ids)} points, {len(set(ids))} distinct ids, expected {len(expected_ids)}")
        times = dict(points.get(symbol, []))
        wrong = [trade_id for trade_id, trade_time in zip(expected_ids, day.time_ms.tolist())
                 if times.get(trade_id) != schema.trade_point_time_ns(trade_time, trade_id)]
        if wrong:
            problems.append(f"{symbol}: {len(wrong)} points not at trade_point_time_ns, e.g. id {wrong[0]}")
    extra = set(points) - set(market.days)
    if extra:
        problems.append(f"unexpected symbols {extra}")
    return problems


# --- a per-test stream: topics, bucket, checkpoints ---------------------------------------------


@dataclass
class StreamCase:
    """Everything one test's stream owns, so tests never share a topic, bucket or checkpoint."""

    settings: StreamSettings
    admin: Influx  # the admin token: creates and reads the bucket
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers

    def env(self) -> dict[str, str]:
        """The environment of a standalone job (``python -m btc_assets.stream.spark_job``) for this case."""
        settings = self.settings
        return {**os.environ, "BTC_SYMBOLS": ",".join(settings.symbols),
                "BTC_KAFKA_TOPIC_TEMPLATE": settings.topic_template, "BTC_INFLUX_BUCKET": settings.influx_bucket,
                "BTC_STORAGE_ROOT": settings.checkpoint_root.removeprefix(os.environ["BTC_HDFS_URL"]),
                "BTC_STREAM_TRIGGER": settings.trigger, "BTC_STREAM_HEALTH_SECONDS": str(settings.health_seconds),
                "BTC_STREAM_MAX_OFFSETS_PER_TRIGGER": str(settings.max_offsets_per_trigger)}


def new_case(unique: str, symbols: tuple[str, ...], **overrides) -> StreamCase:
    """Topics ``{symbol}-TRADES-<unique>``, bucket ``spark-<unique>``, checkpoints under ``/tests/spark-job/<unique>``."""
    bucket = f"spark-{unique}"
    admin = influx_for(bucket)
    bucket_id = admin.ensure_bucket(bucket)
    settings = StreamSettings.from_env(
        symbols=symbols, topic_template="{symbol}-TRADES-" + unique, influx_bucket=bucket,
        checkpoint_root=os.environ["BTC_HDFS_URL"] + f"/tests/spark-job/{unique}",
        trigger="1 second", health_seconds=1.0, restart_delay_seconds=2.0, **overrides)
    create_topics(settings.bootstrap_servers, settings)
    case = StreamCase(settings, admin)
    case.cleanup.append(lambda: admin.client.buckets_api().delete_bucket(bucket_id))
    case.cleanup.append(admin.close)
    return case


class JobProcess:
    """The job as its own process (``python -m btc_assets.stream.spark_job``), to kill and restart it."""

    def __init__(self, env: dict[str, str], log_path: Path):
        # The JVM's temporary files beside the log (pytest's tmp dir), as a stream service's are in its state dir:
        # what a killed driver leaves there (Spark's scratch, native libraries) does not stay in /tmp.
        self.tmp_dir = log_path.parent / "jvm-tmp"
        self.env = with_java_tmpdir(env, self.tmp_dir)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> JobProcess:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # Its own process group: SIGKILL to the group takes the JVM down with the Python driver.
        self.process = subprocess.Popen([sys.executable, "-m", "btc_assets.stream.spark_job"], env=self.env,
                                        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        return self

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM to the driver (a clean stop); its exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the driver and its JVM at once, as a crash would."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

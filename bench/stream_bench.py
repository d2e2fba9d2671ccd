"""Live-path benchmark: Binance emulator -> producer -> Kafka -> Spark Structured Streaming -> InfluxDB.

    ./pipeline stack up && .venv/bin/python bench/stream_bench.py [--rates 2000,5000,10000,15000] [--seconds 20]

The emulator, the producer and the Spark job run as separate processes (as in production: no shared
GIL), on their own topic, bucket and checkpoints, so the numbers never mix with other data; the
emulator's control endpoint sets the rate and pauses it between phases.
  * Latency at 300 trades/s for ``--latency-seconds``: a poller asks InfluxDB every 100 ms for the
    trades that appeared since its last look; latency = when a trade became queryable - its trade time
    (the emulator stamps T with the wall clock when it sends the trade). p50/p99 are printed.
  * Throughput: the emulator at each rate for ``--seconds``; a rate counts as sustained when every
    trade sent landed and the last one landed within ``--slack`` seconds of the last send (the
    pipeline kept up instead of building a backlog). At the end every trade id must be in InfluxDB
    exactly once.
The reference in the same script is the emulator's own send rate (what Binance would deliver):
the ratio printed is landed/sent throughput. Each service logs to a temporary directory: a run that failed
prints where it is and keeps it, a run that passed deletes it (``--stage predictions`` keeps its probe data there).

``--stage spark`` measures the Spark job into InfluxDB alone, at its own ceiling: ``--backlog`` generated
trades (one day's slice of the trade generator, as WebSocket events) are written to the topic directly
first (the Kafka write rate is printed too), then the Spark job starts on them; throughput = trades / time
from the first trade queryable to the last, with every trade id checked exactly once. The reference in
the same run is the rate the backlog was written to Kafka at.

``--stage predictions`` measures live predictions (btc_assets.stream.scorer) for ``--minutes`` of live stream:
LR, RF and GBT with the original hyperparameters (and persistence), trained on generated days and saved under
the run's own root, score each completed minute of two symbols at 300 trades/s. A poller asks InfluxDB every
250 ms for the newest bars and predictions: a bar is complete when its final value is queryable and so is a
bar of a later minute (until the next minute's trades arrive a bar may still change: the stream's own rule),
and the latency is from then to the first time its prediction (of the minute after) is queryable, per symbol
and model. Printed: p50/p99/max, the minutes that never got a prediction, and the latency from the minute's close
(the bar's end) as a reference; the target is p99 <= 5 s.

``--stage producer`` sends ``--backlog`` trades from a source faster than the producer (``Firehose``) into Kafka,
then the same trades through the whole path (source -> producer -> Kafka -> Spark -> InfluxDB). The whole path is
printed three ways: from the source's start (the producer's start-up and the JIT's warm-up of an idle Spark job
included), from the first trade queryable to the last, and sustained: the rate between the first looks that found
10 % and 90 % of the trades queryable (the target is judged on it). The reference in the same run is the
producer stage alone.

``--stage clients`` writes the same ``--backlog`` events with kafka-python (the reference) and with librdkafka
(confluent-kafka), both acks=all and idempotent, and prints the ratio; ``--stage producer --kafka-client
confluent-kafka`` runs the producer stage with librdkafka.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btc_assets import config  # noqa: E402
from btc_assets.clients import kafka as kafka_io  # noqa: E402
from btc_assets.contracts import schema  # noqa: E402
from btc_assets.clients.influx import Influx  # noqa: E402
from bench.stack_env import use_running_stack  # noqa: E402

SYMBOL = "BTCUSDT"


def _trade_ids_query(reader: Influx) -> str:
    return (f'from(bucket: "{reader.bucket}") |> range(start: 0)\n'
            f'  |> filter(fn: (r) => r._measurement == "{schema.TRADES_MEASUREMENT}" and r._field == "trade_id")\n'
            f'  |> group()')


def count_points(reader: Influx) -> int:
    """Points of the trades measurement (cheap enough to poll every second)."""
    points = reader.query(_trade_ids_query(reader) + " |> count()")
    return points[0]["_value"] if points else 0


def count_ids(reader: Influx) -> tuple[int, int]:
    """(points, distinct trade ids) of the trades measurement."""
    distinct = reader.query(_trade_ids_query(reader) + ' |> distinct(column: "_value") |> count()')
    return count_points(reader), (distinct[0]["_value"] if distinct else 0)


class LatencyProbe(threading.Thread):
    """Polls InfluxDB for trades newer than the last seen and records now - trade time for each."""

    def __init__(self, reader: Influx, since: float):
        super().__init__(daemon=True)
        self.reader, self.latencies, self.stopping = reader, [], threading.Event()
        # Only trades sent from ``since`` on (the phase's start): the phase before's last trades, long queryable,
        # would count as late by the time between the phases (the "stall" earlier runs reported).
        self.since = since
        self.polls: list[float] = []  # each poll's own duration: a slow answer delays what it finds
        self.lower: list[float] = []  # the same trades against the start of the poll before (not yet seen then)

    def run(self) -> None:
        since = self.since
        previous = time.time()
        while not self.stopping.is_set():
            started = time.time()
            rows = self.reader.query(
                f'from(bucket: "{self.reader.bucket}") |> range(start: time(v: {int(since * 1e9)}))\n'
                f'  |> filter(fn: (r) => r._measurement == "{schema.TRADES_MEASUREMENT}" and r._field == "trade_id")')
            seen = time.time()
            self.polls.append(seen - started)
            for row in rows:
                trade_time = row["_time"].timestamp()
                self.latencies.append(seen - trade_time)
                self.lower.append(max(0.0, previous - trade_time))
                since = max(since, trade_time + 1e-6)
            previous = started
            time.sleep(max(0.0, 0.1 - (time.time() - started)))


class Services:
    """The emulator, the producer and the Spark job as separate processes, as they run for real."""

    def __init__(self, run: str, bucket: str, port: int, symbols: tuple[str, ...] = (SYMBOL,),
                 logs: Path | None = None):
        self.run, self.port, self.template = run, port, "{symbol}-TRADES-bench-" + run
        self.root = f"/btc-bench/stream-{run}"
        self.env = dict(os.environ, BTC_SYMBOLS=",".join(symbols), BTC_KAFKA_TOPIC_TEMPLATE=self.template,
                        BTC_INFLUX_BUCKET=bucket, BTC_STORAGE_ROOT=self.root)
        self.logs = logs or Path(tempfile.mkdtemp(prefix="btc-stream-bench-"))
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.processes.append(subprocess.Popen([sys.executable, "-m", *args], env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1]))

    def fresh(self, suffix: str) -> Services:
        """Services of their own topic and storage root, writing to the same bucket."""
        return Services(f"{self.run}-{suffix}", self.env["BTC_INFLUX_BUCKET"], self.port,
                        tuple(self.env["BTC_SYMBOLS"].split(",")), logs=self.logs / suffix)

    def keep_logs_if(self, failed: bool) -> None:
        """A failed run keeps its services' logs (their place printed); a run that passed leaves nothing behind."""
        if failed:
            print(f"the services' logs: {self.logs}", file=sys.stderr)
        else:
            shutil.rmtree(self.logs, ignore_errors=True)

    def control(self, command: str, **query) -> dict:
        url = f"http://127.0.0.1:{self.port}/control/{command}"
        if command == "stats":
            return requests.get(url, timeout=10).json()
        return requests.post(url, params=query, timeout=10).json()

    def sent(self) -> int:
        return self.control("stats")["sent"].get(SYMBOL, 0)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()


def spark_job_beating(reader: Influx, timeout: float = 180) -> bool:
    """Whether the bench's Spark job wrote a heartbeat into its bucket within ``timeout`` seconds."""
    return wait_for(lambda: reader.query(
        f'from(bucket: "{reader.bucket}") |> range(start: -5m) '
        f'|> filter(fn: (r) => r._measurement == "{schema.HEALTH_MEASUREMENT}") |> limit(n: 1)'), timeout)


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


class LandingCurve(threading.Thread):
    """(monotonic time, trades queryable) about every half second, until ``total`` landed or ``timeout`` passed."""

    def __init__(self, reader: Influx, total: int, timeout: float):
        super().__init__(daemon=True)
        self.reader, self.total, self.timeout = reader, total, timeout
        self.curve: list[tuple[float, int]] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self.curve.append((time.monotonic(), count_points(self.reader)))
            if self.curve[-1][1] >= self.total:
                return
            time.sleep(0.5)


def steady_rate(curve: list[tuple[float, int]], total: int, low: float = 0.1, high: float = 0.9) -> float:
    """Trades/s between the first looks that found ``low`` and ``high`` of ``total`` landed: the rate once started,
    before the tail (the start-up of the producer, the JIT's warm-up and the last micro-batch left out). 0 when the
    looks never found ``high`` of them (the curve timed out, though the trades may have landed after it)."""
    start = next((point for point in curve if point[1] >= low * total), None)
    end = next((point for point in curve if point[1] >= high * total), None)
    if start is None or end is None:
        return 0.0
    return (end[1] - start[1]) / max(end[0] - start[0], 1e-9)


def run_phase(services: Services, reader: Influx, rate: float, seconds: float, slack: float,
              probe: bool = False) -> dict:
    landed_before, _ = count_ids(reader)
    sent_before = services.sent()
    services.control("rate", value=rate)
    latency = LatencyProbe(reader, since=time.time()) if probe else None
    started = time.monotonic()
    services.control("resume")
    if latency:
        latency.start()
    time.sleep(seconds)
    services.control("pause")
    sent_done = time.monotonic()
    sent = services.sent() - sent_before
    wait_for(lambda: count_ids(reader)[0] - landed_before >= sent, max(120.0, seconds * 4))
    landed_done = time.monotonic()
    if latency:
        time.sleep(1)
        latency.stopping.set()
        latency.join()
    landed = count_ids(reader)[0] - landed_before
    result = {"rate": rate, "trades": sent, "landed": landed, "complete": landed == sent,
              "throughput": landed / (landed_done - started), "kept_up": landed_done - sent_done <= slack,
              "sent_per_s": sent / (sent_done - started)}
    if latency and latency.latencies:
        ordered = sorted(latency.latencies)
        result["p50"] = statistics.median(ordered)
        result["p99"] = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        lower, polls = sorted(latency.lower), sorted(latency.polls)
        print(f"latency bounds: a trade was not yet queryable when the poll before the one that found it started: "
              f"p50 >= {statistics.median(lower):.2f} s, p99 >= {lower[int(0.99 * (len(lower) - 1))]:.2f} s; "
              f"the poller's own queries: p50 {statistics.median(polls) * 1000:.0f} ms, "
              f"p99 {polls[int(0.99 * (len(polls) - 1))] * 1000:.0f} ms, max {polls[-1] * 1000:.0f} ms", flush=True)
        # Where the latency goes: the trades query's micro-batch durations in the job's heartbeats (every 5 s).
        batches = sorted(row["_value"] for row in reader.query(
            f'from(bucket: "{reader.bucket}") |> range(start: -{int(seconds + 30)}s)'
            f' |> filter(fn: (r) => r._measurement == "{schema.HEALTH_MEASUREMENT}" and r.component == "spark_trades"'
            ' and r._field == "batch_duration_ms")'))
        if batches:
            print(f"trades micro-batch duration over {len(batches)} heartbeats: p50 {statistics.median(batches):.0f} ms, "
                  f"max {batches[-1]:.0f} ms", flush=True)
    return result


def _backlog_values(trades: int) -> list[bytes]:
    """``trades`` generated trade events of one day, encoded as Binance sends them."""
    from btc_testkit import generator

    day = generator.generate_day(SYMBOL, "2025-04-01", seed=7, trades=trades)
    return [json.dumps(event).encode() for event in generator.live_events(day)]


def _write(bootstrap: str, topic: str, values: list[bytes], client: str, **overrides) -> float:
    """``values`` written to ``topic`` the producer's way (keyed by symbol, ``kafka_io.send_reported``, one refusal
    hook) with ``client``, flushed; the seconds it took. Raises if any record was refused."""
    kafka_io.ensure_topic(bootstrap, topic, partitions=int(os.environ.get("BTC_KAFKA_PARTITIONS", "3")))
    refused: list[Exception] = []

    def on_refused(error: Exception, *_) -> None:
        refused.append(error)

    key = SYMBOL.encode()  # as the producer does: one symbol's trades are one partition (one Spark task)
    producer = kafka_io.producer(bootstrap, client=client, **overrides)
    started = time.monotonic()
    for value in values:
        kafka_io.send_reported(producer, topic, key, value, None, on_refused)
    producer.flush()
    elapsed = time.monotonic() - started
    producer.close()
    if refused:
        raise RuntimeError(f"{client}: {len(refused):,} of {len(values):,} records refused: {refused[:3]}")
    return elapsed


def write_backlog(services: Services, trades: int, client: str = "kafka-python") -> tuple[list[bytes], float]:
    """``trades`` generated trades written to the run's topic directly, as the producer writes them, with ``client``
    (--kafka-client): (the values, seconds the write took)."""
    topic = schema.trade_topic(SYMBOL, services.template)
    values = _backlog_values(trades)
    written_s = _write(os.environ["BTC_KAFKA_BOOTSTRAP_SERVERS"], topic, values, client, linger_ms=50,
                       batch_size=1024 * 1024, client_id="stream-bench-backlog")
    print(f"backlog: {len(values):,} trades written to {topic} in {written_s:.1f}s = "
          f"{len(values) / written_s:,.0f} trades/s ({client}, acks=all, idempotent)", flush=True)
    return values, written_s


def clients_stage(args, reader: Influx, services: Services) -> int:  # noqa: ARG001 - a stage's signature
    """The producer's Kafka client at its own ceiling: the same ``--backlog`` trade events written the producer's way
    (``kafka_io.send_reported``) with kafka-python (the reference) and, in the same run, with librdkafka
    (confluent-kafka), both as the producer configures them (acks=all, idempotent); each topic's end offsets checked."""
    bootstrap = os.environ["BTC_KAFKA_BOOTSTRAP_SERVERS"]
    values = _backlog_values(args.backlog)
    rates = {}
    for client in kafka_io.PRODUCER_CLIENTS:
        topic = schema.trade_topic(SYMBOL, services.template) + "-" + client
        elapsed = _write(bootstrap, topic, values, client, client_id="stream-bench-clients")
        landed = sum(kafka_io.end_offsets(bootstrap, topic).values())
        rates[client] = len(values) / elapsed
        print(f"{client}: {len(values):,} trades in {elapsed:.1f}s = {rates[client]:,.0f} trades/s; "
              f"{landed:,} records in {topic}", flush=True)
        if landed != len(values):
            print(f"{client}: {landed:,} records in Kafka, {len(values):,} sent", file=sys.stderr)
            return 1
    print(f"ratio confluent-kafka / kafka-python: {rates['confluent-kafka'] / rates['kafka-python']:.2f} "
          "(acks=all, idempotent, the same events, same run)", flush=True)
    return 0


def batches_stage(args, reader: Influx, services: Services) -> int:
    """Where a trades micro-batch's time goes: the Spark job in this process over a backlog, 200 trades a batch (a
    live batch at 300 trades/s), its trades query's progress durations (p50 of the last 60 batches), with the
    checkpoints in HDFS (the contract's place) as the job runs, then with Hadoop's default delay before an HDFS
    file's close asks again (the lever, jvm.HDFS_CLIENT_CONF), and on the local disk, all in the same run."""
    from btc_assets.clients.jvm import HDFS_CLIENT_CONF
    from btc_assets.clients.spark import build_session
    from btc_assets.defs.resources import SparkResource
    from btc_assets.stream.spark_job import TRADES, SparkStreamJob, StreamSettings

    write_backlog(services, args.backlog)
    env = os.environ
    hdfs = env["BTC_HDFS_URL"].rstrip("/") + services.root
    hadoop_default = {"dfs.client.block.write.locateFollowingBlock.initial.delay.ms": "400",
                      "dfs.client.block.write.locateFollowingBlock.retries": "5"}
    assert hadoop_default.keys() == HDFS_CLIENT_CONF.keys()
    places = (("HDFS", hdfs + "/job", {}), ("HDFS, Hadoop's default close delay", hdfs + "/default", hadoop_default),
              ("local disk", Path(tempfile.mkdtemp(prefix="btc-bench-checkpoints-")).as_uri(), {}))
    medians = {}
    for place, root, hadoop in places:
        session = SparkResource(master=env["BTC_SPARK_MASTER"], driver_memory=env["BTC_SPARK_DRIVER_MEMORY"],
                                hdfs_url=env["BTC_HDFS_URL"], jars=env["BTC_SPARK_JARS"],
                                # the streaming job's JVM, not a batch session's
                                driver_java_options=config.get("BTC_STREAM_DRIVER_JAVA_OPTIONS"),
                                ).settings("btc-stream-bench-batches")
        # A file system client of this session's own, so each place runs with its own settings.
        session.extra.update({"spark.hadoop.fs.hdfs.impl.disable.cache": "true",
                              **{f"spark.hadoop.{key}": value for key, value in hadoop.items()}})
        spark = build_session(session)
        settings = StreamSettings.from_env(topic_template=services.template, influx_bucket=services.env["BTC_INFLUX_BUCKET"],
                                           checkpoint_root=root, max_offsets_per_trigger=200, predictions_models=())
        job = SparkStreamJob(settings, spark).start()
        time.sleep(args.seconds)
        progress = job.queries[TRADES].recentProgress[-60:]
        job.stop(120)
        spark.stop()
        medians[place] = {key: statistics.median(batch.durationMs.get(key, 0) for batch in progress)
                          for key in sorted({key for batch in progress for key in batch.durationMs})}
        print(f"checkpoints on {place}: {len(progress)} batches of p50 "
              f"{statistics.median(batch.numInputRows for batch in progress):.0f} trades; p50 ms: "
              + ", ".join(f"{key} {value:.0f}" for key, value in medians[place].items()), flush=True)
    job_hdfs, default_hdfs, disk = (medians[place]["triggerExecution"] for place, _, _ in places)
    print(f"a trades batch, p50: checkpoints in HDFS {job_hdfs:.0f} ms; with Hadoop's default close delay "
          f"{default_hdfs:.0f} ms (ratio {job_hdfs / default_hdfs:.2f}); on the local disk {disk:.0f} ms "
          f"(ratio HDFS / local {job_hdfs / disk:.2f})")
    return 0


def spark_stage(args, reader: Influx, services: Services) -> int:
    """The Spark job alone: a backlog written to Kafka directly, then drained into InfluxDB."""
    values, written_s = write_backlog(services, args.backlog, args.kafka_client)
    services.start("spark-job", "btc_assets.stream.spark_job", "--log-level", "WARNING")
    if not wait_for(lambda: count_points(reader) > 0, 300):
        print(f"no trade landed; see {services.logs}", file=sys.stderr)
        return 1
    first = changed = time.monotonic()
    points = 0
    # Until all landed, or 30 s without a new point (stuck), or 15 minutes.
    while time.monotonic() - first < 900 and time.monotonic() - changed < 30:
        landed = count_points(reader)
        if landed != points:
            points, changed = landed, time.monotonic()
        if points >= len(values):
            break
        time.sleep(1)
    drained_s = time.monotonic() - first
    last_count = points
    points, distinct = count_ids(reader)
    rate = points / drained_s
    print(f"spark stage: {points:,} points, {distinct:,} distinct ids of {len(values):,} in {drained_s:.1f}s after "
          f"the first landed = {rate:,.0f} trades/s sustained (Kafka -> Spark -> InfluxDB); "
          f"ratio to the Kafka write rate {rate / (len(values) / written_s):.2f}")
    print(f"target >= 50,000 trades/s with zero loss: "
          f"{'met' if rate >= 50_000 and points == distinct == len(values) else 'NOT met'}"
          f"{'' if points == distinct == len(values) else f' (LOSS or duplicates; last count {last_count:,})'}")
    return 0 if points == distinct == len(values) else 1


class Firehose(threading.Thread):
    """A Binance trade stream at the socket's speed, the producer stage's source: one symbol's trade events encoded
    as WebSocket text frames up front (the emulator's own framing and JSON), then sent ``chunk`` frames per write
    to the first client of ``/ws/<symbol>@trade``. No pacing, no per-trade Python: it goes as fast as its reader
    takes. ``raw=True`` answers any connection without a handshake (a plain socket reader: the source's ceiling)."""

    def __init__(self, events: list[dict], raw: bool = False, chunk: int = 2_000):
        from btc_testkit.binance_emulator import _OP_TEXT, event_json, frame

        super().__init__(daemon=True)
        frames = [frame(_OP_TEXT, event_json(event)) for event in events]
        self.chunks = [b"".join(frames[start:start + chunk]) for start in range(0, len(frames), chunk)]
        self.trades, self.raw = len(frames), raw
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.started = self.finished = 0.0
        self.release = threading.Event()  # the connection stays open (a closed stream makes the producer reconnect)

    def run(self) -> None:
        from btc_testkit.binance_emulator import websocket_accept

        connection, _ = self.server.accept()
        with connection:
            if not self.raw:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(4096)
                key = next(line.split(b":", 1)[1].strip().decode() for line in request.split(b"\r\n")
                           if line.lower().startswith(b"sec-websocket-key:"))
                connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                   b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                                   + websocket_accept(key).encode() + b"\r\n\r\n")
            self.started = time.monotonic()
            for chunk in self.chunks:
                connection.sendall(chunk)
            self.finished = time.monotonic()
            self.release.wait(600)
        self.server.close()

    @property
    def rate(self) -> float:
        return self.trades / (self.finished - self.started)


def source_ceiling(events: list[dict]) -> float:
    """Trades/s the firehose pushes into a socket whose reader only drains it: the source's own ceiling."""
    source = Firehose(events, raw=True)
    source.start()
    with socket.create_connection(("127.0.0.1", source.port)) as reader:
        total = sum(len(chunk) for chunk in source.chunks)
        while total > 0:
            total -= len(reader.recv(1 << 20))
    source.release.set()
    source.join(5)
    return source.rate


def producer_stage(args, reader: Influx, services: Services) -> int:
    """The producer at its own ceiling (a source faster than it, into Kafka), then the whole path on the same
    source (producer -> Kafka -> Spark -> InfluxDB), each trade id checked once in InfluxDB."""
    from btc_testkit import generator

    events = list(generator.live_events(generator.generate_day(SYMBOL, "2025-04-01", seed=11, trades=args.backlog)))
    ceiling = source_ceiling(events)
    print(f"source: {len(events):,} trades into a plain socket reader at {ceiling:,.0f} trades/s (its ceiling)",
          flush=True)
    # The whole path on a topic of its own, so its Spark job reads only that stage's trades.
    whole = services.fresh("e2e")
    try:
        rate = _firehose_into(services, events, args.kafka_client)
        print(f"producer stage: {len(events):,} trades in Kafka at {rate:,.0f} trades/s; ratio to the source's "
              f"ceiling {rate / ceiling:.4f} (the source is not what bounds it)", flush=True)
        services.stop()  # its source is gone: no producer reconnecting beside the whole path's
        whole.start("spark-job", "btc_assets.stream.spark_job", "--log-level", "WARNING")
        spark_job_beating(reader)
        started = time.monotonic()
        landing = LandingCurve(reader, len(events), 600)
        landing.start()
        kafka_rate = _firehose_into(whole, events, args.kafka_client)
        landing.join()
        curve = landing.curve
        landed_s = curve[-1][0] - started
    finally:
        whole.stop()
    points, distinct = count_ids(reader)
    once = points == distinct == len(events)
    first = next((t for t, landed in curve if landed > 0), curve[-1][0])
    from_first = points / max(curve[-1][0] - first, 1e-9) if points else 0.0
    steady = steady_rate(curve, len(events)) if points >= len(events) else 0.0
    print(f"end to end: {points:,} points, {distinct:,} distinct ids of {len(events):,} in {landed_s:.1f}s = "
          f"{points / landed_s:,.0f} trades/s from the source's start (source -> producer -> Kafka -> Spark -> "
          f"InfluxDB; into Kafka at {kafka_rate:,.0f}/s); {from_first:,.0f}/s from the first "
          f"trade queryable to the last; sustained (10 % to 90 % landed) {steady:,.0f}/s, ratio to the producer "
          f"stage alone {steady / rate:.2f}; "
          f"target >= 30,000 trades/s sustained: {'met' if steady >= 30_000 and once else 'NOT met'}"
          f"{'' if once else ' (LOSS or duplicates)'}")
    return 0 if once else 1


def _firehose_into(services: Services, events: list[dict], client: str) -> float:
    """A Firehose of ``events`` read by the producer into the services' topic; trades/s from the first frame sent
    to the last trade in Kafka."""

    topic = schema.trade_topic(SYMBOL, services.template)
    source = Firehose(events)
    source.start()
    services.start("producer", "btc_assets.stream.producer", "--ws-url", f"ws://127.0.0.1:{source.port}",
                   "--rest-url", "http://127.0.0.1:9", "--no-resume", "--log-level", "WARNING",
                   "--kafka-client", client)
    try:
        wait_for(lambda: source.started > 0, 120)
        bootstrap = os.environ["BTC_KAFKA_BOOTSTRAP_SERVERS"]
        wait_for(lambda: sum(kafka_io.end_offsets(bootstrap, topic).values()) >= len(events), 600)
        return len(events) / (time.monotonic() - source.started)
    finally:
        source.release.set()


class PredictionProbe(threading.Thread):
    """Every 250 ms: the newest bars and predictions, and when each value was first queryable."""

    def __init__(self, reader: Influx):
        super().__init__(daemon=True)
        self.reader, self.stopping = reader, threading.Event()
        self.bar_seen: dict[tuple[str, int], list[tuple[float, int]]] = {}  # (symbol, minute) -> [(seen, trades)]
        self.prediction_seen: dict[tuple[str, str, int], float] = {}  # (symbol, model, minute predicted) -> seen

    def run(self) -> None:
        bucket = self.reader.bucket
        self.first_look = time.time() + 1.0
        while not self.stopping.is_set():
            started = time.time()
            try:
                bars = self.reader.query(
                    f'from(bucket: "{bucket}") |> range(start: -3m)'
                    f' |> filter(fn: (r) => r._measurement == "{schema.BARS_MEASUREMENT}" and r._field == "trades")')
                predicted = self.reader.query(
                    f'from(bucket: "{bucket}") |> range(start: -4m, stop: 2m)'
                    f' |> filter(fn: (r) => r._measurement == "{schema.PREDICTIONS_MEASUREMENT}"'
                    ' and r._field == "predicted_price")')
            except Exception as error:  # noqa: BLE001 - a slow answer: the next look will do
                print(f"probe: {error}", file=sys.stderr)
                continue
            seen = time.time()
            for row in bars:
                history = self.bar_seen.setdefault((row[schema.SYMBOL_TAG], int(row["_time"].timestamp()) // 60), [])
                if not history or history[-1][1] != row["_value"]:
                    history.append((seen, int(row["_value"])))
            for row in predicted:
                key = (row[schema.SYMBOL_TAG], row[schema.MODEL_TAG], int(row["_time"].timestamp()) // 60)
                self.prediction_seen.setdefault(key, seen)
            time.sleep(max(0.0, 0.25 - (time.time() - started)))

    def latencies(self, models: tuple[str, ...]) -> tuple[list[float], list[float], list[tuple[str, int]]]:
        """(bar complete -> prediction, minute closed -> prediction, minutes without one), seconds."""
        from_bar, from_close, missed = [], [], []
        newest = max(minute for _, minute in self.bar_seen)
        first_seen: dict[int, float] = {}  # minute -> when a bar of it (any symbol) was first queryable
        for (_, minute), history in self.bar_seen.items():
            first_seen[minute] = min(first_seen.get(minute, history[0][0]), history[0][0])
        for (symbol, minute), history in sorted(self.bar_seen.items()):
            if minute >= newest - 1:
                continue  # still trading, or maybe not scored yet
            # Complete: its final value queryable, and a bar of a later minute too (the stream's own rule: until
            # the next minute's trades arrive, the bar may still change).
            complete = max(history[-1][0], min(seen for later, seen in first_seen.items() if later > minute))
            if complete <= self.first_look:
                continue  # final before the probe's first look: when it completed is unknown
            for model in models:
                seen = self.prediction_seen.get((symbol, model, minute + 1))
                if seen is None:
                    missed.append((symbol, minute))
                    continue
                from_bar.append(seen - complete)
                from_close.append(seen - (minute + 1) * 60)
        return from_bar, from_close, missed


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered):.2f} s, p99 {p99:.2f} s, max {ordered[-1]:.2f} s over {len(ordered)}"


def predictions_stage(args, reader: Influx, services: Services, symbols: tuple[str, ...]) -> int:
    """Live predictions for ``--minutes``: bar complete -> prediction queryable."""
    from btc_assets.clients.storage import Storage
    from btc_assets.defs.resources import SparkResource
    from btc_assets.ml import features, models
    from btc_testkit import bars as known_bars

    env = os.environ
    storage = Storage.for_url(env["BTC_HDFS_URL"], services.root, webhdfs_url=env["BTC_WEBHDFS_URL"])
    spark = SparkResource(master=env["BTC_SPARK_MASTER"], driver_memory=env["BTC_SPARK_DRIVER_MEMORY"],
                          hdfs_url=env["BTC_HDFS_URL"]).session("btc-stream-bench-models")
    started = time.monotonic()
    bars = known_bars.generated_bars("2025-03-01", 5, trades_per_day=200_000, seed=5, taker_signal=0.0015)
    frame = features.build_training_frame(spark.createDataFrame(bars.assign(symbol=SYMBOL)))
    train, validation, test = features.chronological_split(frame, features.plan_split(features.training_days(frame)))
    results = models.train_models(train, validation, test, models.ModelParams(), log=lambda _: None)
    for name, result in results.models.items():
        models.save_model(storage, name, "v1", result.model, result.metrics_document(version="v1"))
    spark.stop()
    names = tuple(results.models)
    print(f"models {', '.join(names)} (original hyperparameters) trained and saved under {services.root} in "
          f"{time.monotonic() - started:.0f}s", flush=True)
    services.start("spark-job", "btc_assets.stream.spark_job", "--log-level", "WARNING")
    services.start("binance-emulator", "btc_testkit.binance_emulator", "--port", str(args.port), "--rate", "300",
                   "--symbols", ",".join(symbols), "--seed", "7", "--warmup-minutes", "20")
    services.start("producer", "btc_assets.stream.producer", "--ws-url", f"ws://127.0.0.1:{args.port}",
                   "--rest-url", f"http://127.0.0.1:{args.port}", "--log-level", "WARNING")
    probe = PredictionProbe(reader)
    if not wait_for(lambda: reader.query(
            f'from(bucket: "{reader.bucket}") |> range(start: -10m, stop: 2m) '
            f'|> filter(fn: (r) => r._measurement == "{schema.PREDICTIONS_MEASUREMENT}") |> limit(n: 1)'), 300):
        print(f"no prediction in 300 s; see {services.logs}", file=sys.stderr)
        return 1
    probe.start()
    print(f"live predictions of {', '.join(symbols)} at 300 trades/s for {args.minutes:.0f} minutes …", flush=True)
    time.sleep(args.minutes * 60)
    probe.stopping.set()
    probe.join()
    raw = services.logs / "prediction-probe.json"  # what was seen when, to recompute anything from
    raw.write_text(json.dumps({"bars": [[symbol, minute, history] for (symbol, minute), history in probe.bar_seen.items()],
                               "predictions": [[*key, seen] for key, seen in probe.prediction_seen.items()]}))
    print(f"probe data: {raw}")
    from_bar, from_close, missed = probe.latencies(names)
    print(f"bar complete -> prediction queryable: {_percentiles(from_bar)} (symbol x model x minute)")
    print(f"minute closed -> prediction queryable (reference: includes the bars trigger, "
          f"BTC_STREAM_BARS_TRIGGER): {_percentiles(from_close)}")
    print(f"minutes with a complete bar but no prediction: {len(missed)}" + (f" e.g. {missed[:5]}" if missed else ""))
    p99 = sorted(from_bar)[min(len(from_bar) - 1, int(0.99 * len(from_bar)))]
    print(f"target p99 <= 5 s for every symbol: {'met' if p99 <= 5.0 and not missed else 'NOT met'} "
          f"(ratio p99 / 5 s = {p99 / 5.0:.2f})")
    return 0 if not missed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="2000,5000,10000,15000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--warmup-seconds", type=float, default=30.0,
                        help="300 trades/s before the latency run, not measured (0: measure from the first trade)")
    parser.add_argument("--slack", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=18799, help="the emulator's port")
    parser.add_argument("--stage", default="all",
                        choices=("all", "spark", "producer", "predictions", "batches", "clients"),
                        help="all: emulator -> producer -> Kafka -> Spark -> InfluxDB; spark: Kafka -> Spark -> "
                             "InfluxDB alone, on a backlog written to Kafka first; producer: the producer from a "
                             "source faster than it, then the whole path on that source; predictions: bar complete -> "
                             "prediction queryable, over --minutes of live stream; clients: kafka-python against "
                             "confluent-kafka (librdkafka) writing the same --backlog, acks=all and idempotent")
    parser.add_argument("--kafka-client", default="kafka-python", choices=kafka_io.PRODUCER_CLIENTS,
                        help="--stage producer: the producer's Kafka client; --stage spark: the backlog's")
    parser.add_argument("--minutes", type=float, default=30.0, help="--stage predictions: how long to measure")
    parser.add_argument("--backlog", type=int, default=1_500_000,
                        help="--stage spark: trades in the backlog; --stage producer: trades the source sends")
    args = parser.parse_args()

    if not use_running_stack("hadoop", "kafka", "influxdb"):
        return 2
    run = uuid.uuid4().hex[:8]
    admin = Influx(os.environ["BTC_INFLUX_URL"], os.environ["BTC_INFLUX_ORG"], "", os.environ["BTC_INFLUX_TOKEN"])
    bucket = f"bench-{run}"
    bucket_id = admin.ensure_bucket(bucket)
    reader = Influx(os.environ["BTC_INFLUX_URL"], os.environ["BTC_INFLUX_ORG"], bucket,
                    os.environ["BTC_INFLUX_READ_TOKEN"])
    symbols = (SYMBOL, "ETHUSDT") if args.stage == "predictions" else (SYMBOL,)
    services = Services(run, bucket, args.port, symbols)
    if args.stage == "predictions":
        try:
            return predictions_stage(args, reader, services, symbols)
        finally:
            services.stop()
            admin.client.buckets_api().delete_bucket(bucket_id)
            from btc_assets.clients.storage import Storage

            Storage.for_url(os.environ["BTC_HDFS_URL"], services.root,
                            webhdfs_url=os.environ["BTC_WEBHDFS_URL"]).fs.delete(services.root, recursive=True)
    if args.stage in ("spark", "producer", "batches", "clients"):
        stage = {"spark": spark_stage, "producer": producer_stage, "batches": batches_stage,
                 "clients": clients_stage}[args.stage]
        code = 1
        try:
            code = stage(args, reader, services)
            return code
        finally:
            services.stop()
            admin.client.buckets_api().delete_bucket(bucket_id)
            services.keep_logs_if(code != 0)
    results, exactly_once = [], False
    try:
        services.start("spark-job", "btc_assets.stream.spark_job", "--log-level", "WARNING")
        if not spark_job_beating(reader):
            print(f"the Spark job did not start; see {services.logs}", file=sys.stderr)
            return 1
        services.start("binance-emulator", "btc_testkit.binance_emulator", "--port", str(args.port),
                       "--rate", "300", "--symbols", SYMBOL, "--seed", "7", "--history-limit", "20000000")
        time.sleep(2)
        services.control("pause")
        services.start("producer", "btc_assets.stream.producer", "--ws-url", f"ws://127.0.0.1:{args.port}",
                       "--rest-url", f"http://127.0.0.1:{args.port}", "--no-resume", "--log-level", "WARNING")
        wait_for(lambda: services.control("stats")["open_connections"] > 0, 60)
        if args.warmup_seconds > 0:  # the first batches compile the query's code: a start, not the steady state
            print(f"warm-up: 300 trades/s for {args.warmup_seconds:.0f}s (not measured) …", flush=True)
            run_phase(services, reader, 300, args.warmup_seconds, args.slack)
        print(f"latency run: 300 trades/s for {args.latency_seconds:.0f}s …", flush=True)
        results.append(run_phase(services, reader, 300, args.latency_seconds, args.slack, probe=True))
        for rate in (float(value) for value in args.rates.split(",")):
            print(f"throughput run: {rate:,.0f} trades/s for {args.seconds:.0f}s …", flush=True)
            results.append(run_phase(services, reader, rate, args.seconds, args.slack))
        points, distinct = count_ids(reader)
        total_sent = services.sent()
        exactly_once = points == distinct == total_sent
    finally:
        services.stop()
        admin.client.buckets_api().delete_bucket(bucket_id)
        services.keep_logs_if(not exactly_once)  # failed, stopped early or lost a trade: the logs say why
    print("\n| target rate (trades/s) | sent | sent/s | landed | landed/s | kept up | p50 | p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        latency = (f"{result['p50']:.2f} s | {result['p99']:.2f} s" if "p50" in result else "- | -")
        print(f"| {result['rate']:,.0f} | {result['trades']:,} | {result['sent_per_s']:,.0f} | {result['landed']:,} | "
              f"{result['throughput']:,.0f} | {'yes' if result['kept_up'] else 'no'} | {latency} |")
    print(f"\nevery trade id exactly once in InfluxDB: {'yes' if exactly_once else 'NO'} "
          f"({points:,} points, {distinct:,} distinct ids, {total_sent:,} sent)")
    sustained = [r["sent_per_s"] for r in results if r["complete"] and r["kept_up"]]
    print(f"sustained with zero loss: {max(sustained):,.0f} trades/s (ratio landed/sent in the same run: "
          f"{max(r['throughput'] / r['sent_per_s'] for r in results if r['complete']):.2f})"
          if sustained else "no rate sustained")
    return 0 if exactly_once else 1


if __name__ == "__main__":
    sys.exit(main())

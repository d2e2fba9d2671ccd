"""Spark Structured Streaming: Binance trades from Kafka into InfluxDB (`trades`, `bars_1m`), bad messages to the DLQ.

Usage:
    python -m btc_assets.stream.spark_job                  # every setting from the environment / stack.env
    python -m btc_assets.stream.spark_job --symbols BTCUSDT,ETHUSDT --trigger "1 second" --watermark "2 minutes"

    spark-submit --packages org.apache.spark:spark-sql-kafka-0-10_2.13:<spark version> \\
        --py-files btc_assets.zip btc_assets/stream/spark_job.py [same options]

SIGTERM (or Ctrl-C) stops it cleanly: each query finishes the micro-batch it is in, then stops; the next
start carries on from the checkpoints (``<root>/checkpoints/trades`` and ``.../bars`` on HDFS).

It reads like Spark's structured_kafka_wordcount.py, top to bottom (see ``SparkStreamJob``):

    raw = read_trades(spark, settings)                          # readStream: every symbol's trade topic
    trades = parse_trades(raw, settings.topic_symbols)          # json_tuple; `error` says why a message is bad
    trades.writeStream.foreachBatch(TradesWriter)               # query "trades": Influx `trades` + the DLQ
    minute_partials(valid_trades(trades)
                    .withWatermark("event_time", "2 minutes")
                    .dropDuplicatesWithinWatermark(["symbol", "trade_id"]))
        .writeStream.outputMode("update").foreachBatch(BarsWriter)   # query "bars": Influx `bars_1m`

and a supervisor loop on the driver restarts a query that died (from its checkpoint, logged and counted)
and writes `pipeline_health` every few seconds.

Written to InfluxDB (CONTRACTS.md section 5; lines from btc_assets.contracts.points, write token):

    trades,symbol=BTCUSDT price=84123.45,quantity=0.0015,quote_quantity=126.185175,is_buyer_maker=true,trade_id=4712345678i 1743512345678345678
        time = schema.trade_point_time_ns(T, t): a replayed trade lands on the same point again
    bars_1m,symbol=BTCUSDT trades=812i,open=84120.01,high=84150.0,low=84101.2,close=84131.5,avg_price=84125.33,vwap=84126.01,volume=1.52341,quote_volume=128157.44,avg_quantity=0.00187612,avg_quote_quantity=157.83,maker_ratio=0.4913,taker_buy_volume=0.77102,first_trade_id=4712345000i,last_trade_id=4712345811i 1743512340000000000
        time = minute start; rewritten with the whole minute so far each time a batch adds trades to it
    pipeline_health,component=spark_trades input_rows_per_second=5012.3,processed_rows_per_second=48211.0,batch_duration_ms=1034i,num_input_rows=5012i,lag=0i,restarts=0i,errors=0i,batch_id=41i,dead_letters=3i 1743512400123456789
        component spark_trades or spark_bars (spark_bars has late_rows instead of dead_letters); time = now

Written to Kafka, for a message that is not a valid trade (CONTRACTS.md section 2):

    BTCUSDT-TRADES.dlq   key = the message's key, value = the original bytes,
                         headers error=b"non_numeric:p", source=b"spark"

Reasons: ``invalid_json``, ``missing_key:<k>``, ``not_a_trade``, ``non_numeric:<k>``, ``bad_boolean:m``,
``bad_value:<k>`` (not above zero, not finite, too large for exact sums, time out of range) and
``wrong_symbol`` (``s`` is not a symbol whose topic this is), checked in that order, as
``schema.trade_from_event`` does.

Bars. The Spark aggregation computes the integer partial of ``bars.MinutePartial`` (counts and sums in
units of 10^-8, open/close by trade id) in one place, ``minute_partial_columns``; the driver turns each
partial into the contract's bar with ``MinutePartial.bar`` itself. The MapReduce reducer does the same,
so streamed and batch bars are the same numbers to the last bit, not just the same definitions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Iterable

from btc_assets.contracts import bars, points, schema

from btc_assets import config

from btc_assets.clients import kafka as kafka_io
from btc_assets.clients.influx import Influx, InfluxWriteRefused

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("btc_assets.stream.spark_job")

TRADES = "trades"  # query and checkpoint names (schema.checkpoint_dir)
BARS = "bars"
COMPONENTS = {TRADES: "spark_trades", BARS: "spark_bars"}  # the pipeline_health `component` tag
DLQ_SOURCE = "spark"  # the DLQ `source` header

# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSettings:
    """Everything the job needs; ``from_env()`` reads the documented environment variables."""

    symbols: tuple[str, ...]
    bootstrap_servers: str
    influx_url: str
    influx_token: str  # the write-only token: the job never needs more
    checkpoint_root: str  # BTC_HDFS_URL + BTC_STORAGE_ROOT; checkpoints go to <root>/checkpoints/<query>
    topic_template: str = schema.TRADE_TOPIC_TEMPLATE
    partitions: int = schema.DEFAULT_PARTITIONS  # for topics the job creates if they are missing
    replication: int = 1
    influx_org: str = schema.DEFAULT_ORG
    influx_bucket: str = schema.DEFAULT_BUCKET
    trigger: str = "0 seconds"  # the trades query: back to back, for latency
    bars_trigger: str = "10 seconds"  # the bars query: a minute bar needs no sub-second refresh
    watermark: str = "2 minutes"
    shuffle_partitions: int = 2
    max_offsets_per_trigger: int = 200_000
    influx_retry_seconds: float = 600.0
    influx_batch: int = 5000  # points per HTTP request
    health_seconds: float = 5.0
    restart_delay_seconds: float = 5.0  # between a query's death and its restart
    stop_timeout_seconds: float = 60.0  # how long a stop waits for the running micro-batch
    starting_offsets: str = "earliest"  # on a fresh checkpoint only; afterwards the checkpoint decides
    checkpoint_prefix: str = ""  # <root>/checkpoints/<prefix><query>: a replay's job keeps apart from the live one
    # Live predictions (btc_assets.stream.scorer): the saved models under <checkpoint_root>/models score each
    # completed minute. Off without models to use, a read token (the bars are read back) or WebHDFS.
    predictions_models: tuple[str, ...] = ()
    influx_read_token: str = ""
    webhdfs_url: str = ""
    predictions_rescore_minutes: int = 3
    predictions_catch_up_minutes: int = 60  # minutes scored at once after an outage (a replay: the whole day)

    def __post_init__(self):
        bad = [symbol for symbol in self.symbols if not re.fullmatch(r"[A-Z0-9]+", symbol)]
        if bad or not self.symbols:
            raise ValueError(f"symbols must be upper-case letters and digits, got {list(self.symbols)}")
        unknown = sorted(set(self.predictions_models) - set(schema.MODELS))
        if unknown:
            raise ValueError(f"BTC_STREAM_PREDICTIONS_MODELS: unknown models {unknown}; choose from "
                             f"{', '.join(schema.MODELS)} (or 'none')")

    @property
    def predicts(self) -> bool:
        """Whether the job scores completed minutes (models named, and the read token and WebHDFS it needs)."""
        return bool(self.predictions_models and self.influx_read_token and self.webhdfs_url)

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(schema.trade_topic(symbol, self.topic_template) for symbol in self.symbols))

    @property
    def topic_symbols(self) -> dict[str, tuple[str, ...]]:
        """Which symbols each topic may carry (all of them if the template has no ``{symbol}``)."""
        found: dict[str, tuple[str, ...]] = {}
        for symbol in self.symbols:
            topic = schema.trade_topic(symbol, self.topic_template)
            found[topic] = found.get(topic, ()) + (symbol,)
        return found

    def checkpoint(self, query: str) -> str:
        return schema.checkpoint_dir(self.checkpoint_root, self.checkpoint_prefix + query)

    @classmethod
    def from_env(cls, **overrides) -> StreamSettings:
        """Settings from the environment (the local profile fills it from the stack's env file first)."""
        env = {setting.name: config.get(setting.name) for setting in config.STREAM_SETTINGS}
        values = dict(
            symbols=tuple(config.symbols()),
            **config.kafka_settings(),
            influx_url=config.get("BTC_INFLUX_URL"),
            influx_org=config.get("BTC_INFLUX_ORG"),
            influx_bucket=config.get("BTC_INFLUX_BUCKET"),
            influx_token=config.get_optional("BTC_INFLUX_WRITE_TOKEN"),
            checkpoint_root=config.get("BTC_HDFS_URL").rstrip("/") + config.get("BTC_STORAGE_ROOT"),
            trigger=env["BTC_STREAM_TRIGGER"],
            bars_trigger=env["BTC_STREAM_BARS_TRIGGER"],
            watermark=env["BTC_STREAM_WATERMARK"],
            shuffle_partitions=int(env["BTC_STREAM_SHUFFLE_PARTITIONS"]),
            max_offsets_per_trigger=int(env["BTC_STREAM_MAX_OFFSETS_PER_TRIGGER"]),
            influx_retry_seconds=float(env["BTC_STREAM_INFLUX_RETRY_SECONDS"]),
            health_seconds=float(env["BTC_STREAM_HEALTH_SECONDS"]),
            predictions_models=config.model_list(env["BTC_STREAM_PREDICTIONS_MODELS"]),
            influx_read_token=config.get_optional("BTC_INFLUX_READ_TOKEN") or "",
            webhdfs_url=config.get_optional("BTC_WEBHDFS_URL") or "",
        )
        values.update(overrides)
        if not values["influx_token"]:
            raise KeyError("BTC_INFLUX_WRITE_TOKEN is not set: the token the job writes to InfluxDB with")
        return cls(**values)


def kafka_source_options(settings: StreamSettings) -> dict[str, str]:
    """Options of the `kafka` source: subscribe to every symbol's topic and ride out a broker restart."""
    return {
        "kafka.bootstrap.servers": settings.bootstrap_servers,
        "subscribe": ",".join(settings.topics),
        "startingOffsets": settings.starting_offsets,
        # Records deleted by retention before they were read must not stop the live stream for good.
        "failOnDataLoss": "false",
        "maxOffsetsPerTrigger": str(settings.max_offsets_per_trigger),
        # A broker restart (~15 s after a SIGKILL) must look like a slow batch, not a failed query:
        # offset lookups retry for a minute and more, and tasks wait minutes for records they know exist.
        "fetchOffset.numRetries": "60",
        "fetchOffset.retryIntervalMs": "2000",
        "kafkaConsumer.pollTimeoutMs": "300000",
        # Each offset lookup gets 15 s, then Spark retries it with a new admin client (`fetchOffset.*`). The
        # Kafka admin client in Spark (kafka-clients 3.9) keeps a listOffsets call bound to a partition's old
        # leader: one started just after that broker died waits out its whole deadline or the broker's
        # return (KAFKA-20673 is the same bug's later form). A new client looks the leader up again.
        "kafka.default.api.timeout.ms": "15000",
        "kafka.request.timeout.ms": "10000",
        "kafka.reconnect.backoff.ms": "200",
        "kafka.reconnect.backoff.max.ms": "2000",
        "kafka.retry.backoff.ms": "500",
        "groupIdPrefix": "btc-spark-job",
    }


# --- readStream -> transform -------------------------------------------------------------------

# The event's keys (schema.REQUIRED_EVENT_KEYS) as column names: Spark resolves names case-insensitively,
# so `e`/`E` and `t`/`T` cannot be columns side by side.
EVENT_COLUMNS = {
    schema.EVENT_TYPE: "event_type",
    schema.EVENT_TIME: "event_time_ms",
    schema.EVENT_SYMBOL: "event_symbol",
    schema.EVENT_TRADE_ID: "event_trade_id",
    schema.EVENT_PRICE: "event_price",
    schema.EVENT_QUANTITY: "event_quantity",
    schema.EVENT_TRADE_TIME: "event_trade_time",
    schema.EVENT_IS_BUYER_MAKER: "event_is_buyer_maker",
}
INTEGER_KEYS = (schema.EVENT_TRADE_ID, schema.EVENT_TRADE_TIME, schema.EVENT_TIME)
DECIMAL_KEYS = (schema.EVENT_PRICE, schema.EVENT_QUANTITY)
# Python's float() syntax without its extras (nan, inf, underscores, spaces): what a price may look like.
NUMBER_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
INVALID_JSON = "invalid_json"
MISSING_KEY = "missing_key"
NOT_A_TRADE = "not_a_trade"
WRONG_SYMBOL = "wrong_symbol"
# The largest trade time (ms) whose point time (ns, plus the id part) still fits a signed 64-bit integer.
MAX_TRADE_TIME_MS = (2**63 - 1) // 1_000_000 - 1


def read_trades(spark: SparkSession, settings: StreamSettings) -> DataFrame:
    """The raw Kafka records of every symbol's trade topic: key, value (bytes), topic, partition, offset, …"""
    return spark.readStream.format("kafka").options(**kafka_source_options(settings)).load()


def parse_trades(raw: DataFrame, topic_symbols: dict[str, Iterable[str]]) -> DataFrame:
    """Kafka records -> one row per message: the typed trade, or ``error`` saying why it is not one.

    Columns: topic, partition, offset, key, value (as received), error (null for a valid trade), and,
    for valid trades only (null otherwise): symbol, trade_id, price, quantity, trade_time (T as sent),
    trade_time_ms, is_buyer_maker, price_units, quantity_units, quote_units (integers of 10^-8).
    Never fails on a message, whatever its bytes: every cast is a try_cast.
    """
    from pyspark.sql import functions as F

    # Every key is read as text (a JSON number, string or bool all keep their text; a JSON null is null), so a
    # message with a wrong type still parses and gets a precise reason instead of a null struct. json_tuple
    # takes the keys' text in one pass over the message, twice as fast as from_json into a struct of strings,
    # which writes every non-string value out again through a JSON generator of its own.
    value_text = F.col("value").cast("string")
    parsed = raw.select(
        "topic", "partition", "offset", "key", "value",
        F.json_tuple(value_text, *EVENT_COLUMNS).alias(*EVENT_COLUMNS.values()),
    )

    def text(key: str) -> Column:
        return F.col(EVENT_COLUMNS[key])

    # Each number is converted once, in a projection of its own: the error's CASE WHEN and the outputs below
    # then read columns. Written inline, every branch and output that names a number parsed its text again.
    units = 10**schema.DECIMALS
    numbers = parsed.select(
        "*",
        *(text(key).try_cast("double").alias(f"{EVENT_COLUMNS[key]}_number") for key in DECIMAL_KEYS),
        *(text(key).try_cast("bigint").alias(f"{EVENT_COLUMNS[key]}_number") for key in INTEGER_KEYS),
    )
    price, quantity, trade_id, trade_time, event_time = (
        F.col(f"{EVENT_COLUMNS[key]}_number") for key in (*DECIMAL_KEYS, *INTEGER_KEYS))
    # bars.to_units: round(x * 1e8), half to even on the double (rint), as Python's round does.
    derived = {
        "event_price_units": F.rint(price * F.lit(float(units))).try_cast("bigint"),
        "event_quantity_units": F.rint(quantity * F.lit(float(units))).try_cast("bigint"),
        "event_quote_units": F.rint(price * quantity * F.lit(float(units))).try_cast("bigint"),
        "event_trade_time_ms": F.when(trade_time < schema.MICROSECONDS_FROM, trade_time).otherwise(
            F.floor(trade_time / F.lit(1000))),
    }
    numbers = numbers.select("*", *(column.alias(name) for name, column in derived.items()))
    price_units, quantity_units, quote_units, trade_time_ms = (F.col(name) for name in derived)

    def unit_ok(column: Column, minimum: int) -> Column:
        return column.isNotNull() & (column >= minimum) & (column < schema.MAX_UNITS)

    every_key_missing = F.lit(True)
    for key in EVENT_COLUMNS:
        every_key_missing = every_key_missing & text(key).isNull()
    # The map parse runs only for messages with none of the keys: it tells broken JSON from `{}`.
    error = F.when(every_key_missing & F.from_json(value_text, "map<string,string>").isNull(), INVALID_JSON)
    for key in schema.REQUIRED_EVENT_KEYS:  # a JSON null counts as missing
        error = error.when(text(key).isNull(), f"{MISSING_KEY}:{key}")
    error = error.when(text(schema.EVENT_TYPE) != schema.TRADE_EVENT_TYPE, NOT_A_TRADE)
    for key, number in zip(DECIMAL_KEYS, (price, quantity)):
        error = error.when(~text(key).rlike(NUMBER_PATTERN) | number.isNull(), f"{schema.NON_NUMERIC}:{key}")
    for key, number in zip(INTEGER_KEYS, (trade_id, trade_time, event_time)):
        error = error.when(number.isNull(), f"{schema.NON_NUMERIC}:{key}")
    error = error.when(~text(schema.EVENT_IS_BUYER_MAKER).isin("true", "false"),
                       f"{schema.BAD_BOOLEAN}:{schema.EVENT_IS_BUYER_MAKER}")
    error = (error
             .when(~unit_ok(price_units, 1), f"{schema.BAD_VALUE}:{schema.EVENT_PRICE}")
             .when(~unit_ok(quantity_units, 1), f"{schema.BAD_VALUE}:{schema.EVENT_QUANTITY}")
             .when(~unit_ok(quote_units, 0), f"{schema.BAD_VALUE}:{schema.EVENT_PRICE}*{schema.EVENT_QUANTITY}")
             .when(trade_id < 0, f"{schema.BAD_VALUE}:{schema.EVENT_TRADE_ID}")
             .when((trade_time_ms <= 0) | (trade_time_ms > MAX_TRADE_TIME_MS),
                   f"{schema.BAD_VALUE}:{schema.EVENT_TRADE_TIME}"))
    allowed = [f"{topic}\n{symbol}" for topic, symbols in topic_symbols.items() for symbol in symbols]
    error = error.when(~F.concat_ws("\n", "topic", text(schema.EVENT_SYMBOL)).isin(allowed), WRONG_SYMBOL)

    checked = numbers.withColumn("error", error)
    valid = F.col("error").isNull()

    def if_valid(column: Column) -> Column:
        return F.when(valid, column)

    return checked.select(
        "topic", "partition", "offset", "key", "value", "error",
        if_valid(text(schema.EVENT_SYMBOL)).alias("symbol"),
        if_valid(trade_id).alias("trade_id"),
        if_valid(price).alias("price"),
        if_valid(quantity).alias("quantity"),
        if_valid(trade_time).alias("trade_time"),
        if_valid(trade_time_ms).alias("trade_time_ms"),
        if_valid(text(schema.EVENT_IS_BUYER_MAKER) == "true").alias("is_buyer_maker"),
        if_valid(price_units).alias("price_units"),
        if_valid(quantity_units).alias("quantity_units"),
        if_valid(quote_units).alias("quote_units"),
    )


def valid_trades(trades: DataFrame) -> DataFrame:
    """The valid trades of ``parse_trades``, with ``event_time`` (a timestamp from T) for windows and watermarks."""
    from pyspark.sql import functions as F

    return (trades.where(F.col("error").isNull())
            .select("symbol", "trade_id", "price_units", "quantity_units", "quote_units", "is_buyer_maker",
                    F.timestamp_millis("trade_time_ms").alias("event_time")))


def minute_partial_columns() -> dict[str, Column]:
    """The Spark aggregates of one minute's trades, named and ordered as ``bars.PARTIAL_FIELDS``.

    The one place the stream's bar maths live: ``bars.MinutePartial.bar`` finishes them on the driver,
    exactly as the MapReduce reducer finishes the mapper's partials.
    """
    from pyspark.sql import functions as F

    # Open/close follow trade ids, and a repeated id with two prices takes the lower price for open and
    # the higher for close: the order of (id, price) pairs, as MinutePartial.merge has it.
    by_id = F.struct("trade_id", "price_units")
    exact = "decimal(38,0)"  # unit sums as exact integers: a long could overflow and poison the query
    columns = {
        "trades": F.count(F.lit(1)),
        "first_trade_id": F.min(by_id).getField("trade_id"),
        "open_units": F.min(by_id).getField("price_units"),
        "last_trade_id": F.max(by_id).getField("trade_id"),
        "close_units": F.max(by_id).getField("price_units"),
        "high_units": F.max("price_units"),
        "low_units": F.min("price_units"),
        "price_units_sum": F.sum(F.col("price_units").cast(exact)),
        "volume_units": F.sum(F.col("quantity_units").cast(exact)),
        "quote_volume_units": F.sum(F.col("quote_units").cast(exact)),
        "maker_trades": F.count_if("is_buyer_maker"),
        "taker_buy_volume_units": F.sum(F.when(~F.col("is_buyer_maker"), F.col("quantity_units"))
                                        .otherwise(F.lit(0)).cast(exact)),
    }
    return {name: columns[name].alias(name) for name in bars.PARTIAL_FIELDS}


def minute_partials(trades: DataFrame) -> DataFrame:
    """``valid_trades`` -> one row per (symbol, UTC minute): symbol, minute (since the epoch), the partial."""
    from pyspark.sql import functions as F

    return (trades.groupBy("symbol", F.window("event_time", "1 minute"))
            .agg(*minute_partial_columns().values())
            .select("symbol", F.expr("unix_seconds(window.start) div 60").alias(schema.MINUTE),
                    *bars.PARTIAL_FIELDS))


def partial_of(row: dict) -> bars.MinutePartial:
    """A ``bars.MinutePartial`` from a row of ``minute_partials`` (ints, or decimals for the sums)."""
    return bars.MinutePartial(*(int(row[name]) for name in bars.PARTIAL_FIELDS))


# --- writeStream: the sinks --------------------------------------------------------------------


class Stopping(RuntimeError):
    """The job is being stopped: a batch in a retry loop gives up (it is replayed on the next start)."""


def error_summary(error: BaseException | str) -> str:
    """The line that says what went wrong: a query's error wraps the Python traceback of its foreachBatch."""
    text = str(error).strip()
    raised = re.findall(r"^[A-Za-z_][\w.]*(?:Error|Exception|Stopping): .*$", text, re.MULTILINE)
    return (raised[-1] if raised else text.splitlines()[0] if text else repr(error))[:500]


@dataclass
class ComponentStats:
    """Counters of one query, kept on the driver; they feed pipeline_health."""

    component: str
    restarts: int = 0
    errors: int = 0  # failed Influx/DLQ attempts, failed queries and failed (re)starts
    batches: int = 0
    points: int = 0  # trades or bars written to Influx
    dead_letters: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **increments) -> None:
        with self.lock:
            for name, amount in increments.items():
                setattr(self, name, getattr(self, name) + amount)

    def failed(self, error: BaseException | str) -> None:
        with self.lock:
            self.errors += 1
            self.last_error = error_summary(error)

    def snapshot(self) -> dict:
        with self.lock:
            return {spec.name: getattr(self, spec.name) for spec in fields(self) if spec.name != "lock"}


class InfluxSink:
    """Line-protocol writes that wait out an InfluxDB outage: capped exponential backoff, then give up.

    A request that fails for a reason a retry can cure (connection refused, timeout, HTTP 5xx or 429)
    is retried, chunk by chunk, for up to ``retry_seconds``; points are idempotent, so a chunk written
    twice changes nothing. A refusal (401/403/400) fails at once: waiting will not fix a token.
    """

    def __init__(self, settings: StreamSettings, stats: ComponentStats, abort: threading.Event,
                 timeout_ms: int = 30_000):
        self.influx = Influx(settings.influx_url, settings.influx_org, settings.influx_bucket,
                             settings.influx_token, timeout_ms=timeout_ms)
        self.batch = settings.influx_batch
        self.retry_seconds = settings.influx_retry_seconds
        self.stats = stats
        self.abort = abort

    def write(self, lines: list[str]) -> int:
        for start in range(0, len(lines), self.batch):
            self._write_chunk(lines[start:start + self.batch])
        return len(lines)

    def _write_chunk(self, chunk: list[str]) -> None:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.5
        while True:
            try:
                self.influx.write_lines(chunk, batch_size=len(chunk))
                return
            except InfluxWriteRefused as error:
                status = getattr(getattr(error.__cause__, "response", None), "status", None)
                if not (isinstance(status, int) and (status >= 500 or status == 429)):
                    self.stats.failed(error)
                    raise
                problem: BaseException = error
            except Exception as error:  # noqa: BLE001 - connection refused/reset, timeouts: the server is away
                problem = error
            self.stats.failed(problem)
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"InfluxDB unreachable for {self.retry_seconds:.0f}s: {problem}") from problem
            log.warning("%s: InfluxDB write failed (%s); retrying in %.1fs", self.stats.component,
                        str(problem)[:200], delay)
            if self.abort.wait(delay):
                raise Stopping("stopping while InfluxDB is unreachable; the batch is replayed on restart")
            delay = min(delay * 2, 10.0)  # capped: back within ~10 s of InfluxDB's return

    def close(self) -> None:
        self.influx.close()


class DeadLetters:
    """Invalid messages to ``<topic>.dlq``: original key and bytes, headers ``error`` and ``source``."""

    def __init__(self, bootstrap_servers: str):
        self.bootstrap_servers = bootstrap_servers
        self._producer = None

    def send(self, records: Iterable[tuple[str, bytes | None, bytes, str]]) -> int:
        """Send (topic, key, value, error) records and wait until Kafka has every one (raises if not)."""
        futures = []
        for topic, key, value, error in records:
            if self._producer is None:
                self._producer = kafka_io.producer(self.bootstrap_servers, client_id="btc-spark-dlq")
            headers = [(schema.DLQ_ERROR_HEADER, error.encode()), (schema.DLQ_SOURCE_HEADER, DLQ_SOURCE.encode())]
            futures.append(self._producer.send(schema.dlq_topic(topic), key=key, value=value, headers=headers))
        if futures:
            self._producer.flush()
            for future in futures:
                future.get(timeout=60)  # raises the delivery error, failing (and later replaying) the batch
        return len(futures)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None


class TradesWriter:
    """foreachBatch of query "trades": valid trades -> Influx `trades`, the rest -> the DLQ.

    The batch comes to the driver once, as Arrow; its lines are made by ``points.trade_lines``, whose
    timestamp is ``schema.trade_point_time_ns``: a replayed batch rewrites the same points.
    """

    COLUMNS = ("symbol", "trade_id", "price", "quantity", "trade_time", "is_buyer_maker")

    def __init__(self, sink: InfluxSink, dead_letters: DeadLetters, stats: ComponentStats):
        self.sink, self.dead_letters, self.stats = sink, dead_letters, stats

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        import pyarrow.compute as pc
        from pyspark.sql import functions as F

        invalid = F.col("error").isNotNull()
        table = batch.select(*self.COLUMNS, "error", *(F.when(invalid, F.col(name)).alias(name)
                                                        for name in ("topic", "key", "value"))).toArrow()
        good = table.filter(pc.is_null(table["error"]))
        lines = points.trade_lines(*(good[name].to_pylist() for name in self.COLUMNS))
        self.sink.write(lines)
        bad = table.filter(pc.is_valid(table["error"]))
        sent = self.dead_letters.send(zip(*(bad[name].to_pylist() for name in ("topic", "key", "value", "error"))))
        self.stats.add(batches=1, points=len(lines), dead_letters=sent)
        if sent:
            log.info("batch %d: %d trades, %d dead letters", batch_id, len(lines), sent)


class BarsWriter:
    """foreachBatch of query "bars": the minutes this batch changed -> Influx `bars_1m` (whole minute so far);
    then ``on_written(minutes)`` (the live scorer learns which minutes are complete)."""

    def __init__(self, sink: InfluxSink, stats: ComponentStats, on_written=None):
        self.sink, self.stats, self.on_written = sink, stats, on_written

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        rows = batch.toArrow().to_pylist()
        lines = [points.bar_line(row["symbol"], partial_of(row).bar(row[schema.MINUTE])) for row in rows]
        self.sink.write(lines)
        self.stats.add(batches=1, points=len(lines))
        if self.on_written is not None and rows:
            self.on_written([int(row[schema.MINUTE]) for row in rows])


# --- the job: two queries, a supervisor, health -----------------------------------------------


class KafkaEnds:
    """Log-end offsets of the trade topics, for the lag; a broker that is away just means "unknown"."""

    def __init__(self, bootstrap_servers: str):
        self.bootstrap_servers = bootstrap_servers
        self._consumer = None

    def get(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
        from kafka import KafkaConsumer, TopicPartition

        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        try:
            if self._consumer is None:
                self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, client_id="btc-spark-lag",
                                               request_timeout_ms=5000, bootstrap_timeout_ms=5000)
            ends = self._consumer.end_offsets(wanted)
            return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}
        except Exception as error:  # noqa: BLE001 - unknown lag is reported as missing, never fatal
            log.debug("Kafka end offsets unavailable: %s", error)
            self.close()
            return None

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:  # noqa: BLE001
                pass
            self._consumer = None


def progress_of(query: StreamingQuery | None) -> dict | None:
    """The query's last progress as Spark's own JSON (plain dicts), or None before its first batch."""
    progress = query.lastProgress if query is not None else None
    return None if progress is None else json.loads(progress.json)


def processed_offsets(progress: dict) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the next offset the query will read: what its last batch processed."""
    offsets: dict[tuple[str, int], int] = {}
    for source in progress.get("sources", []):
        end = source.get("endOffset")
        if isinstance(end, str):
            end = json.loads(end)
        for topic, partitions in (end or {}).items():
            for partition, offset in partitions.items():
                offsets[(topic, int(partition))] = int(offset)
    return offsets


class SparkStreamJob:
    """The two streaming queries on one SparkSession, restarted from their checkpoints when they die.

    ``run()`` blocks (the standalone entry point); ``start()`` runs the same loop in a thread (tests, or
    embedding). ``request_stop()`` is safe from a signal handler; ``stop()`` also waits for the end.
    """

    def __init__(self, settings: StreamSettings, spark: SparkSession, stop_requested: threading.Event | None = None):
        self.settings = settings
        # A session of its own: the shuffle partitions and other SQL settings stay with this job.
        self.spark = spark.newSession()
        self.spark.conf.set("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        self.stats = {name: ComponentStats(component) for name, component in COMPONENTS.items()}
        self.queries: dict[str, StreamingQuery | None] = {name: None for name in COMPONENTS}
        self._restart_at: dict[str, float] = {name: 0.0 for name in COMPONENTS}
        self._stop_requested = stop_requested or threading.Event()
        self._abort = threading.Event()  # makes a batch stuck in a retry loop give up
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self.sinks = {name: InfluxSink(settings, self.stats[name], self._abort) for name in COMPONENTS}
        self.dead_letters = DeadLetters(settings.bootstrap_servers)
        self.scorer = self._scorer() if settings.predicts else None
        self.writers = {TRADES: TradesWriter(self.sinks[TRADES], self.dead_letters, self.stats[TRADES]),
                        BARS: BarsWriter(self.sinks[BARS], self.stats[BARS],
                                         self.scorer.bars_written if self.scorer else None)}
        self.health = Influx(settings.influx_url, settings.influx_org, settings.influx_bucket,
                             settings.influx_token, timeout_ms=5000)
        self.kafka_ends = KafkaEnds(settings.bootstrap_servers)

    def _scorer(self):
        from urllib.parse import urlparse

        from btc_assets.clients.storage import Storage
        from btc_assets.stream.scorer import COMPONENT, LiveScorer

        root = urlparse(self.settings.checkpoint_root)
        storage = Storage.for_url(f"{root.scheme}://{root.netloc}", root.path or "/",
                                  webhdfs_url=self.settings.webhdfs_url)
        reader = Influx(self.settings.influx_url, self.settings.influx_org, self.settings.influx_bucket,
                        self.settings.influx_read_token, timeout_ms=10_000)
        self.sinks[COMPONENT] = InfluxSink(self.settings, ComponentStats(COMPONENT), self._abort)
        return LiveScorer(self.spark, storage, reader, self.sinks[COMPONENT].write, self.settings.symbols,
                          self.settings.predictions_models, self.settings.predictions_rescore_minutes,
                          self.settings.predictions_catch_up_minutes)

    # -- the queries ------------------------------------------------------------------------------
    def _trades_query(self) -> StreamingQuery:
        trades = parse_trades(read_trades(self.spark, self.settings), self.settings.topic_symbols)
        return (trades.writeStream.queryName(COMPONENTS[TRADES])
                .trigger(processingTime=self.settings.trigger)
                .option("checkpointLocation", self.settings.checkpoint(TRADES))
                .foreachBatch(self.writers[TRADES])
                .start())

    def _bars_query(self) -> StreamingQuery:
        trades = valid_trades(parse_trades(read_trades(self.spark, self.settings), self.settings.topic_symbols))
        # The same trade twice in Kafka (a producer retry, a replay) is counted once, as long as the
        # copies are less than the watermark apart; a trade later than that has no open minute to join.
        deduplicated = (trades.withWatermark("event_time", self.settings.watermark)
                        .dropDuplicatesWithinWatermark(["symbol", "trade_id"]))
        return (minute_partials(deduplicated).writeStream.queryName(COMPONENTS[BARS])
                .outputMode("update")
                .trigger(processingTime=self.settings.bars_trigger)
                .option("checkpointLocation", self.settings.checkpoint(BARS))
                .foreachBatch(self.writers[BARS])
                .start())

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> SparkStreamJob:
        """Run the job in a background thread; returns once both queries have been started."""
        self._thread = threading.Thread(target=self.run, name="spark-job-supervisor", daemon=True)
        self._thread.start()
        self._started.wait(timeout=300)
        return self

    def request_stop(self) -> None:
        self._stop_requested.set()

    def stop(self, timeout: float | None = None) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return all(query is not None and query.isActive for query in self.queries.values())

    def run(self) -> int:
        """The supervisor loop until a stop is requested; 0 after a clean stop."""
        try:
            self._ensure_topics()
            if self.scorer is not None:
                self.scorer.start()
                log.info("live predictions on: %s from %s/models", ",".join(self.settings.predictions_models),
                         self.settings.checkpoint_root)
            next_health = 0.0
            while not self._stop_requested.is_set():
                for name in COMPONENTS:
                    self._supervise(name)
                self._started.set()
                if time.monotonic() >= next_health:
                    self.report_health()
                    next_health = time.monotonic() + self.settings.health_seconds
                self._stop_requested.wait(0.5)
        finally:
            self._started.set()
            self._shutdown()
        return 0

    def _ensure_topics(self) -> None:
        """The trade topics and their DLQs, created if missing; Kafka may still be starting."""
        kafka_io.ensure_trade_topics(self.settings.bootstrap_servers, self.settings.topics,
                                     partitions=self.settings.partitions, replication=self.settings.replication,
                                     wait_seconds=120, should_stop=self._stop_requested.is_set, log=log.warning)

    def _supervise(self, name: str) -> None:
        query, stats = self.queries[name], self.stats[name]
        if query is not None and query.isActive:
            return
        if query is not None:  # it died: say why, count it, restart after a pause
            error = query.exception()
            log.error("query %s stopped: %s; restarting from %s in %.0fs", stats.component,
                      str(error)[:2000] if error else "no error", self.settings.checkpoint(name),
                      self.settings.restart_delay_seconds)
            stats.failed(error or "stopped")
            stats.add(restarts=1)
            self.queries[name] = None
            self._restart_at[name] = time.monotonic() + self.settings.restart_delay_seconds
        if time.monotonic() < self._restart_at[name]:
            return
        try:
            # Each query in its own scheduler pool: with FAIR scheduling (build_spark) a bars batch
            # no longer holds both cores while a small trades batch waits behind it.
            self.spark.sparkContext.setLocalProperty("spark.scheduler.pool", name)
            self.queries[name] = self._trades_query() if name == TRADES else self._bars_query()
            log.info("query %s running (checkpoint %s)", stats.component, self.settings.checkpoint(name))
        except Exception as error:  # noqa: BLE001 - e.g. HDFS unreachable: try again later
            log.error("query %s could not start: %s", stats.component, error)
            stats.failed(error)
            self._restart_at[name] = time.monotonic() + self.settings.restart_delay_seconds

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.settings.stop_timeout_seconds
        for name, query in self.queries.items():
            if query is None or not query.isActive:
                continue
            # Let the running micro-batch finish, so it is committed rather than replayed next time.
            while time.monotonic() < deadline and query.isActive and query.status.get("isTriggerActive"):
                time.sleep(0.05)
            self._abort.set()
            try:
                query.stop()
            except Exception as error:  # noqa: BLE001
                log.warning("query %s did not stop cleanly: %s", COMPONENTS[name], error)
            log.info("query %s stopped", COMPONENTS[name])
        if self.scorer is not None:
            self.scorer.stop()
        try:
            self.report_health()
        finally:
            if self.scorer is not None:
                self.scorer.reader.close()
            for sink in self.sinks.values():
                sink.close()
            self.dead_letters.close()
            self.kafka_ends.close()
            self.health.close()

    # -- pipeline_health --------------------------------------------------------------------------
    def health_fields(self, name: str, ends: dict[tuple[str, int], int] | None) -> dict[str, object]:
        """The pipeline_health fields of one query (see the module docstring)."""
        stats = self.stats[name].snapshot()
        progress = progress_of(self.queries[name]) or {}
        values: dict[str, object] = {
            "input_rows_per_second": float(progress.get("inputRowsPerSecond") or 0.0),
            "processed_rows_per_second": float(progress.get("processedRowsPerSecond") or 0.0),
            "batch_duration_ms": int((progress.get("durationMs") or {}).get("triggerExecution") or 0),
            "num_input_rows": int(progress.get("numInputRows") or 0),
            "lag": None,
            "restarts": stats["restarts"],
            "errors": stats["errors"],
            "batch_id": int(progress.get("batchId", -1)),
        }
        if ends is not None:
            done = processed_offsets(progress)
            values["lag"] = sum(max(0, end - done.get(key, 0)) for key, end in ends.items())
        if name == TRADES:
            values["dead_letters"] = stats["dead_letters"]
        else:
            values["late_rows"] = sum(int(operator.get("numRowsDroppedByWatermark") or 0)
                                      for operator in progress.get("stateOperators", []))
        return values

    def report_health(self) -> list[str]:
        """Write one pipeline_health point per query now (best effort: a failure is counted, not raised)."""
        ends = self._topic_ends()
        now_ns = time.time_ns()
        lines = [points.health_line(COMPONENTS[name], self.health_fields(name, ends), now_ns) for name in COMPONENTS]
        if self.scorer is not None:
            from btc_assets.stream.scorer import COMPONENT

            lines.append(points.health_line(COMPONENT, self.scorer.health_fields(), now_ns))
        try:
            self.health.write_lines(lines)
        except Exception as error:  # noqa: BLE001 - Influx away: the next report will do
            log.warning("pipeline_health not written: %s", str(error)[:200])
        return lines

    def _topic_ends(self) -> dict[tuple[str, int], int] | None:
        partitions = set()
        for query in self.queries.values():
            partitions.update(processed_offsets(progress_of(query) or {}))
        return self.kafka_ends.get(sorted(partitions)) if partitions else None


def start_job(settings: StreamSettings, spark: SparkSession) -> SparkStreamJob:
    """Start the job in this process on ``spark`` (its queries run until ``job.stop()``)."""
    return SparkStreamJob(settings, spark).start()


# --- standalone entry point --------------------------------------------------------------------


def build_spark(settings: StreamSettings) -> SparkSession:
    """The job's SparkSession: from spark-submit's configuration, or built like every other session here."""
    from pyspark.sql import SparkSession

    from btc_assets.clients.spark import SparkSettings, build_session

    extra = {"spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
             "spark.sql.execution.arrow.pyspark.enabled": "true",
             "spark.scheduler.mode": "FAIR"}
    if os.environ.get("PYSPARK_GATEWAY_SECRET"):  # under spark-submit: its --master/--jars/--packages rule
        builder = SparkSession.builder.appName("btc-spark-stream")
        for key, value in extra.items():
            builder = builder.config(key, value)
        return builder.getOrCreate()
    master = config.get("BTC_SPARK_MASTER")
    # local[N] never retries a failed task; local[N,4] does, so a fetch that hit a restarting broker
    # costs a task retry instead of a query restart.
    master = re.sub(r"^local\[(\d+|\*)\]$", r"local[\1,4]", master)
    return build_session(SparkSettings(
        master=master, app_name="btc-spark-stream", driver_memory=config.get("BTC_SPARK_DRIVER_MEMORY"),
        jars=config.get_optional("BTC_SPARK_JARS"), packages=config.get_optional("BTC_SPARK_PACKAGES"),
        ivy_dir=config.get_optional("BTC_SPARK_IVY_DIR"), hdfs_url=config.get("BTC_HDFS_URL"),
        driver_host=config.get_optional("BTC_SPARK_DRIVER_HOST"), python=config.get_optional("BTC_SPARK_PYTHON"),
        executor_memory=config.get("BTC_SPARK_EXECUTOR_MEMORY"), cores_max=config.get_optional("BTC_SPARK_CORES_MAX"),
        # ParallelGC: the job allocates short-lived rows fast and needs throughput more than G1's short pauses.
        driver_java_options=config.get("BTC_STREAM_DRIVER_JAVA_OPTIONS"),
        class_archive=config.get_optional("BTC_SPARK_CLASS_ARCHIVE"), extra=extra))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m btc_assets.stream.spark_job",
        description="Kafka trades -> InfluxDB trades and 1-minute bars (Spark Structured Streaming).")
    parser.add_argument("--symbols", help="comma-separated symbols (BTC_SYMBOLS)")
    parser.add_argument("--topic-template", help="trade topic per symbol (BTC_KAFKA_TOPIC_TEMPLATE)")
    parser.add_argument("--bucket", help="InfluxDB bucket (BTC_INFLUX_BUCKET)")
    parser.add_argument("--checkpoint-root", help="storage root holding checkpoints/ (BTC_HDFS_URL + BTC_STORAGE_ROOT)")
    parser.add_argument("--checkpoint-prefix", help="checkpoints go to <root>/checkpoints/<prefix><query> "
                        "(a replay's: replay-)")
    parser.add_argument("--predictions-catch-up-minutes", type=int,
                        help="most minutes the live scorer scores at once after falling behind (default 60)")
    parser.add_argument("--trigger", help="micro-batch interval, e.g. '1 second' (BTC_STREAM_TRIGGER)")
    parser.add_argument("--watermark", help="allowed lateness of a trade, e.g. '2 minutes' (BTC_STREAM_WATERMARK)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python logs every connection at INFO
    config.load_profile_env()  # the Python workers Spark starts see the same settings
    overrides = {key: value for key, value in {
        "symbols": tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()) if args.symbols else None,
        "topic_template": args.topic_template, "influx_bucket": args.bucket,
        "checkpoint_root": args.checkpoint_root, "checkpoint_prefix": args.checkpoint_prefix, "trigger": args.trigger,
        "predictions_catch_up_minutes": args.predictions_catch_up_minutes, "watermark": args.watermark,
    }.items() if value}
    # Handlers first: a SIGTERM while the JVM is still starting must also end in a clean exit.
    stop_requested = threading.Event()

    def on_signal(number, _frame):
        log.info("%s: stopping after the running micro-batches", signal.Signals(number).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    settings = StreamSettings.from_env(**overrides)
    spark = build_spark(settings)
    spark.sparkContext.setLogLevel("WARN")
    job = SparkStreamJob(settings, spark, stop_requested)
    log.info("streaming %s from %s into %s/%s; checkpoints under %s", ",".join(settings.topics),
             settings.bootstrap_servers, settings.influx_url, settings.influx_bucket,
             settings.checkpoint("*"))
    code = job.run()
    log.info("stopped cleanly: %s", {name: stats.snapshot() for name, stats in job.stats.items()})
    spark.stop()
    return code


if __name__ == "__main__":
    raise SystemExit(main())

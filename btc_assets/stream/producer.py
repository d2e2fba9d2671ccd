"""Binance trades from the WebSocket into Kafka: the live path's first hop, a standalone service.

    python -m btc_assets.stream.producer --symbols BTCUSDT,ETHUSDT
    btc-pipeline produce --symbols BTCUSDT,ETHUSDT        (the CLI calls ``main(argv)``)

Endpoints and names come from the settings (btc_assets.config): BTC_BINANCE_WS_URL,
BTC_BINANCE_REST_URL, BTC_KAFKA_BOOTSTRAP_SERVERS, BTC_KAFKA_TOPIC_TEMPLATE, BTC_SYMBOLS.

As in cryptofeed, the feed and the sink are separate, with a bounded queue between them:

    TradeFeed (WebSocket thread) --message bytes--> queue --> KafkaTradeSink (one thread) --> Kafka
                                                               \\-- REST historicalTrades (gap backfill)

- TradeFeed only receives. It connects to ``/ws/<symbol>@trade`` (one symbol) or to the combined
  ``/stream?streams=btcusdt@trade/ethusdt@trade``, answers pings with the ping's payload
  (websocket-client's WebSocketApp does it as it reads), and reconnects after a failure with
  exponential backoff and full jitter (1 s doubling up to 60 s, reset once a connection was
  healthy). Before Binance's 24-hour cut (23 h 50 min by default) and on a ``serverShutdown``
  event it reconnects at once. Streams are chosen in the URL, never with SUBSCRIBE messages, so
  all it ever sends are pongs and a close frame, far below Binance's 5 messages a second. It
  never talks to Kafka: when the queue is full it waits (backpressure, counted and logged), it
  never drops a message.
- KafkaTradeSink parses and checks each message (schema.trade_from_event), keeps the last trade id
  of every symbol and keeps the topic gap-free and duplicate-free: a live trade at or below the
  last id is dropped (counted), a jump in ids (after a reconnect, or a skip) is first filled from
  REST ``/api/v3/historicalTrades`` in id order. A gap REST cannot fill after retries is counted
  (``gaps_unfilled``, ``trades_unfilled``) and logged, and the stream goes on. On start the last
  id of each topic is read back from Kafka, so a restarted producer resumes where it stopped.

Written to Kafka, per trade, on ``schema.trade_topic(symbol)`` (``BTCUSDT-TRADES``), key = symbol,
value = the event JSON exactly as Binance sent it (the ``data`` object of a combined stream):

    key     b"BTCUSDT"
    value   b'{"e":"trade","E":1743465600125,"s":"BTCUSDT","t":4711,"p":"82345.67000000",
              "q":"0.00150000","T":1743465600121,"m":true,"M":true}'

A backfilled trade is the REST row in the same shape (E = T = the row's ``time``):

    value   b'{"e":"trade","E":1743465600121,"s":"BTCUSDT","t":4712,"p":"82345.68000000",
              "q":"0.01000000","T":1743465600121,"m":false,"M":true}'

and a malformed message (invalid JSON, a missing key, a non-numeric price or quantity) goes to
``<topic>.dlq`` (the first symbol's when its symbol is unknown), the whole message as received
(a combined stream's envelope included), never rewritten:

    key     b"BTCUSDT" (the symbol whose topic it is: one partition, arrival order)
    value   b'{"e":"trade","E":1743465600125,"s":"BTCUSDT","t":4713,"p":"n/a", ...}'
    headers error=b"non_numeric: could not convert string to float: 'n/a'", source=b"producer"

The producer is idempotent with acks=all and batches (kafka_io.producer()). SIGTERM or SIGINT
stops the feed with a close handshake (the trades Binance sent before it are still taken), drains
the queue, flushes the producer and exits 0. Stats (``TradeProducerService.stats()``) are logged as
one line every ``--stats-interval`` seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import random
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
import websocket
from kafka.errors import KafkaTimeoutError

from btc_assets import config

from btc_assets.clients import kafka as kafka_io
from btc_assets.clients.http import retrying_session
from btc_assets.contracts import points

from btc_assets.contracts import schema
from btc_assets.contracts.schema import MalformedTrade
from btc_assets.stream.health import PRODUCER_COMPONENT

log = logging.getLogger("btc_assets.stream.producer")  # not __name__: that is "__main__" under `python -m`

SOURCE = "producer"  # the DLQ `source` header
SERVER_SHUTDOWN_EVENT = "serverShutdown"
REST_PAGE_LIMIT = 1000  # historicalTrades' maximum page
DAY_S = 24 * 3600


@dataclass
class ProducerSettings:
    """Everything the service needs; ``from_config`` fills it from the pipeline's settings."""

    symbols: list[str]
    ws_url: str
    rest_url: str
    bootstrap_servers: str
    topic_template: str = schema.TRADE_TOPIC_TEMPLATE
    partitions: int = schema.DEFAULT_PARTITIONS
    replication: int = 1
    queue_size: int = 100_000
    stats_interval_s: float = 10.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    healthy_after_s: float = 10.0  # a connection that lived this long resets the backoff
    max_connection_age_s: float = DAY_S - 600  # Binance cuts every connection at 24 h
    idle_timeout_s: float = 60.0  # Binance pings every 20 s: a minute of silence is a dead connection
    close_timeout_s: float = 5.0  # how long a close handshake may stay silent before the socket is cut
    rest_retries: int = 3
    rest_retry_delay_s: float = 1.0
    rest_timeout_s: float = 10.0
    max_backfill: int = 100_000  # larger gaps are left to the daily history files
    resume: bool = True  # start from the last trade id already in Kafka
    kafka_client: str = "confluent-kafka"  # librdkafka, or "kafka-python": kafka_io.PRODUCER_CLIENTS
    # The heartbeat in InfluxDB (pipeline_health, component=producer) the health sensor judges; off without a URL.
    influx_url: str = ""
    influx_org: str = ""
    influx_bucket: str = ""
    influx_token: str = ""
    health_interval_s: float = 5.0

    @classmethod
    def from_config(cls, **overrides: Any) -> "ProducerSettings":
        settings = dict(
            symbols=config.symbols(),
            ws_url=config.get("BTC_BINANCE_WS_URL"),
            rest_url=config.get("BTC_BINANCE_REST_URL"),
            **config.kafka_settings(),
            influx_url=config.get_optional("BTC_INFLUX_URL"), influx_org=config.get_optional("BTC_INFLUX_ORG"),
            influx_bucket=config.get_optional("BTC_INFLUX_BUCKET"),
            influx_token=config.get_optional("BTC_INFLUX_WRITE_TOKEN"),
            health_interval_s=float(config.get("BTC_STREAM_HEALTH_SECONDS")),
            kafka_client=config.get("BTC_KAFKA_PRODUCER_CLIENT"),
        )
        settings.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**settings)


@dataclass
class ProducerStats:
    """Counters of the service, each written by one thread (feed or sink; send_errors under a lock), read by anyone."""

    produced: int = 0  # trades written to the trade topics, live and backfilled
    backfilled: int = 0  # of which came from REST
    duplicates_dropped: int = 0
    gaps_unfilled: int = 0
    trades_unfilled: int = 0
    malformed: int = 0  # messages sent to the DLQ
    reconnects: int = 0
    backpressure_waits: int = 0  # times the feed found the queue full and waited
    send_errors: int = 0  # records Kafka finally refused (after the producer's own retries), each logged
    kafka_waits: int = 0  # times the Kafka producer's buffer stayed full (Kafka away) and a send was retried
    pings: int = 0  # server pings answered
    received: int = 0  # WebSocket messages read (the feed thread)
    newest_trade_ms: int = 0  # trade time of the newest trade written to Kafka
    last_trade_id: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["last_trade_id"] = dict(self.last_trade_id)
        return values


# --- messages -----------------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_COMBINED_PREFIX = b'{"' + schema.COMBINED_STREAM_KEY.encode() + b'":"'
_COMBINED_DATA = b'","' + schema.COMBINED_DATA_KEY.encode() + b'":'
_SYMBOL_HINT = re.compile(rb'"s"\s*:\s*"([A-Za-z0-9]+)"|"stream"\s*:\s*"([A-Za-z0-9]+)@')


def _member_span(text: str, key: str) -> tuple[int, int] | None:
    """Where the value of the top-level ``key`` of the JSON object ``text`` starts and ends."""
    span = None
    index = _WHITESPACE.match(text, 0).end()
    if text[index:index + 1] != "{":
        return None
    index = _WHITESPACE.match(text, index + 1).end()
    while text[index:index + 1] == '"':
        name, index = _DECODER.raw_decode(text, index)
        index = _WHITESPACE.match(text, index).end() + 1  # past the ':'
        start = _WHITESPACE.match(text, index).end()
        _, end = _DECODER.raw_decode(text, start)
        if name == key:
            span = (start, end)
        index = _WHITESPACE.match(text, end).end() + 1  # past the ',' (or the closing '}')
        index = _WHITESPACE.match(text, index).end()
    return span


def split_message(message: bytes) -> tuple[str | None, Any, bytes]:
    """(stream name or None, decoded event, the event's original bytes) of one WebSocket message.

    A combined stream's ``{"stream": ..., "data": {...}}`` yields the ``data`` object's own bytes,
    cut out of the message, so what goes to Kafka is byte for byte what Binance sent.
    Raises MalformedTrade("invalid_json") when the message is not JSON.
    """
    if message.startswith(_COMBINED_PREFIX) and message.endswith(b"}"):
        # Binance's compact envelope: slice it without parsing it twice.
        cut = message.find(_COMBINED_DATA, len(_COMBINED_PREFIX))
        if cut > 0:
            data = message[cut + len(_COMBINED_DATA):-1]
            stream = message[len(_COMBINED_PREFIX):cut]
            if b'"' not in stream and b"\\" not in stream:
                try:
                    return stream.decode(), json.loads(data), data
                except ValueError:
                    pass  # not that simple after all: the general path decides
    try:
        text = message.decode("utf-8")
        decoded = json.loads(text)
    except ValueError as error:  # UnicodeDecodeError is a ValueError too
        raise MalformedTrade("invalid_json", str(error)) from None
    if isinstance(decoded, dict) and schema.COMBINED_STREAM_KEY in decoded and schema.COMBINED_DATA_KEY in decoded:
        stream = decoded[schema.COMBINED_STREAM_KEY]
        span = _member_span(text, schema.COMBINED_DATA_KEY)
        data = (text[span[0]:span[1]].encode() if span
                else json.dumps(decoded[schema.COMBINED_DATA_KEY], separators=(",", ":")).encode())
        return (stream if isinstance(stream, str) else None), decoded[schema.COMBINED_DATA_KEY], data
    return None, decoded, message


def is_server_shutdown(message: bytes) -> bool:
    """True for Binance's ``serverShutdown`` event, raw or wrapped by a combined stream."""
    if SERVER_SHUTDOWN_EVENT.encode() not in message:  # cheap test first: trades never contain it
        return False
    try:
        _, event, _ = split_message(message)
    except MalformedTrade:
        return False
    return isinstance(event, dict) and event.get(schema.EVENT_TYPE) == SERVER_SHUTDOWN_EVENT


def event_from_historical_trade(symbol: str, row: dict) -> dict:
    """A REST historicalTrades row as a WebSocket trade event (CONTRACTS.md section 1), E = T = time."""
    return {
        schema.EVENT_TYPE: schema.TRADE_EVENT_TYPE,
        schema.EVENT_TIME: row["time"],
        schema.EVENT_SYMBOL: symbol,
        schema.EVENT_TRADE_ID: row["id"],
        schema.EVENT_PRICE: row["price"],
        schema.EVENT_QUANTITY: row["qty"],
        schema.EVENT_TRADE_TIME: row["time"],
        schema.EVENT_IS_BUYER_MAKER: row["isBuyerMaker"],
        schema.EVENT_IGNORE: row["isBestMatch"],
    }


def stream_url(ws_url: str, symbols: list[str]) -> str:
    """``<base>/ws/btcusdt@trade`` for one symbol, ``<base>/stream?streams=btcusdt@trade/...`` for several."""
    streams = [f"{symbol.lower()}@trade" for symbol in symbols]
    base = ws_url.rstrip("/")
    return f"{base}/ws/{streams[0]}" if len(streams) == 1 else f"{base}/stream?streams={'/'.join(streams)}"


class Backoff:
    """Exponential backoff with full jitter: a delay drawn from [0, min(cap, first * 2^attempt)]."""

    def __init__(self, first_s: float = 1.0, cap_s: float = 60.0, rng: random.Random | None = None):
        self.first_s, self.cap_s = first_s, cap_s
        self.attempt = 0
        self._random = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.first_s * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self._random.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


# --- REST backfill --------------------------------------------------------------------------------


class BackfillUnavailable(RuntimeError):
    """historicalTrades failed after every retry."""


class HistoricalTrades:
    """``GET /api/v3/historicalTrades``: the trades a reconnect or a jump in ids left out."""

    def __init__(self, rest_url: str, *, retries: int = 3, retry_delay_s: float = 1.0, timeout_s: float = 10.0):
        self.url = rest_url.rstrip("/") + "/api/v3/historicalTrades"
        self.timeout_s = timeout_s
        # Server errors and rate limits (429, and 418 once Binance bans an IP) are retried, with Retry-After.
        self._session = retrying_session(retries=retries, backoff=retry_delay_s, statuses=(418, 429, 500, 502, 503, 504),
                                         log=log.warning)

    def page(self, symbol: str, from_id: int, limit: int = REST_PAGE_LIMIT) -> list[dict]:
        """Up to ``limit`` trades from ``from_id`` on; server errors and rate limits are retried."""
        try:
            response = self._session.get(self.url, params={"symbol": symbol, "fromId": from_id, "limit": limit},
                                         timeout=self.timeout_s)
        except requests.RequestException as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            if response.status_code == 200:
                rows = response.json()
                if not isinstance(rows, list):
                    raise BackfillUnavailable(f"historicalTrades answered {str(rows)[:200]}")
                return rows
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
        raise BackfillUnavailable(f"historicalTrades?symbol={symbol}&fromId={from_id} failed: {problem}")

    def close(self) -> None:
        self._session.close()


def last_trade_ids_in_kafka(bootstrap_servers: str, topics: dict[str, str], timeout_s: float = 10.0) -> dict[str, int]:
    """symbol -> the highest trade id among the last records of its topic's partitions."""
    return {symbol: int(event[schema.EVENT_TRADE_ID])
            for symbol, event in last_events_in_kafka(bootstrap_servers, topics, timeout_s).items()}


def last_events_in_kafka(bootstrap_servers: str, topics: dict[str, str], timeout_s: float = 10.0) -> dict[str, dict]:
    """symbol -> the trade event with the highest id among the last records of its topic's partitions."""
    from kafka import TopicPartition

    found: dict[str, dict] = {}
    consumer = kafka_io.consumer(bootstrap_servers, enable_auto_commit=False, group_id=None)
    try:
        for symbol, topic in topics.items():
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = {tp: end for tp, end in consumer.end_offsets(partitions).items() if end > 0}
            if not ends:
                continue
            consumer.assign(list(ends))
            for tp, end in ends.items():
                consumer.seek(tp, end - 1)
            waiting, deadline = set(ends), time.monotonic() + timeout_s
            while waiting and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=500).items():
                    waiting.discard(tp)
                    for record in records:
                        try:
                            event = json.loads(record.value)
                            trade_id = int(event[schema.EVENT_TRADE_ID])
                        except (ValueError, KeyError, TypeError):
                            continue
                        if symbol not in found or trade_id > int(found[symbol][schema.EVENT_TRADE_ID]):
                            found[symbol] = event
            consumer.assign([])
    finally:
        consumer.close()
    return found


# --- the sink: queue -> Kafka ----------------------------------------------------------------------

_END = object()  # put on the queue once the feed has stopped: the sink drains up to it and ends

# How long a sink that found the queue empty waits before it blocks on it. A blocked sink is woken by every
# message the feed puts (a futex wake, then the GIL handed between two threads on two cores): when the sink is
# the faster of the two, that hand-over per trade was over 40 % of the producer's CPU (33.5 -> 19.1 us of CPU a
# trade). After the nap it finds the tens of messages that arrived meanwhile and takes them without a wake-up; a
# message that arrives during the nap waits at most this long. Measured: ~31,000 -> ~51,000 trades/s alone
# (README, Live-path benchmark).
SINK_NAP_S = 0.0005


def next_message(messages: queue.Queue, nap_s: float = SINK_NAP_S):
    """The queue's next item: at once if there is one, else after a nap of ``nap_s``, else when one is put."""
    try:
        return messages.get_nowait()
    except queue.Empty:
        pass
    if nap_s > 0:
        time.sleep(nap_s)
        try:
            return messages.get_nowait()
        except queue.Empty:
            pass
    return messages.get()


class KafkaTradeSink:
    """Messages from the queue to Kafka: checked, in id order per symbol, gaps backfilled, DLQ for the rest."""

    def __init__(self, messages: queue.Queue, producer, backfill: HistoricalTrades, stats: ProducerStats,
                 symbols: list[str], topic_template: str, max_backfill: int = 100_000):
        self.messages = messages
        self.producer = producer
        self.backfill = backfill
        self.stats = stats
        self.symbols = list(symbols)
        self.topics = {symbol: schema.trade_topic(symbol, topic_template) for symbol in self.symbols}
        self.keys = {symbol: symbol.encode() for symbol in self.symbols}
        self.max_backfill = max_backfill
        self.stopping = threading.Event()  # set by the service: Kafka may now be given up on
        self._kafka_gone = False
        self._errors_lock = threading.Lock()
        self._refused = self._send_failed  # one bound method: librdkafka serves all records with one callback

    def run(self) -> None:
        while True:
            message = next_message(self.messages, SINK_NAP_S)
            if message is _END:
                return
            try:
                self.handle(message)
            except Exception as error:  # noqa: BLE001 - one bad message must never stop the stream
                log.exception("could not handle a message; sending it to the DLQ: %r", message[:200])
                try:
                    self._dead_letter(message, MalformedTrade("unhandled_error", str(error)), None)
                except Exception:  # noqa: BLE001
                    log.exception("could not dead-letter it either")

    def handle(self, message: bytes) -> None:
        stream, event = None, None
        try:
            stream, event, value = split_message(message)
            if not isinstance(event, dict):
                raise MalformedTrade("not_an_object", type(event).__name__)
            trade = schema.trade_from_event(event)
        except MalformedTrade as error:
            self._dead_letter(message, error, self._symbol_of(message, stream, event))
            return
        if trade.symbol not in self.topics:
            self._dead_letter(message, MalformedTrade("unknown_symbol", trade.symbol), None)
            return
        last = self.stats.last_trade_id.get(trade.symbol)
        if last is not None and trade.trade_id <= last:
            self.stats.duplicates_dropped += 1
            return
        if last is not None and trade.trade_id > last + 1:
            self._fill_gap(trade.symbol, last + 1, trade.trade_id - 1)
        self._produce(trade.symbol, trade.trade_id, value, trade.trade_time_ms)

    def _produce(self, symbol: str, trade_id: int, value: bytes, trade_time_ms: int = 0) -> None:
        if self._send(self.topics[symbol], self.keys[symbol], value, None):
            self.stats.produced += 1
            self.stats.newest_trade_ms = max(self.stats.newest_trade_ms, trade_time_ms)
        self.stats.last_trade_id[symbol] = trade_id

    def _send(self, topic: str, key: bytes, value: bytes, headers: list | None) -> bool:
        """producer.send, waiting while its buffer is full: Kafka away holds the queue, and so the feed, back.
        A record Kafka refuses (now or after retries) is counted and logged by _send_failed."""
        while not self._kafka_gone:
            try:
                return kafka_io.send_reported(self.producer, topic, key, value, headers, self._refused)
            except KafkaTimeoutError as error:
                if self.stopping.is_set():
                    # Stopping with Kafka away: whatever is left is not written. The next start
                    # resumes from the last trade Kafka has and backfills the rest from REST.
                    self._kafka_gone = True
                    log.error("Kafka unreachable while stopping (%s): the remaining trades are not written", error)
                    break
                self.stats.kafka_waits += 1
                log.warning("Kafka does not take records (%s): trying again", error)
        with self._errors_lock:  # given up on Kafka while stopping: counted, logged once above
            self.stats.send_errors += 1
        return False

    def _send_failed(self, error: Exception, topic: str, value: bytes | None) -> None:
        with self._errors_lock:  # also called from Kafka's I/O thread
            self.stats.send_errors += 1
        log.error("Kafka refused a record for %s: %s; the record: %r", topic, error, (value or b"")[:200])

    def _fill_gap(self, symbol: str, first_id: int, last_id: int) -> None:
        """Produce trades first_id..last_id from REST, in id order; count what cannot be had."""
        missing = last_id - first_id + 1
        if missing > self.max_backfill:
            self._unfilled(symbol, first_id, last_id, f"{missing} trades, more than --max-backfill")
            return
        next_id, filled = first_id, 0
        try:
            while next_id <= last_id:
                rows = self.backfill.page(symbol, next_id, min(REST_PAGE_LIMIT, last_id - next_id + 1))
                progressed = False
                for row in rows:
                    event = event_from_historical_trade(symbol, row)
                    trade = schema.trade_from_event(event)
                    if trade.trade_id < next_id:
                        continue
                    if trade.trade_id > last_id:
                        break
                    if trade.trade_id > next_id:  # REST has a hole of its own
                        self._unfilled(symbol, next_id, trade.trade_id - 1, "missing from historicalTrades")
                    self._produce(symbol, trade.trade_id, json.dumps(event, separators=(",", ":")).encode())
                    self.stats.backfilled += 1
                    filled += 1
                    next_id, progressed = trade.trade_id + 1, True
                if not progressed:
                    break
        except (BackfillUnavailable, MalformedTrade, KeyError, TypeError, ValueError) as error:
            self._unfilled(symbol, next_id, last_id, str(error))
            return
        if next_id <= last_id:
            self._unfilled(symbol, next_id, last_id, "not in historicalTrades")
        if filled:
            log.info("backfilled %d %s trades (%d..%d) from REST", filled, symbol, first_id, last_id)

    def _unfilled(self, symbol: str, first_id: int, last_id: int, reason: str) -> None:
        self.stats.gaps_unfilled += 1
        self.stats.trades_unfilled += last_id - first_id + 1
        log.warning("gap left in %s: trades %d..%d (%d) could not be backfilled: %s", symbol, first_id, last_id,
                    last_id - first_id + 1, reason)

    def _symbol_of(self, message: bytes, stream: str | None, event: Any) -> str | None:
        """The message's symbol if it names one of ours: its ``s``, else its stream's name, else a text search."""
        candidates = []
        if isinstance(event, dict) and isinstance(event.get(schema.EVENT_SYMBOL), str):
            candidates.append(event[schema.EVENT_SYMBOL])
        if stream:
            candidates.append(stream.split("@")[0])
        if event is None:  # not even JSON: look for the names in the text
            candidates += [(match.group(1) or match.group(2)).decode() for match in _SYMBOL_HINT.finditer(message)]
        return next((name.upper() for name in candidates if name.upper() in self.topics), None)

    def _dead_letter(self, message: bytes, error: MalformedTrade, symbol: str | None) -> None:
        symbol = symbol or self.symbols[0]
        topic = schema.dlq_topic(self.topics[symbol])
        headers = [(schema.DLQ_ERROR_HEADER, str(error).encode()), (schema.DLQ_SOURCE_HEADER, SOURCE.encode())]
        # Keyed like the trade topic, so a DLQ keeps the order the messages came in (one partition).
        self._send(topic, self.keys[symbol], message, headers)
        self.stats.malformed += 1
        log.debug("malformed message to %s (%s): %r", topic, error, message[:200])


# --- the feed: WebSocket -> queue ------------------------------------------------------------------


class TradeFeed:
    """Binance's trade stream onto the queue: connect, answer pings, reconnect, never touch Kafka."""

    def __init__(self, url: str, messages: queue.Queue, stats: ProducerStats, settings: ProducerSettings):
        self.url = url
        self.messages = messages
        self.stats = stats
        self.settings = settings
        self.backoff = Backoff(settings.backoff_min_s, settings.backoff_max_s)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._app: websocket.WebSocketApp | None = None
        self._opened_at: float | None = None
        self._last_frame = 0.0
        self._closing_since: float | None = None
        self._planned: str | None = None  # why we closed on purpose: reconnect at once
        self._last_problem = ""
        self._connections = 0
        self._last_backpressure_log = 0.0
        self._waiting_for_queue = False
        self._socket: websocket.WebSocket | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._run, "feed"), (self._watch, "feed-watchdog")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Close with a handshake, so the trades already on their way are still taken, then end."""
        self._stopping.set()
        if not self._threads:
            return
        with self._lock:
            opened = self._opened_at is not None
            app = self._app
        if opened:
            self._close("producer stopping")
        elif app is not None:  # still connecting: nothing to drain
            app.keep_running = False
            self._cut()
        # The watchdog cuts a handshake that stalls; this bounds one that still trickles (a sink that cannot drain).
        self._threads[0].join(self.settings.close_timeout_s * 12)
        if self._threads[0].is_alive():
            log.warning("the feed did not end %.0fs after the close: cutting the connection",
                        self.settings.close_timeout_s * 12)
            self._cut()
            self._threads[0].join(5)
        self._threads[1].join(2)

    @property
    def running(self) -> bool:
        return bool(self._threads) and self._threads[0].is_alive()

    # connection loop (feed thread)
    def _run(self) -> None:
        while not self._stopping.is_set():
            app = websocket.WebSocketApp(self.url, on_open=self._on_open, on_message=self._on_message,
                                         on_ping=self._on_ping, on_error=self._on_error, on_close=self._on_close)
            with self._lock:
                self._app, self._opened_at, self._closing_since, self._planned = app, None, None, None
            app.run_forever(skip_utf8_validation=True, reconnect=0)
            with self._lock:
                opened_at, planned, sock = self._opened_at, self._planned, self._socket
                self._app, self._opened_at, self._socket = None, None, None
            if sock is not None:
                sock.shutdown()  # after a close handshake websocket-client leaves the socket open
            if self._stopping.is_set():
                break
            lived = time.monotonic() - opened_at if opened_at else 0.0
            if planned:
                log.info("reconnecting now (%s)", planned)
                continue
            if opened_at is not None and lived >= self.settings.healthy_after_s:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            log.warning("connection to %s %s (%s); reconnecting in %.2fs", self.url,
                        f"lost after {lived:.1f}s" if opened_at else "failed", self._last_problem or "closed", delay)
            self._stopping.wait(delay)

    def _on_open(self, app) -> None:
        now = time.monotonic()
        with self._lock:
            self._opened_at = self._last_frame = now
            self._socket = app.sock
        if self._connections:
            self.stats.reconnects += 1
        self._connections += 1
        self._last_problem = ""
        log.info("connected to %s%s", self.url, f" (reconnect {self.stats.reconnects})" if self._connections > 1 else "")
        if self._stopping.is_set():  # stop() came while we were connecting
            self._close("producer stopping")

    def _on_message(self, app, message: bytes) -> None:
        self._last_frame = time.monotonic()
        self.stats.received += 1
        if is_server_shutdown(message):
            log.warning("Binance announced a server shutdown: moving to a new connection")
            self._close(SERVER_SHUTDOWN_EVENT)
            return
        try:
            self.messages.put_nowait(message)
        except queue.Full:
            # Backpressure: stop reading until the sink catches up (TCP pushes back to Binance);
            # a message is never dropped, a reconnect's backfill covers a server that gives up on us.
            self.stats.backpressure_waits += 1
            if time.monotonic() - self._last_backpressure_log > 10:
                self._last_backpressure_log = time.monotonic()
                log.warning("queue full (%d messages): the feed waits for the Kafka sink", self.messages.maxsize)
            self._waiting_for_queue = True
            try:
                self.messages.put(message)
            finally:
                self._waiting_for_queue = False
                self._last_frame = time.monotonic()

    def _on_ping(self, app, payload: bytes) -> None:
        # websocket-client has already answered with a pong carrying the same payload.
        self._last_frame = time.monotonic()
        self.stats.pings += 1

    def _on_error(self, app, error: Exception) -> None:
        self._last_problem = f"{type(error).__name__}: {error}"

    def _on_close(self, app, status: int | None, reason: str | None) -> None:
        if status is not None and not self._last_problem:
            self._last_problem = f"closed by the server ({status}{': ' + reason if reason else ''})"

    # closing (any thread)
    def _close(self, reason: str) -> None:
        """Start a close handshake: the server's last frames are still read until its close arrives."""
        with self._lock:
            app = self._app
            if app is None or self._closing_since is not None or self._opened_at is None:
                return
            self._closing_since = time.monotonic()
            self._planned = None if self._stopping.is_set() else reason
        sock = app.sock
        try:
            if sock is None:
                raise OSError("no socket")
            sock.send_close(websocket.STATUS_NORMAL, reason[:100].encode())
        except Exception:  # noqa: BLE001 - whatever went wrong, the socket is cut instead
            self._cut()

    def _cut(self) -> None:
        """Shut the socket down: the reading thread wakes up to an EOF at once."""
        with self._lock:
            app = self._app
        sock = getattr(getattr(app, "sock", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _watch(self) -> None:
        """Every half second: the 24-hour cut, a silent connection, a close that takes too long."""
        while not self._threads or self._threads[0].is_alive():
            time.sleep(0.5)
            with self._lock:
                opened_at, closing_since = self._opened_at, self._closing_since
            now = time.monotonic()
            if opened_at is None:
                continue
            if closing_since is not None:
                # While the server's last frames still arrive (or wait for room on the queue) the handshake
                # is progressing: only one silent for close_timeout_s is cut.
                if now - max(closing_since, self._last_frame) > self.settings.close_timeout_s \
                        and not self._waiting_for_queue:
                    log.warning("close handshake silent for over %.0fs: cutting the connection",
                                self.settings.close_timeout_s)
                    self._cut()
            elif now - opened_at >= self.settings.max_connection_age_s:
                log.info("connection is %.0f s old: renewing it before Binance's 24-hour cut", now - opened_at)
                self._close("connection age limit")
            elif now - self._last_frame > self.settings.idle_timeout_s and not self._waiting_for_queue:
                self._last_problem = f"nothing received for {self.settings.idle_timeout_s:.0f}s"
                log.warning("connection silent for %.0fs: cutting it", now - self._last_frame)
                self._cut()


# --- the service ------------------------------------------------------------------------------------


class TradeProducerService:
    """The feed, the queue and the sink, started and stopped together; ``stats()`` at any time."""

    def __init__(self, settings: ProducerSettings, producer=None):
        self.settings = settings
        self.symbols = [symbol.upper() for symbol in settings.symbols]
        self.stats_counters = ProducerStats()
        self.messages: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self.producer = producer
        self.backfill = HistoricalTrades(settings.rest_url, retries=settings.rest_retries,
                                         retry_delay_s=settings.rest_retry_delay_s, timeout_s=settings.rest_timeout_s)
        self.feed = TradeFeed(stream_url(settings.ws_url, self.symbols), self.messages, self.stats_counters, settings)
        self.sink: KafkaTradeSink | None = None
        self._sink_thread: threading.Thread | None = None

    @property
    def topics(self) -> dict[str, str]:
        return {symbol: schema.trade_topic(symbol, self.settings.topic_template) for symbol in self.symbols}

    def start(self) -> None:
        settings = self.settings
        kafka_io.ensure_trade_topics(settings.bootstrap_servers, self.topics.values(),
                                     partitions=settings.partitions, replication=settings.replication)
        if settings.resume:
            resumed = last_trade_ids_in_kafka(settings.bootstrap_servers, self.topics)
            self.stats_counters.last_trade_id.update(resumed)
            if resumed:
                log.info("resuming after the last trades in Kafka: %s", _ids_text(resumed))
        if self.producer is None:
            self.producer = kafka_io.producer(settings.bootstrap_servers, client=settings.kafka_client)
        self.sink = KafkaTradeSink(self.messages, self.producer, self.backfill, self.stats_counters, self.symbols,
                                   settings.topic_template, settings.max_backfill)
        self._sink_thread = threading.Thread(target=self.sink.run, name="kafka-sink", daemon=True)
        self._sink_thread.start()
        log.info("producing %s from %s to %s on %s (Kafka client: %s)", ",".join(self.symbols), self.feed.url,
                 ",".join(self.topics.values()), settings.bootstrap_servers, settings.kafka_client)
        self.feed.start()

    def stop(self) -> None:
        """Stop the feed (close handshake), drain the queue into Kafka, flush, close."""
        self.feed.stop()
        if self.sink is not None:
            self.sink.stopping.set()
        self.messages.put(_END)
        if self._sink_thread is not None:
            self._sink_thread.join()
        if self.producer is not None:
            self.producer.flush()
            self.producer.close()
        self.backfill.close()
        log.info("stopped: %s", self.stats_line())

    def stats(self) -> dict[str, Any]:
        values = self.stats_counters.as_dict()
        values["queued"] = self.messages.qsize()
        return values

    def stats_line(self) -> str:
        values = self.stats()
        ids = _ids_text(values.pop("last_trade_id"))
        return " ".join(f"{name}={value}" for name, value in values.items()) + f" last_trade_id={ids}"

    def health_fields(self, previous: dict[str, Any], seconds: float) -> dict[str, Any]:
        """The heartbeat's fields: rates since ``previous`` (a ``stats()`` of ``seconds`` ago) and the counters."""
        now = self.stats()
        newest = now["newest_trade_ms"]
        return {
            "messages_received_per_s": (now["received"] - previous.get("received", 0)) / max(seconds, 1e-9),
            "messages_sent_per_s": (now["produced"] - previous.get("produced", 0)) / max(seconds, 1e-9),
            "reconnects": now["reconnects"], "gaps_filled": now["backfilled"], "gaps_unfillable": now["gaps_unfilled"],
            "trades_unfillable": now["trades_unfilled"], "dead_letters": now["malformed"], "queued": now["queued"],
            "newest_trade_age_s": round(time.time() - newest / 1000, 3) if newest else -1.0,
        }

    def _write_health(self, writer, previous: dict[str, Any], seconds: float) -> None:
        try:
            writer.write_lines([points.health_line(PRODUCER_COMPONENT, self.health_fields(previous, seconds),
                                                   time.time_ns())])
        except Exception as error:  # noqa: BLE001 - a heartbeat InfluxDB cannot take now is skipped, never fatal
            log.warning("could not write the pipeline_health heartbeat: %s", error)

    def run(self, stop: threading.Event) -> None:
        """Start; log the stats every ``stats_interval_s`` and write the heartbeat every ``health_interval_s``
        (when InfluxDB is configured) until ``stop`` is set, then stop cleanly."""
        from btc_assets.clients.influx import Influx

        settings = self.settings
        writer = (Influx(settings.influx_url, settings.influx_org, settings.influx_bucket, settings.influx_token)
                  if settings.influx_url and settings.influx_token else None)
        self.start()
        tick = min(settings.stats_interval_s, settings.health_interval_s) if writer else settings.stats_interval_s
        logged = beat = self.stats()
        logged_at = beat_at = time.monotonic()
        try:
            while not stop.wait(tick):
                now = time.monotonic()
                if writer is not None and now - beat_at >= settings.health_interval_s:
                    self._write_health(writer, beat, now - beat_at)
                    beat, beat_at = self.stats(), now
                if now - logged_at >= settings.stats_interval_s:
                    rate = (self.stats_counters.produced - logged["produced"]) / max(now - logged_at, 1e-9)
                    log.info("stats: %s rate=%.0f/s", self.stats_line(), rate)
                    logged, logged_at = self.stats(), now
        finally:
            self.stop()
            if writer is not None:
                writer.close()


def _ids_text(ids: dict[str, int]) -> str:
    return ",".join(f"{symbol}:{trade_id}" for symbol, trade_id in sorted(ids.items())) or "-"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="btc-pipeline produce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", help="comma-separated symbols (default: BTC_SYMBOLS)")
    parser.add_argument("--ws-url", help="Binance WebSocket base URL (default: BTC_BINANCE_WS_URL)")
    parser.add_argument("--rest-url", help="Binance REST base URL (default: BTC_BINANCE_REST_URL)")
    parser.add_argument("--bootstrap-servers", help="Kafka (default: BTC_KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--topic-template", help="trade topic per symbol (default: BTC_KAFKA_TOPIC_TEMPLATE)")
    parser.add_argument("--kafka-client", choices=kafka_io.PRODUCER_CLIENTS,
                        help="the Kafka client library (default: BTC_KAFKA_PRODUCER_CLIENT)")
    parser.add_argument("--queue-size", type=int, help="messages between the feed and the sink (default 100000)")
    parser.add_argument("--stats-interval", type=float, dest="stats_interval_s", help="seconds between stats lines")
    parser.add_argument("--max-connection-age", type=float, dest="max_connection_age_s",
                        help="seconds before a connection is renewed (default 85800: 23h50m)")
    parser.add_argument("--max-backfill", type=int, help="largest gap filled from REST (default 100000 trades)")
    parser.add_argument("--no-resume", dest="resume", action="store_false", default=None,
                        help="do not start from the last trade id already in Kafka")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websocket").setLevel(logging.CRITICAL)  # it logs every disconnect as an error; we log them
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config.load_profile_env()
    overrides = {name: value for name, value in vars(args).items() if name not in ("symbols", "log_level")}
    if args.symbols:
        overrides["symbols"] = [symbol.strip().upper() for symbol in args.symbols.split(",") if symbol.strip()]
    settings = ProducerSettings.from_config(**overrides)
    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    service = TradeProducerService(settings)
    try:
        service.run(stop)
    except Exception as error:  # noqa: BLE001 - a start-up failure (Kafka down...) ends the process, clearly
        log.error("producer failed: %s", error, exc_info=log.isEnabledFor(logging.DEBUG))
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

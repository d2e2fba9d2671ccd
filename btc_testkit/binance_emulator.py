"""A stand-in for Binance's live trades: the WebSocket streams and the REST backfill, on 127.0.0.1.

The same URLs and payloads as Binance, so the producer switches between the two by its base URLs
alone (BTC_BINANCE_WS_URL=ws://127.0.0.1:<port>, BTC_BINANCE_REST_URL=http://127.0.0.1:<port>):

    GET  /ws/btcusdt@trade                              WebSocket, one raw stream
    GET  /stream?streams=btcusdt@trade/ethusdt@trade    WebSocket, a combined stream: {"stream": ..., "data": {...}}
    GET  /api/v3/historicalTrades?symbol=BTCUSDT&fromId=4711&limit=1000
         [{"id": 4711, "price": "82345.67000000", "qty": "0.00150000", "quoteQty": "123.51850500",
           "time": 1743465600121, "isBuyerMaker": true, "isBestMatch": true}, ...]

and a small control API (also available as methods) to make the feed misbehave on purpose:

    POST /control/drop                      drop every connection (no close frame)
    POST /control/skip?n=5[&symbol=X]       the next n trades happen but are not sent (REST still has them)
    POST /control/garbage?n=10              send n malformed messages (invalid JSON, a missing key, a bad price)
    POST /control/rate?value=300            trades per second (0: as fast as the clients read)
    POST /control/pause, /control/resume    stop and restart the market
    POST /control/ping?interval=5&payload=p ping every client every 5 s; pongs are recorded
    POST /control/shutdown                  send a `serverShutdown` event, drop the stragglers after a grace period
    POST /control/rest?status=503           make historicalTrades fail with that status (200 heals it)
    GET  /control/stats                     counters, as JSON

Trades come from the trade generator (btc_testkit.generator): ids, prices, quantities, sides, and
where skips and garbage fall are deterministic for a seed; trade and event times are the wall clock
at emission (``replay_times=True`` keeps the generated times instead). With ``trades=N`` each symbol
has exactly N trades and ``done`` is set once all were emitted; without it the market runs forever,
from ``first_trade_id`` on (the standalone server derives it from the clock, so a restarted emulator
continues above the ids a producer already has in Kafka).

``warmup_seconds=W`` starts the market W seconds in the past: the first trades carry times from
then on, ``warmup_rate`` a second of that past apart on average, and go out as fast as the clients
read until their times reach the clock; from there on the market runs at ``rate`` in real time.
A demo thus has the last minutes of bars (and the features a live prediction needs) at once,
as a stream that has been running for a while would.

``tapes={symbol: events}`` serves given events (in id order, times kept) instead of generated ones, and
``speed=X`` paces them by their own trade times, X times faster than they happened: the replay of a stored
day (btc_assets.stream.replay) is such a tape at ``speed=60``.

The market only trades while at least one client is connected: a client that reconnects finds
the next trade id after the last one it was sent, so every hole it sees was made on purpose
(skip) and ``generated_ids``/``sent_ids``/``skipped_ids`` tell a test exactly what must arrive.

    with BinanceEmulator(symbols=("BTCUSDT",), trades=50_000, rate=5_000, seed=7) as binance:
        ... connect to binance.ws_url ...
        binance.wait_until_done()
        assert kafka_ids == binance.generated_ids("BTCUSDT")

Standalone: ``python -m btc_testkit.binance_emulator --port 9443 --rate 50 --symbols BTCUSDT,ETHUSDT``.
The WebSocket server side (RFC 6455 handshake and framing) is written here on the standard library,
so every frame it sends, drops or withholds is under the test's control.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import hashlib
import heapq
import json
import logging
import math
import random
import signal
import socket
import struct
import threading
import time
from collections import defaultdict
from datetime import date as Date
from datetime import timedelta
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Iterator, Mapping
from urllib.parse import parse_qs, urlsplit

from btc_testkit import generator

from btc_assets.contracts import schema

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
TRADE_STREAM_SUFFIX = "@trade"
HISTORICAL_TRADES_PATH = "/api/v3/historicalTrades"
HISTORICAL_TRADES_DEFAULT_LIMIT = 500
HISTORICAL_TRADES_MAX_LIMIT = 1000
SERVER_SHUTDOWN_EVENT = "serverShutdown"
SERVER_SHUTDOWN_STREAM = "!serverShutdown"
GARBAGE_KINDS = ("invalid_json", "missing_key", "non_numeric_price")
ENDLESS_CHUNK = 100_000  # trades generated at a time when the market runs without end

_WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CLOSE_NORMAL, _CLOSE_PROTOCOL_ERROR = 1000, 1002
_QUOTE_PLACES = Decimal(1).scaleb(-schema.DECIMALS)


# --- RFC 6455 framing (server side: frames sent unmasked, frames received must be masked) -----------


def websocket_accept(key: str) -> str:
    """The Sec-WebSocket-Accept answer to a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + _WEBSOCKET_GUID).encode()).digest()).decode()


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


class ProtocolError(Exception):
    """The client broke RFC 6455 (e.g. sent an unmasked frame)."""


def _read_exactly(stream, count: int) -> bytes:
    data = stream.read(count)
    if len(data) < count:
        raise EOFError("client went away")
    return data


def read_frame(stream) -> tuple[int, bytes]:
    """(opcode, unmasked payload) of the next frame a client sends; EOFError when it is gone."""
    first, second = _read_exactly(stream, 2)
    opcode, length = first & 0x0F, second & 0x7F
    if not second & 0x80:
        raise ProtocolError("client frames must be masked")
    if length == 126:
        (length,) = struct.unpack("!H", _read_exactly(stream, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", _read_exactly(stream, 8))
    mask = _read_exactly(stream, 4)
    masked = _read_exactly(stream, length)
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    return opcode, (int.from_bytes(masked, "big") ^ key).to_bytes(length, "big")


# --- the market ----------------------------------------------------------------------------------


def _tape(symbol: str, date: str, seed: int, trades: int | None, first_id: int | None = None,
          price_scale: float | Callable[[], float] = 1.0) -> Iterator[dict]:
    """One symbol's trades as WebSocket events, in id order: exactly ``trades`` of them, or endless (from
    ``first_id``, or the generated day's first id).

    Endless, each generated day of ``ENDLESS_CHUNK`` trades continues from the price the day before
    ended at (a generated day has a price level of its own), and its moves are ``price ** price_scale``:
    a day's worth of volatility squeezed into the minutes those trades last would be far too wild.
    A callable ``price_scale`` is asked at the start of each generated day (the rate may have changed).
    """
    if trades is not None:
        yield from generator.live_events(generator.generate_day(symbol, date, seed=seed, trades=trades), seed=seed)
        return
    day, next_id, last_price = Date.fromisoformat(date), first_id, None
    while True:
        first_price = start_price = tick = None
        scale = price_scale() if callable(price_scale) else price_scale
        for event in generator.live_events(generator.generate_day(symbol, day.isoformat(), seed=seed,
                                                                  trades=ENDLESS_CHUNK), seed=seed):
            # Each generated day starts at its own first id: renumber so the ids stay contiguous.
            next_id = event[schema.EVENT_TRADE_ID] if next_id is None else next_id
            event[schema.EVENT_TRADE_ID] = next_id
            next_id += 1
            if last_price is not None or scale != 1.0:
                price = float(event[schema.EVENT_PRICE])
                if first_price is None:
                    first_price, start_price = price, last_price or price
                    tick = generator.price_tick_units(start_price) / generator.UNITS
                scaled = round(start_price * (price / first_price) ** scale / tick) * tick
                event[schema.EVENT_PRICE] = f"{scaled:.{schema.DECIMALS}f}"
            last_price = float(event[schema.EVENT_PRICE])
            yield event
        day += timedelta(days=1)


def endless_price_scale(rate: float, symbols: int) -> float:
    """The exponent that gives a generated day's trades, sent at ``rate`` over ``symbols``, the volatility of
    the time they take (volatility grows with the square root of time); 1 when sent as fast as read."""
    if rate <= 0:
        return 1.0
    seconds = ENDLESS_CHUNK * symbols / rate
    return min(1.0, math.sqrt(seconds / generator.SECONDS_PER_DAY))


def event_json(event: dict) -> bytes:
    """An event as Binance sends it: compact JSON, keys in the order e, E, s, t, p, q, T, m, M."""
    return json.dumps(event, separators=(",", ":")).encode()


def historical_trade(event: dict) -> dict:
    """The REST historicalTrades row of a trade event."""
    price, qty = event[schema.EVENT_PRICE], event[schema.EVENT_QUANTITY]
    return {
        "id": event[schema.EVENT_TRADE_ID],
        "price": price,
        "qty": qty,
        "quoteQty": str((Decimal(price) * Decimal(qty)).quantize(_QUOTE_PLACES)),
        "time": event[schema.EVENT_TRADE_TIME],
        "isBuyerMaker": event[schema.EVENT_IS_BUYER_MAKER],
        "isBestMatch": event[schema.EVENT_IGNORE],
    }


class _Client:
    """One WebSocket connection and the symbols it subscribed to."""

    def __init__(self, connection: socket.socket, symbols: tuple[str, ...], combined: bool, number: int):
        self.connection = connection
        self.symbols = symbols
        self.combined = combined
        self.number = number
        self.send_lock = threading.Lock()
        self.closed = False

    def wrap(self, symbol: str, payload: bytes) -> bytes:
        """The message as this client's stream carries it (combined streams wrap the event)."""
        if not self.combined:
            return payload
        return b'{"stream":"' + symbol.lower().encode() + TRADE_STREAM_SUFFIX.encode() + b'","data":' + payload + b"}"

    def send(self, data: bytes) -> bool:
        with self.send_lock:
            if self.closed:
                return False
            try:
                self.connection.sendall(data)
                return True
            except OSError:
                self.closed = True
                return False

    def end(self, close_payload: bytes | None = None) -> None:
        """Stop sending: with a close frame (a clean close), or without one (a dropped connection).

        Only our half is shut, so every frame already sent still reaches the client before the EOF.
        """
        with self.send_lock:
            if self.closed:
                return
            self.closed = True
            try:
                if close_payload is not None:
                    self.connection.sendall(frame(_OP_CLOSE, close_payload))
                self.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass


class BinanceEmulator:
    """Binance's trade streams and historicalTrades endpoint, driven by the trade generator."""

    def __init__(self, symbols: tuple[str, ...] | list[str] = (schema.DEFAULT_SYMBOL,), *, trades: int | None = None,
                 rate: float = 1_000.0, seed: int = 0, date: str = "2025-04-01", garbage_ratio: float = 0.0,
                 ping_interval: float | None = None, ping_payload: bytes = b"binance-ping",
                 shutdown_grace_s: float = 5.0, replay_times: bool = False, history_limit: int = 2_000_000,
                 record_payloads: bool = True, warmup_seconds: float = 0.0, warmup_rate: float = 50.0,
                 first_trade_id: int | None = None, tapes: Mapping[str, Iterable[dict]] | None = None,
                 speed: float | None = None, host: str = HOST, port: int = 0):
        if warmup_seconds < 0 or (warmup_seconds and warmup_rate <= 0):
            raise ValueError(f"warmup_seconds={warmup_seconds} needs warmup_rate > 0 (got {warmup_rate})")
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be above 0 (got {speed})")
        self.symbols = tuple(symbol.upper() for symbol in symbols)
        if tapes is not None and set(tapes) != set(self.symbols):
            raise ValueError(f"tapes for {sorted(tapes)}, symbols {list(self.symbols)}: one tape per symbol")
        self.trades = trades
        self.seed = seed
        self.shutdown_grace_s = shutdown_grace_s
        self.replay_times = replay_times or tapes is not None  # a tape's events keep the times they carry
        # Paced by the events' own times, ``speed`` times faster than they happened (None: by ``rate``).
        self._speed = speed
        self._anchor: tuple[float, int] | None = None  # (monotonic clock, event time in ms) the pacing counts from
        self.history_limit = history_limit
        self.record_payloads = record_payloads
        self._rate = float(rate)
        self._garbage_ratio = garbage_ratio
        self._random = random.Random(seed)
        self._tapes = ({symbol: iter(tapes[symbol]) for symbol in self.symbols} if tapes is not None else
                       {symbol: _tape(symbol, date, seed, trades, first_trade_id, self._price_scale)
                        for symbol in self.symbols})
        # The warm-up's clock (ms), set when the market first opens and None once it reached the wall clock.
        self._warmup_ms = warmup_seconds * 1000.0
        self._warmup_rate = warmup_rate
        self._warmup_random = random.Random(seed + 1)  # not self._random: skips and garbage stay where they were
        self._virtual_ms: float | None = None
        self._warmed_up = False
        self._upcoming: list[tuple[int, int, dict]] = []  # (generated trade time, symbol index, event)
        for index, symbol in enumerate(self.symbols):
            self._queue_next(index)

        self._lock = threading.RLock()  # the market: trades, clients, records
        self._wake = threading.Condition(self._lock)
        self._commands_waiting = 0  # the market loop steps aside while anyone else waits for the lock
        self._commands_lock = threading.Lock()
        self._stopping = threading.Event()
        self.done = threading.Event()
        self._paused = False
        self._clients: list[_Client] = []
        self._connections = 0
        self._skip: dict[str | None, int] = defaultdict(int)  # symbol (None: any symbol) -> trades to skip
        self._garbage_pending = 0
        self._rest_status: int | None = None
        self._rest_calls = 0

        # What happened, for tests: per symbol, the events in id order and which ids went where.
        self._history: dict[str, list[dict]] = {symbol: [] for symbol in self.symbols}
        self._history_first_id: dict[str, int | None] = {symbol: None for symbol in self.symbols}
        self._generated = {symbol: 0 for symbol in self.symbols}
        self._first_id: dict[str, int | None] = {symbol: None for symbol in self.symbols}  # never trimmed
        self._sent: dict[str, list[int]] = {symbol: [] for symbol in self.symbols}
        self._sent_total = {symbol: 0 for symbol in self.symbols}  # never trimmed
        self._sent_payloads: dict[str, dict[int, bytes]] = {symbol: {} for symbol in self.symbols}
        self._skipped: dict[str, list[int]] = {symbol: [] for symbol in self.symbols}
        self._unsent: dict[str, list[int]] = {symbol: [] for symbol in self.symbols}
        self.garbage_sent: list[bytes] = []
        self.pings_sent: list[bytes] = []
        self.pongs_received: list[bytes] = []

        self._ping_interval = ping_interval
        self._ping_payload = ping_payload
        self._ping_wake = threading.Event()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.emulator = self  # type: ignore[attr-defined]
        self._threads: list[threading.Thread] = []

    @contextlib.contextmanager
    def _command(self) -> Iterator[None]:
        """The market lock for anything but the market loop, which lets it through before its next batch.

        Without this a market running flat out would starve a drop, a client's close or a REST call.
        """
        with self._commands_lock:
            self._commands_waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._commands_lock:
                self._commands_waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """The REST base URL (BTC_BINANCE_REST_URL)."""
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket base URL (BTC_BINANCE_WS_URL)."""
        return f"ws://{HOST}:{self.port}"

    def start(self) -> "BinanceEmulator":
        for target, name in ((self._server.serve_forever, "http"), (self._run_market, "market"),
                             (self._run_pings, "pings")):
            thread = threading.Thread(target=target, name=f"binance-emulator-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("Binance emulator on %s (symbols %s, rate %s/s)", self.base_url, ",".join(self.symbols), self._rate)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._ping_wake.set()
        with self._command():
            self._wake.notify_all()
            clients, self._clients = self._clients, []
        for client in clients:
            client.end()
            try:
                client.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "BinanceEmulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- commands --------------------------------------------------------------------------------

    def drop(self) -> int:
        """Drop every connection without a close frame, as a network failure would; returns how many."""
        with self._command():
            clients, self._clients = self._clients, []
        for client in clients:
            client.end()
        log.info("dropped %d connection(s)", len(clients))
        return len(clients)

    def skip(self, count: int, symbol: str | None = None) -> None:
        """The next ``count`` trades (of ``symbol``, or of any symbol) happen but are not sent."""
        with self._command():
            self._skip[symbol.upper() if symbol else None] += count

    def garbage(self, count: int) -> None:
        """Send ``count`` malformed messages, one before each of the next trades."""
        with self._command():
            self._garbage_pending += count

    def set_rate(self, trades_per_second: float) -> None:
        """Trades per second over all symbols; 0 sends as fast as the clients read."""
        with self._command():
            self._rate = float(trades_per_second)
            self._wake.notify_all()

    def pause(self) -> None:
        with self._command():
            self._paused = True

    def resume(self) -> None:
        with self._command():
            self._paused = False
            self._wake.notify_all()

    def start_pings(self, interval: float, payload: bytes = b"binance-ping") -> None:
        """Ping every client every ``interval`` seconds; each payload is ``payload`` plus a sequence number."""
        self._ping_interval, self._ping_payload = interval, payload
        self._ping_wake.set()

    def stop_pings(self) -> None:
        self._ping_interval = None
        self._ping_wake.set()

    def server_shutdown(self) -> int:
        """Send every client a ``serverShutdown`` event; connections still open after the grace period are dropped."""
        event = {schema.EVENT_TYPE: SERVER_SHUTDOWN_EVENT, schema.EVENT_TIME: int(time.time() * 1000)}
        payload = event_json(event)
        with self._command():
            clients = list(self._clients)
        for client in clients:
            message = payload
            if client.combined:
                message = json.dumps({schema.COMBINED_STREAM_KEY: SERVER_SHUTDOWN_STREAM,
                                      schema.COMBINED_DATA_KEY: event}, separators=(",", ":")).encode()
            client.send(frame(_OP_TEXT, message))
        timer = threading.Timer(self.shutdown_grace_s, self._drop_clients, args=(clients,))
        timer.daemon = True
        timer.start()
        return len(clients)

    def set_rest_status(self, status: int | None) -> None:
        """Make historicalTrades answer with this HTTP status (an error body); None or 200 heals it."""
        with self._command():
            self._rest_status = None if status in (None, HTTPStatus.OK) else int(status)

    # --- what happened ---------------------------------------------------------------------------

    def generated_ids(self, symbol: str) -> list[int]:
        """Every trade id the market made so far (the last ``history_limit`` of them), sent or not, in order."""
        with self._command():
            first = self._history_first_id[symbol]
            return [] if first is None else list(range(first, first + self._generated[symbol]))

    def sent_ids(self, symbol: str) -> list[int]:
        with self._command():
            return list(self._sent[symbol])

    def skipped_ids(self, symbol: str) -> list[int]:
        with self._command():
            return list(self._skipped[symbol])

    def unsent_ids(self, symbol: str) -> list[int]:
        """Trades made while no client subscribed to the symbol (other clients were connected)."""
        with self._command():
            return list(self._unsent[symbol])

    def sent_payloads(self, symbol: str) -> dict[int, bytes]:
        """trade id -> the event's JSON exactly as sent (the ``data`` object for combined streams)."""
        with self._command():
            return dict(self._sent_payloads[symbol])

    def event(self, symbol: str, trade_id: int) -> dict | None:
        """A trade the market made, as a WebSocket event (None once trimmed from the history)."""
        with self._command():
            first = self._history_first_id[symbol]
            index = trade_id - first if first is not None else -1
            history = self._history[symbol]
            return dict(history[index]) if 0 <= index < len(history) else None

    @property
    def connections(self) -> int:
        """WebSocket connections accepted so far."""
        with self._command():
            return self._connections

    @property
    def open_connections(self) -> int:
        with self._command():
            return len(self._clients)

    def stats(self) -> dict:
        with self._command():
            return {
                "connections": self._connections,
                "open_connections": len(self._clients),
                "rate": self._rate,
                "paused": self._paused,
                "done": self.done.is_set(),
                "generated": dict(self._generated),
                # Every id this market made, first to last (ids go up by one per trade); null before the first.
                "ids": {symbol: None if first is None else
                        [first, self._history_first_id[symbol] + self._generated[symbol] - 1]
                        for symbol, first in self._first_id.items()},
                "sent": {symbol: len(ids) for symbol, ids in self._sent.items()},
                "sent_total": dict(self._sent_total),  # "sent" without the trimming of history_limit
                "skipped": {symbol: len(ids) for symbol, ids in self._skipped.items()},
                "unsent": {symbol: len(ids) for symbol, ids in self._unsent.items()},
                "garbage": len(self.garbage_sent),
                "pings": len(self.pings_sent),
                "pongs": len(self.pongs_received),
                "rest_calls": self._rest_calls,
                "rest_status": self._rest_status or HTTPStatus.OK,
            }

    def wait_until(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"emulator: {what} not reached in {timeout:.0f}s; stats {self.stats()}")
            time.sleep(0.01)

    def wait_sent(self, count: int, timeout: float = 60.0) -> None:
        """Until at least ``count`` trades (all symbols) were sent."""
        self.wait_until(lambda: sum(self.stats()["sent"].values()) >= count, timeout, f"{count} trades sent")

    def wait_until_done(self, timeout: float = 120.0) -> None:
        """Until every trade of a fixed-size market was emitted."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"emulator: market not done in {timeout:.0f}s; stats {self.stats()}")

    # --- REST ------------------------------------------------------------------------------------

    def historical_trades(self, symbol: str, from_id: int | None, limit: int) -> list[dict]:
        """Up to ``limit`` trades from ``from_id`` on (the latest ones without it), as Binance's REST rows."""
        with self._command():
            history, first = self._history[symbol], self._history_first_id[symbol]
            if first is None:
                return []
            start = len(history) - limit if from_id is None else from_id - first
            start = max(0, start)
            return [historical_trade(event) for event in history[start:start + limit]]

    # --- the market loop -------------------------------------------------------------------------

    def _price_scale(self) -> float:
        """The endless tape's price scale for the rate trades go out at now: the warm-up's, then the set rate."""
        warming = self._virtual_ms is not None or (self._warmup_ms and not self._warmed_up)
        return endless_price_scale(self._warmup_rate if warming else self._rate, len(self.symbols))

    def _queue_next(self, index: int) -> None:
        event = next(self._tapes[self.symbols[index]], None)
        if event is not None:
            heapq.heappush(self._upcoming, (event[schema.EVENT_TRADE_TIME], index, event))

    def _next_trade(self) -> tuple[str, dict] | None:
        """The next trade over all symbols, in generated time order, stamped with the clock."""
        if not self._upcoming:
            return None
        _, index, event = heapq.heappop(self._upcoming)
        self._queue_next(index)
        if not self.replay_times:
            latency = event[schema.EVENT_TIME] - event[schema.EVENT_TRADE_TIME]
            now_ms = time.time() * 1000
            if self._virtual_ms is not None:  # warming up: trades from the past, Poisson arrivals
                self._virtual_ms += self._warmup_random.expovariate(self._warmup_rate) * 1000.0
                if self._virtual_ms < now_ms:
                    now_ms = self._virtual_ms
                else:
                    self._virtual_ms = None
                    log.info("warm-up done: trades at %s/s in real time from now on", self._rate)
            event[schema.EVENT_TRADE_TIME] = int(now_ms)
            event[schema.EVENT_TIME] = event[schema.EVENT_TRADE_TIME] + latency
        return self.symbols[index], event

    def _record(self, symbol: str, event: dict) -> None:
        history = self._history[symbol]
        if self._history_first_id[symbol] is None:
            self._history_first_id[symbol] = event[schema.EVENT_TRADE_ID]
        if self._first_id[symbol] is None:
            self._first_id[symbol] = event[schema.EVENT_TRADE_ID]
        history.append(event)
        self._generated[symbol] += 1
        if len(history) > self.history_limit + self.history_limit // 10:
            trimmed = len(history) - self.history_limit
            first = self._history_first_id[symbol]
            del history[:trimmed]
            self._history_first_id[symbol] = first + trimmed
            self._generated[symbol] -= trimmed
            payloads = self._sent_payloads[symbol]
            for trade_id in range(first, first + trimmed):
                payloads.pop(trade_id, None)
            for ids in (self._sent[symbol], self._skipped[symbol], self._unsent[symbol]):
                del ids[:bisect.bisect_left(ids, first + trimmed)]

    def _take_skip(self, symbol: str) -> bool:
        for key in (symbol, None):
            if self._skip.get(key, 0) > 0:
                self._skip[key] -= 1
                return True
        return False

    def _garbage_for(self, event: dict) -> tuple[str, bytes]:
        """A malformed copy of a trade event, and what is wrong with it."""
        kind = self._random.choice(GARBAGE_KINDS)
        broken = dict(event)
        if kind == "missing_key":
            del broken[self._random.choice(schema.REQUIRED_EVENT_KEYS)]
        elif kind == "non_numeric_price":
            broken[schema.EVENT_PRICE] = "n/a"
        payload = event_json(broken)
        if kind == "invalid_json":  # cut off mid-message
            payload = payload[: self._random.randrange(1, len(payload) - 1)]
        return kind, payload

    def _due(self) -> bool:
        """Paced by time (``speed``): whether the next trade's turn has come (True once there is none)."""
        if not self._upcoming:
            return True
        next_ms = self._upcoming[0][0]
        if self._anchor is None:
            self._anchor = (time.monotonic(), next_ms)
        return time.monotonic() - self._anchor[0] >= (next_ms - self._anchor[1]) / 1000.0 / self._speed

    def _seconds_to_next(self) -> float:
        if not self._upcoming or self._anchor is None:
            return 0.0
        due = self._anchor[0] + (self._upcoming[0][0] - self._anchor[1]) / 1000.0 / self._speed
        return max(0.0, due - time.monotonic())

    def _batch_size(self, started: float, emitted: int) -> int:
        if self._speed is not None:
            return 2_000 if self._due() else 0
        if self._rate <= 0 or self._virtual_ms is not None:  # as fast as the clients read
            return 256
        return min(2_000, int((time.monotonic() - started) * self._rate) - emitted)

    def _run_market(self) -> None:
        started, emitted = time.monotonic(), 0
        while not self._stopping.is_set() and not self.done.is_set():
            with self._wake:
                if self._paused or not self._clients:
                    while not self._stopping.is_set() and (self._paused or not self._clients):
                        self._wake.wait(0.1)
                    started, emitted = time.monotonic(), 0  # no catching up on the time nobody traded
                    self._anchor = None
                    if self._warmup_ms and not self._warmed_up:
                        self._virtual_ms, self._warmed_up = time.time() * 1000 - self._warmup_ms, True
                        log.info("warm-up: trades from %.0f s ago at %s/s, sent as fast as read", self._warmup_ms / 1000,
                                 self._warmup_rate)
                    continue
            while self._commands_waiting:
                time.sleep(0.0005)
            warming = self._virtual_ms is not None
            batch = self._batch_size(started, emitted)
            if batch <= 0:  # ahead of the rate: wait for the next trade's turn, in ticks of at least 2 ms
                wait = (min(0.05, self._seconds_to_next()) if self._speed is not None else
                        (emitted + 1) / self._rate - (time.monotonic() - started))
                time.sleep(max(0.002, wait))
                continue
            emitted += self._emit(batch)
            if warming and self._virtual_ms is None:  # caught up with the clock: the real-time rate from here
                started, emitted = time.monotonic(), 0
            if self._rate > 0 and time.monotonic() - started > 10.0:  # bound the pacing arithmetic
                started, emitted = time.monotonic(), 0

    def _emit(self, count: int) -> int:
        """Make up to ``count`` trades and send them to their subscribers; returns how many were made (none once
        paused: a pause that came between the market loop's check and here holds)."""
        with self._lock:
            if self._paused:
                return 0
            clients = list(self._clients)
            outgoing: dict[_Client, list[bytes]] = {client: [] for client in clients}
            delivered: dict[_Client, list[tuple[str, int, bytes]]] = {client: [] for client in clients}
            garbage: list[bytes] = []  # as the first subscriber got it
            made, exhausted = 0, False
            for _ in range(count):
                if self._speed is not None and not self._due():
                    break
                trade = self._next_trade()
                if trade is None:
                    exhausted = True
                    break
                symbol, event = trade
                made += 1
                self._record(symbol, event)
                trade_id = event[schema.EVENT_TRADE_ID]
                subscribers = [client for client in clients if symbol in client.symbols]
                if self._garbage_pending > 0 or (self._garbage_ratio and self._random.random() < self._garbage_ratio):
                    self._garbage_pending = max(0, self._garbage_pending - 1)
                    _, payload = self._garbage_for(event)
                    for client in subscribers:
                        outgoing[client].append(frame(_OP_TEXT, client.wrap(symbol, payload)))
                    if subscribers:
                        garbage.append(subscribers[0].wrap(symbol, payload))
                if self._take_skip(symbol):
                    self._skipped[symbol].append(trade_id)
                    continue
                if not subscribers:
                    self._unsent[symbol].append(trade_id)
                    continue
                payload = event_json(event)
                for client in subscribers:
                    outgoing[client].append(frame(_OP_TEXT, client.wrap(symbol, payload)))
                    delivered[client].append((symbol, trade_id, payload))
            sent: dict[tuple[str, int], bytes] = {}
            for client in clients:
                if outgoing[client] and client.send(b"".join(outgoing[client])):
                    sent.update(((symbol, trade_id), payload) for symbol, trade_id, payload in delivered[client])
            for (symbol, trade_id), payload in sorted(sent.items()):
                self._sent[symbol].append(trade_id)
                self._sent_total[symbol] += 1
                if self.record_payloads:
                    self._sent_payloads[symbol][trade_id] = payload
            self.garbage_sent.extend(garbage)
            if exhausted:  # only now: everything about the last batch is on record
                self.done.set()
            return made

    # --- pings -----------------------------------------------------------------------------------

    def _run_pings(self) -> None:
        sequence = 0
        while not self._stopping.is_set():
            interval = self._ping_interval
            self._ping_wake.wait(interval if interval else None)
            if self._ping_wake.is_set():
                self._ping_wake.clear()
                continue
            with self._command():
                clients = list(self._clients)
            for client in clients:
                sequence += 1
                payload = self._ping_payload + b"-" + str(sequence).encode()
                if client.send(frame(_OP_PING, payload)):
                    with self._command():
                        self.pings_sent.append(payload)

    # --- connections -----------------------------------------------------------------------------

    def _connected(self, client: _Client) -> None:
        with self._command():
            self._clients.append(client)
            self._connections += 1
            self._wake.notify_all()

    def _forget(self, client: _Client) -> None:
        with self._command():
            if client in self._clients:
                self._clients.remove(client)

    def _drop_clients(self, clients: list[_Client]) -> None:
        for client in clients:
            self._forget(client)
            client.end()

    def _pong(self, payload: bytes) -> None:
        with self._command():
            self.pongs_received.append(payload)

    def _rest_failure(self) -> int | None:
        with self._command():
            self._rest_calls += 1
            return self._rest_status


def parse_streams(path: str, query: str, symbols: tuple[str, ...]) -> tuple[tuple[str, ...], bool] | None:
    """(symbols, combined) of a stream URL (``/ws/btcusdt@trade`` or ``/stream?streams=...``), None if not one."""
    if path.startswith("/ws/"):
        names, combined = path[len("/ws/"):].split("/"), False
    elif path.rstrip("/") == "/stream":
        names, combined = parse_qs(query).get("streams", [""])[0].split("/"), True
    else:
        return None
    wanted = []
    for name in names:
        if not name.endswith(TRADE_STREAM_SUFFIX) or name[: -len(TRADE_STREAM_SUFFIX)].upper() not in symbols:
            return None
        wanted.append(name[: -len(TRADE_STREAM_SUFFIX)].upper())
    return tuple(wanted), combined


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "binance-emulator"

    @property
    def emulator(self) -> BinanceEmulator:
        return self.server.emulator  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket(url.path, url.query)
        elif url.path == HISTORICAL_TRADES_PATH:
            self._historical_trades(parse_qs(url.query))
        elif url.path == "/api/v3/ping":
            self._json(HTTPStatus.OK, {})
        elif url.path == "/control/stats":
            self._json(HTTPStatus.OK, self.emulator.stats())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"code": -1, "msg": f"no such endpoint: {url.path}"})

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        emulator = self.emulator
        command = url.path.removeprefix("/control/")
        try:
            if command == "drop":
                result = {"dropped": emulator.drop()}
            elif command == "skip":
                emulator.skip(int(query.get("n", 1)), query.get("symbol"))
                result = {"skip": int(query.get("n", 1))}
            elif command == "garbage":
                emulator.garbage(int(query.get("n", 1)))
                result = {"garbage": int(query.get("n", 1))}
            elif command == "rate":
                emulator.set_rate(float(query["value"]))
                result = {"rate": float(query["value"])}
            elif command == "pause":
                emulator.pause()
                result = {"paused": True}
            elif command == "resume":
                emulator.resume()
                result = {"paused": False}
            elif command == "ping":
                emulator.start_pings(float(query.get("interval", 20)), query.get("payload", "binance-ping").encode())
                result = {"ping_interval": float(query.get("interval", 20))}
            elif command == "shutdown":
                result = {"notified": emulator.server_shutdown()}
            elif command == "rest":
                emulator.set_rest_status(int(query.get("status", 200)))
                result = {"rest_status": int(query.get("status", 200))}
            else:
                self._json(HTTPStatus.NOT_FOUND, {"code": -1, "msg": f"no such command: {command}"})
                return
        except (KeyError, ValueError) as error:
            self._json(HTTPStatus.BAD_REQUEST, {"code": -1, "msg": f"bad arguments: {error}"})
            return
        self._json(HTTPStatus.OK, result)

    def _historical_trades(self, query: dict[str, list[str]]) -> None:
        emulator = self.emulator
        failure = emulator._rest_failure()
        if failure is not None:
            self._json(failure, {"code": -1003, "msg": "emulated failure"})
            return
        symbol = query.get("symbol", [""])[0].upper()
        if symbol not in emulator.symbols:
            self._json(HTTPStatus.BAD_REQUEST, {"code": -1121, "msg": "Invalid symbol."})
            return
        try:
            limit = int(query.get("limit", [HISTORICAL_TRADES_DEFAULT_LIMIT])[0])
            from_id = int(query["fromId"][0]) if "fromId" in query else None
        except ValueError:
            self._json(HTTPStatus.BAD_REQUEST, {"code": -1100, "msg": "Illegal characters found in a parameter."})
            return
        limit = max(1, min(limit, HISTORICAL_TRADES_MAX_LIMIT))
        self._json(HTTPStatus.OK, emulator.historical_trades(symbol, from_id, limit))

    def _websocket(self, path: str, query: str) -> None:
        emulator = self.emulator
        streams = parse_streams(path, query, emulator.symbols)
        key = self.headers.get("Sec-WebSocket-Key")
        if streams is None or not key:
            self._json(HTTPStatus.BAD_REQUEST, {"code": -1, "msg": f"unknown stream: {self.path}"})
            return
        self.send_response(HTTPStatus.SWITCHING_PROTOCOLS)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket_accept(key))
        self.end_headers()
        self.close_connection = True
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(self.connection, *streams, number=emulator.connections + 1)
        emulator._connected(client)
        try:
            self._serve_client(client)
        finally:
            emulator._forget(client)
            client.end()

    def _serve_client(self, client: _Client) -> None:
        """Read the client's frames until it closes or goes away: pongs recorded, pings answered."""
        emulator = self.emulator
        while True:
            try:
                opcode, payload = read_frame(self.rfile)
            except (EOFError, OSError):
                return
            except ProtocolError:
                emulator._forget(client)
                client.end(struct.pack("!H", _CLOSE_PROTOCOL_ERROR))
                return
            if opcode == _OP_PONG:
                emulator._pong(payload)
            elif opcode == _OP_PING:
                client.send(frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                # Stop trading to it first, so every trade sent before the close reply reaches it.
                emulator._forget(client)
                client.end(payload[:2] if len(payload) >= 2 else struct.pack("!H", _CLOSE_NORMAL))
            # Text frames (SUBSCRIBE and friends) are not emulated: streams are chosen by URL.


CLOCK_IDS_PER_SECOND = 100_000  # above any rate the emulator sustains, so ids keep rising across restarts


def clock_trade_id(now: float | None = None) -> int:
    """A first trade id above those of any earlier run of an endless market: seconds since the epoch x 10^5."""
    return int(now if now is not None else time.time()) * CLOCK_IDS_PER_SECOND


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve emulated Binance trade streams and historicalTrades.")
    parser.add_argument("--symbols", default=schema.DEFAULT_SYMBOL, help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    parser.add_argument("--port", type=int, default=0, help="0: an ephemeral port (printed)")
    parser.add_argument("--rate", type=float, default=50.0, help="trades per second over all symbols")
    parser.add_argument("--trades", type=int, default=None, help="trades per symbol (default: endless)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--date", default="2025-04-01", help="the generated day the trades are drawn from")
    parser.add_argument("--garbage-ratio", type=float, default=0.0, help="share of messages that are malformed")
    parser.add_argument("--ping-interval", type=float, default=20.0, help="seconds between pings (Binance: 20)")
    parser.add_argument("--history-limit", type=int, default=200_000,
                        help="trades kept for historicalTrades and the sent counters (memory)")
    parser.add_argument("--warmup-minutes", type=float, default=0.0,
                        help="start the market this many minutes in the past, sent as fast as read (demo: bars "
                             "and prediction features at once)")
    parser.add_argument("--warmup-rate", type=float, default=50.0, help="trades per second of the warm-up's past")
    parser.add_argument("--first-trade-id", type=int, default=None,
                        help="endless market: the first trade id (default: from the clock, so a restarted "
                             "emulator continues above the ids a producer already has)")
    parser.add_argument("--replay-csv", action="append", help="serve this raw trades file (id order) instead of "
                        "generated trades: a stored day's replay (btc_assets.stream.replay), one symbol; given "
                        "more than once, the files are served one after the other")
    parser.add_argument("--replay-offset-ms", type=int, default=0, help="added to every replayed trade's time")
    parser.add_argument("--speed", type=float, default=None,
                        help="pace trades by their own times, this many times faster than they happened")
    args = parser.parse_args(argv)
    tapes = None
    if args.replay_csv:
        from pathlib import Path

        from btc_assets.stream.replay import events

        symbols = args.symbols.split(",")
        if len(symbols) != 1:
            parser.error("--replay-csv serves one symbol")
        tapes = {symbols[0].upper(): events([Path(path) for path in args.replay_csv], symbols[0].upper(), args.replay_offset_ms)}
        args.trades = 0  # a fixed tape: no clock-derived first id
    if args.first_trade_id is None and args.trades is None:
        args.first_trade_id = clock_trade_id()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    emulator = BinanceEmulator(tuple(args.symbols.split(",")), trades=args.trades, rate=args.rate, seed=args.seed,
                               date=args.date, garbage_ratio=args.garbage_ratio, ping_interval=args.ping_interval,
                               history_limit=args.history_limit, record_payloads=False, port=args.port,
                               warmup_seconds=args.warmup_minutes * 60, warmup_rate=args.warmup_rate,
                               first_trade_id=args.first_trade_id, tapes=tapes, speed=args.speed)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    with emulator:
        print(f"BTC_BINANCE_WS_URL={emulator.ws_url}\nBTC_BINANCE_REST_URL={emulator.base_url}", flush=True)
        stopped.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

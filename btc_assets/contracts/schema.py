"""The data contracts (shared/CONTRACTS.md) as code: every name a trade or a minute bar is known by.

One schema, one place: Kafka, the MapReduce scripts, Spark, Flux queries, the Dagster checks and
the dashboards import these names instead of spelling them again.

This module uses the standard library only and imports nothing from the package, because Hadoop
Streaming ships it next to mapper.py/reducer.py as a plain top-level module (``-files``; see
``btc_assets.contracts.bars.streaming_support_files``).
"""

from __future__ import annotations

import math
import re
from datetime import date as Date
from typing import Any, NamedTuple

# --- 1. Trade, as Binance publishes it ------------------------------------------------------

# Live WebSocket `<symbol>@trade` event keys.
EVENT_TYPE = "e"
EVENT_TIME = "E"
EVENT_SYMBOL = "s"
EVENT_TRADE_ID = "t"
EVENT_PRICE = "p"
EVENT_QUANTITY = "q"
EVENT_TRADE_TIME = "T"
EVENT_IS_BUYER_MAKER = "m"
EVENT_IGNORE = "M"
TRADE_EVENT_TYPE = "trade"
# A combined stream (`/stream?streams=...`) wraps each event as {"stream": ..., "data": {...}}.
COMBINED_STREAM_KEY = "stream"
COMBINED_DATA_KEY = "data"
# "M" is documented as "ignore" and "b"/"a" only exist in older payloads, so none of them is required.
REQUIRED_EVENT_KEYS = (
    EVENT_TYPE,
    EVENT_TIME,
    EVENT_SYMBOL,
    EVENT_TRADE_ID,
    EVENT_PRICE,
    EVENT_QUANTITY,
    EVENT_TRADE_TIME,
    EVENT_IS_BUYER_MAKER,
)

# History CSV (data.binance.vision spot daily trades), in file order; spot files have no header.
TRADE_ID = "id"
PRICE = "price"
QTY = "qty"
QUOTE_QTY = "quote_qty"
TIME = "time"
IS_BUYER_MAKER = "is_buyer_maker"
IS_BEST_MATCH = "is_best_match"
HISTORY_COLUMNS = (TRADE_ID, PRICE, QTY, QUOTE_QTY, TIME, IS_BUYER_MAKER, IS_BEST_MATCH)
# Binance writes `True`/`False`; the lower-case spelling is accepted because other exports use it.
TRUE_VALUES = ("True", "true")
FALSE_VALUES = ("False", "false")
# Prices and quantities carry at most 8 decimals (Binance's precision), in history and live alike.
DECIMALS = 8

# History `time` is in microseconds from 2025-01-01 on and in milliseconds before. Values are
# told apart one by one, because a file (or a split of one) never says which unit it uses:
# 10^14 ms is in the year 5138, 10^14 µs is in 1973.
MICROSECONDS_FROM = 10**14


def trade_time_to_ms(trade_time: int) -> int:
    """Trade time in milliseconds since the epoch, from a history value in ms or µs (see MICROSECONDS_FROM)."""
    return trade_time if trade_time < MICROSECONDS_FROM else trade_time // 1000


class Trade(NamedTuple):
    """One trade as the history CSV has it (``time`` still in the file's unit, ms or µs)."""

    trade_id: int
    price: float
    qty: float
    quote_qty: float
    time: int
    is_buyer_maker: bool
    is_best_match: bool


class MalformedTrade(ValueError):
    """A trade that does not parse; ``reason`` is the counter it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# Why a line was skipped: the Hadoop Streaming counters of the mapper (group COUNTER_GROUP).
COUNTER_GROUP = "btc"
TRADES_COUNTER = "trades"
MALFORMED_COUNTER = "malformed_lines"  # the sum of the reasons below
HEADER_LINE = "header_lines"
WRONG_COLUMN_COUNT = "wrong_column_count"
NON_NUMERIC = "non_numeric"
BAD_BOOLEAN = "bad_boolean"
# Numeric but impossible: price or quantity not above zero once rounded to DECIMALS, negative
# quote quantity, trade id or time, NaN/inf, or too large for exact fixed-point sums.
BAD_VALUE = "bad_value"
MALFORMED_REASONS = (HEADER_LINE, WRONG_COLUMN_COUNT, NON_NUMERIC, BAD_BOOLEAN, BAD_VALUE)
# Reducer counters: bars written, and partial-aggregate lines that did not parse.
MINUTE_BARS_COUNTER = "minute_bars"
BAD_PARTIALS_COUNTER = "bad_partials"


def counter_line(name: str, value: int) -> str:
    """A Hadoop Streaming counter update, as a task writes it to stderr."""
    return f"reporter:counter:{COUNTER_GROUP},{name},{value}\n"

# Fixed-point limits (see bars.py: sums are exact integers of 10^-DECIMALS): a value must round to
# a unit count that a float holds exactly, which also keeps per-chunk int64 sums far from overflow.
MAX_UNITS = 2**53


def _parse_bool(text: str) -> bool:
    if text in TRUE_VALUES:
        return True
    if text in FALSE_VALUES:
        return False
    raise MalformedTrade(BAD_BOOLEAN, text)


def check_trade_values(trade_id: int, price: float, qty: float, quote_qty: float, trade_time: int) -> None:
    """Raise MalformedTrade(BAD_VALUE) for numbers no real trade has (the vectorised mapper mirrors this)."""
    scale = 10**DECIMALS
    if not (math.isfinite(price) and math.isfinite(qty) and math.isfinite(quote_qty)):
        raise MalformedTrade(BAD_VALUE, "not finite")
    price_units, qty_units, quote_units = round(price * scale), round(qty * scale), round(quote_qty * scale)
    if trade_id < 0 or trade_time <= 0 or price_units <= 0 or qty_units <= 0 or quote_units < 0:
        raise MalformedTrade(BAD_VALUE, "out of range")
    if max(price_units, qty_units, quote_units) >= MAX_UNITS or trade_id >= 2**63 or trade_time >= 2**63:
        raise MalformedTrade(BAD_VALUE, "too large")


def parse_history_line(line: str) -> Trade:
    """One history CSV line (without or with its LF/CRLF) as a Trade; raises MalformedTrade with the reason."""
    fields = line.rstrip("\r\n").split(",")
    if fields[0] == TRADE_ID:  # futures files (and hand-made exports) start with a header
        raise MalformedTrade(HEADER_LINE)
    if len(fields) != len(HISTORY_COLUMNS):
        raise MalformedTrade(WRONG_COLUMN_COUNT, str(len(fields)))
    id_text, price_text, qty_text, quote_text, time_text, maker_text, best_text = fields
    try:
        trade_id, trade_time = int(id_text), int(time_text)
        price, qty, quote_qty = float(price_text), float(qty_text), float(quote_text)
    except ValueError as error:
        raise MalformedTrade(NON_NUMERIC, str(error)) from None
    is_buyer_maker, is_best_match = _parse_bool(maker_text), _parse_bool(best_text)
    check_trade_values(trade_id, price, qty, quote_qty, trade_time)
    return Trade(trade_id, price, qty, quote_qty, trade_time, is_buyer_maker, is_best_match)


class LiveTrade(NamedTuple):
    """One trade from a live WebSocket event, typed (prices stay decimal strings as received)."""

    symbol: str
    trade_id: int
    price: str
    qty: str
    trade_time_ms: int
    event_time_ms: int
    is_buyer_maker: bool


def unwrap_event(message: dict[str, Any]) -> dict[str, Any]:
    """The trade event itself, whether it came from a single stream or wrapped by a combined one."""
    if COMBINED_DATA_KEY in message and COMBINED_STREAM_KEY in message:
        return message[COMBINED_DATA_KEY]
    return message


def trade_from_event(message: dict[str, Any]) -> LiveTrade:
    """A LiveTrade from a decoded WebSocket message; raises MalformedTrade if a required key or number is bad."""
    event = unwrap_event(message)
    if not isinstance(event, dict):
        raise MalformedTrade("not_an_object")
    missing = [key for key in REQUIRED_EVENT_KEYS if event.get(key) is None]  # a JSON null is missing, as in the job
    if missing:
        raise MalformedTrade("missing_key", ",".join(missing))
    if event[EVENT_TYPE] != TRADE_EVENT_TYPE:
        raise MalformedTrade("not_a_trade", str(event[EVENT_TYPE]))
    try:
        price, qty = float(event[EVENT_PRICE]), float(event[EVENT_QUANTITY])
        trade_id, trade_time = int(event[EVENT_TRADE_ID]), int(event[EVENT_TRADE_TIME])
        event_time = int(event[EVENT_TIME])
    except (TypeError, ValueError) as error:
        raise MalformedTrade(NON_NUMERIC, str(error)) from None
    if not isinstance(event[EVENT_IS_BUYER_MAKER], bool):
        raise MalformedTrade(BAD_BOOLEAN, repr(event[EVENT_IS_BUYER_MAKER]))
    check_trade_values(trade_id, price, qty, price * qty, trade_time)
    return LiveTrade(
        symbol=str(event[EVENT_SYMBOL]),
        trade_id=trade_id,
        price=str(event[EVENT_PRICE]),
        qty=str(event[EVENT_QUANTITY]),
        trade_time_ms=trade_time,
        event_time_ms=event_time,
        is_buyer_maker=event[EVENT_IS_BUYER_MAKER],
    )


# History archive (data.binance.vision).
HISTORY_BASE_URL = "https://data.binance.vision"
HISTORY_MARKET = "spot"
_HISTORY_PATH = re.compile(
    r"^/?data/(?P<market>spot)/daily/trades/(?P<symbol>[A-Z0-9]+)/"
    r"(?P=symbol)-trades-(?P<date>\d{4}-\d{2}-\d{2})\.zip(?P<checksum>\.CHECKSUM)?$"
)


def history_zip_name(symbol: str, date: str) -> str:
    """``BTCUSDT-trades-2025-04-01.zip``."""
    return f"{symbol}-trades-{date}.zip"


def history_csv_name(symbol: str, date: str) -> str:
    """``BTCUSDT-trades-2025-04-01.csv``: the one member of the zip, and the raw file's name in storage."""
    return f"{symbol}-trades-{date}.csv"


def history_checksum_name(symbol: str, date: str) -> str:
    """``BTCUSDT-trades-2025-04-01.zip.CHECKSUM``."""
    return history_zip_name(symbol, date) + ".CHECKSUM"


def history_zip_path(symbol: str, date: str, market: str = HISTORY_MARKET) -> str:
    """``data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-04-01.zip``: the path under the archive's base URL."""
    return f"data/{market}/daily/trades/{symbol}/{history_zip_name(symbol, date)}"


def history_zip_url(symbol: str, date: str, base_url: str = HISTORY_BASE_URL) -> str:
    """The zip's URL; the checksum is at the same URL + ``.CHECKSUM``."""
    return f"{base_url.rstrip('/')}/{history_zip_path(symbol, date)}"


def parse_history_path(path: str, pattern: re.Pattern = _HISTORY_PATH) -> tuple[str, str, bool] | None:
    """(symbol, date, is_checksum) for an archive URL path, or None if it names no daily trades file (``pattern``:
    of another daily file, see ``parse_klines_path``)."""
    match = pattern.match(path)
    if match is None:
        return None
    try:
        Date.fromisoformat(match["date"])
    except ValueError:
        return None
    return match["symbol"], match["date"], match["checksum"] is not None


# Binance's 1-minute klines, published beside the trades (not in CONTRACTS.md: this project's addition, README):
#   data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-04-01.zip (+ .CHECKSUM), one CSV, no header, 12 columns:
KLINE_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trades",
                 "taker_buy_volume", "taker_buy_quote_volume", "ignore")
KLINE_INTERVAL = "1m"
_KLINES_PATH = re.compile(
    r"^/?data/(?P<market>spot)/daily/klines/(?P<symbol>[A-Z0-9]+)/1m/"
    r"(?P=symbol)-1m-(?P<date>\d{4}-\d{2}-\d{2})\.zip(?P<checksum>\.CHECKSUM)?$"
)


def klines_zip_name(symbol: str, date: str) -> str:
    """``BTCUSDT-1m-2025-04-01.zip``."""
    return f"{symbol}-{KLINE_INTERVAL}-{date}.zip"


def klines_csv_name(symbol: str, date: str) -> str:
    """``BTCUSDT-1m-2025-04-01.csv``: the zip's one member, and the file's name in storage."""
    return f"{symbol}-{KLINE_INTERVAL}-{date}.csv"


def klines_zip_path(symbol: str, date: str, market: str = HISTORY_MARKET) -> str:
    """``data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-04-01.zip``."""
    return f"data/{market}/daily/klines/{symbol}/{KLINE_INTERVAL}/{klines_zip_name(symbol, date)}"


def klines_zip_url(symbol: str, date: str, base_url: str = HISTORY_BASE_URL) -> str:
    return f"{base_url.rstrip('/')}/{klines_zip_path(symbol, date)}"


def parse_klines_path(path: str) -> tuple[str, str, bool] | None:
    """(symbol, date, is_checksum) for an archive URL path of a daily 1-minute klines file, or None."""
    return parse_history_path(path, _KLINES_PATH)


def checksum_text(sha256_hex: str, file_name: str) -> str:
    """The content of a ``.CHECKSUM`` file: ``<sha256>  <filename>`` (the ``sha256sum`` format)."""
    return f"{sha256_hex}  {file_name}\n"


def parse_checksum(text: str) -> tuple[str, str]:
    """(sha256 hex, file name) from a ``.CHECKSUM`` file's content."""
    digest, _, file_name = text.strip().partition(" ")
    return digest.lower(), file_name.strip().lstrip("*")


# --- 2. Kafka --------------------------------------------------------------------------------

DEFAULT_SYMBOL = "BTCUSDT"
TRADE_TOPIC_TEMPLATE = "{symbol}-TRADES"
DEFAULT_PARTITIONS = 3
DLQ_SUFFIX = ".dlq"
DLQ_ERROR_HEADER = "error"
DLQ_SOURCE_HEADER = "source"


def trade_topic(symbol: str = DEFAULT_SYMBOL, template: str = TRADE_TOPIC_TEMPLATE) -> str:
    """The topic of a symbol's raw trades: ``BTCUSDT-TRADES`` with the default template."""
    return template.format(symbol=symbol.upper())


def dlq_topic(topic: str) -> str:
    """Where messages of ``topic`` that do not parse go: ``BTCUSDT-TRADES.dlq``."""
    return topic + DLQ_SUFFIX


# --- 3. Storage layout -----------------------------------------------------------------------

DEFAULT_ROOT = "/btc"


def _root(root: str) -> str:
    # "file:///" must keep its slashes: only the path part of the root loses a trailing "/".
    trimmed = root.rstrip("/")
    return trimmed + "//" if trimmed.endswith(":") else trimmed


def raw_trades_dir(root: str, symbol: str, date: str) -> str:
    """``<root>/raw/trades/symbol=BTCUSDT/date=2025-04-01``."""
    return f"{_root(root)}/raw/trades/symbol={symbol}/date={date}"


def raw_trades_path(root: str, symbol: str, date: str) -> str:
    """``<root>/raw/trades/symbol=BTCUSDT/date=2025-04-01/BTCUSDT-trades-2025-04-01.csv``."""
    return f"{raw_trades_dir(root, symbol, date)}/{history_csv_name(symbol, date)}"


def raw_klines_path(root: str, symbol: str, date: str) -> str:
    """``<root>/raw/klines/symbol=BTCUSDT/date=2025-04-01/BTCUSDT-1m-2025-04-01.csv``."""
    return f"{_root(root)}/raw/klines/symbol={symbol}/date={date}/{klines_csv_name(symbol, date)}"


def minute_bars_dir(root: str, symbol: str, date: str) -> str:
    """``<root>/agg/minute/symbol=BTCUSDT/date=2025-04-01``: holds the MapReduce ``part-*`` files."""
    return f"{_root(root)}/agg/minute/symbol={symbol}/date={date}"


def model_dir(root: str, model: str, version: str) -> str:
    """``<root>/models/<model>/<version>``: a Spark ML PipelineModel plus ``metrics.json``."""
    return f"{_root(root)}/models/{model}/{version}"


def checkpoint_dir(root: str, stream_name: str) -> str:
    """``<root>/checkpoints/<stream-name>``: a Spark Structured Streaming checkpoint."""
    return f"{_root(root)}/checkpoints/{stream_name}"


MODEL_METRICS_FILE = "metrics.json"

# --- 4. Minute bar ---------------------------------------------------------------------------

MINUTE = "minute"
MINUTE_FORMAT = "%Y-%m-%d %H:%M"  # UTC minute start
BAR_FIELDS = (
    MINUTE,
    "trades",
    "open",
    "high",
    "low",
    "close",
    "avg_price",
    "vwap",
    "volume",
    "quote_volume",
    "avg_quantity",
    "avg_quote_quantity",
    "maker_ratio",
    "taker_buy_volume",
    "first_trade_id",
    "last_trade_id",
)
INTEGER_BAR_FIELDS = ("trades", "first_trade_id", "last_trade_id")
BAR_SEPARATOR = "\t"

# --- 5. InfluxDB -----------------------------------------------------------------------------

DEFAULT_BUCKET = "btc"
DEFAULT_ORG = "btc"

SYMBOL_TAG = "symbol"
MODEL_TAG = "model"
COMPONENT_TAG = "component"

TRADES_MEASUREMENT = "trades"
TRADE_FIELDS = ("price", "quantity", "quote_quantity", "is_buyer_maker", "trade_id")

BARS_MEASUREMENT = "bars_1m"
BAR_MEASUREMENT_FIELDS = tuple(field for field in BAR_FIELDS if field != MINUTE)

PREDICTIONS_MEASUREMENT = "price_predictions"
PREDICTION_FIELDS = ("predicted_price", "actual_price", "error")
MODELS = ("lr", "rf", "gbt", "persistence")

HEALTH_MEASUREMENT = "pipeline_health"

# Two trades in the same millisecond must not overwrite each other, and a replayed trade must land
# on the same point again, so the sub-millisecond part of the timestamp comes from the trade id.
# A million trades of one symbol in one millisecond would be needed for two ids to collide.
_NS_PER_MS = 1_000_000


def trade_point_time_ns(trade_time: int, trade_id: int) -> int:
    """Influx timestamp (ns) of a trade: its time in ms (history µs are truncated) plus ``trade_id % 10^6`` ns.

    Live (ms) and history (µs) copies of the same trade therefore land on the same point.
    """
    return trade_time_to_ms(trade_time) * _NS_PER_MS + trade_id % _NS_PER_MS

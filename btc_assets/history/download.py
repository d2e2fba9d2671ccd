"""data.binance.vision daily trade files: download, verify, and stream into storage.

    zip + .CHECKSUM  --(retry with backoff)-->  local temp file, SHA-256 verified
                     --(unzip, streamed)-->     <root>/raw/trades/symbol=S/date=D/S-trades-D.csv

The CSV is written to a temporary path and renamed into place only once complete, so a failed
download, a checksum mismatch or a killed run leaves storage exactly as it was.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import requests

from btc_assets.contracts import schema
from btc_assets.clients.http import TRANSIENT_STATUS, retrying_session
from btc_assets.clients.storage import Storage

CHUNK = 4 * 1024 * 1024


class HistoryError(RuntimeError):
    """A day could not be ingested; the message says which file and why."""


class DayNotPublished(HistoryError):
    """The archive has no file for that day (HTTP 404): not published yet, or a wrong symbol/date."""


class ChecksumMismatch(HistoryError):
    """The zip's SHA-256 differs from its .CHECKSUM: a corrupt or tampered download."""


@dataclass(frozen=True)
class RawFile:
    """Facts about one ingested daily file (where it came from, where it went), shown as its asset's metadata."""

    symbol: str
    date: str
    path: str
    source_url: str
    sha256: str
    rows: int
    bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RawDay(RawFile):
    """An ingested day of trades (raw_trades): the file's facts and its first and last trade."""

    first_trade_id: int | None
    last_trade_id: int | None
    first_time_ms: int | None
    last_time_ms: int | None


@dataclass
class HistoryClient:
    base_url: str = schema.HISTORY_BASE_URL
    retries: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 60.0
    log: Callable[[str], None] = print

    def __post_init__(self):
        # Connection errors and 429/5xx are retried with capped exponential backoff; a 404 is final.
        self.session = retrying_session(retries=self.retries, backoff=self.backoff_seconds,
                                        max_backoff=self.max_backoff_seconds, log=self.log)

    def _get(self, url: str, *, stream: bool = False) -> requests.Response:
        """GET with retries on connection errors and 429/5xx; a 404 is final (DayNotPublished)."""
        try:
            response = self.session.get(url, stream=stream, timeout=self.timeout_seconds)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError) as exc:
            raise HistoryError(f"{url}: still failing after {self.retries + 1} attempts ({type(exc).__name__}: "
                               f"{exc})") from exc
        if response.status_code == 404:
            raise DayNotPublished(f"{url} does not exist (HTTP 404): the day is not published "
                                  "yet, or the symbol/date is wrong")
        if response.status_code in TRANSIENT_STATUS:
            raise HistoryError(f"{url}: still failing after {self.retries + 1} attempts "
                               f"(HTTP {response.status_code})")
        try:
            response.raise_for_status()
        except requests.HTTPError as exc:
            raise HistoryError(f"{url}: {exc}") from exc
        return response

    def download(self, symbol: str, date: str, directory: Path, kind: str = "trades") -> tuple[Path, str, str]:
        """Download a day's zip (``kind``: trades, or the 1-minute klines) into ``directory`` and verify it;
        return (path, sha256, url)."""
        if kind == "trades":
            url, zip_name = schema.history_zip_url(symbol, date, self.base_url), schema.history_zip_name(symbol, date)
        else:
            url, zip_name = schema.klines_zip_url(symbol, date, self.base_url), schema.klines_zip_name(symbol, date)
        expected, name = schema.parse_checksum(self._get(url + ".CHECKSUM").text)
        if name != zip_name:
            raise ChecksumMismatch(f"{url}.CHECKSUM names {name!r}, not {zip_name!r}")
        target = directory / zip_name
        digest = hashlib.sha256()
        with self._get(url, stream=True) as response, open(target, "wb") as out:
            for chunk in response.iter_content(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise ChecksumMismatch(f"{url}: SHA-256 {actual} does not match its .CHECKSUM {expected}; "
                                   "nothing was written to storage")
        return target, actual, url


def csv_chunks(zip_path: Path) -> Iterator[bytes]:
    """The bytes of the zip's one CSV member, streamed."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise HistoryError(f"{zip_path.name} is not a valid zip ({exc})") from exc
    with archive:
        members = [info for info in archive.infolist() if info.filename.endswith(".csv")]
        if len(members) != 1:
            raise HistoryError(f"{zip_path.name} holds {len(members)} CSV files, expected exactly one")
        with archive.open(members[0]) as handle:
            while chunk := handle.read(CHUNK):
                yield chunk


class _Census:
    """Counts rows and bytes of a chunk stream and keeps its edges, to find the first/last trade."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks = chunks
        self.rows = 0
        self.bytes = 0
        self.head = b""
        self.tail = b""
        self._ends_with_newline = True

    def __iter__(self):
        for chunk in self.chunks:
            if not self.head:
                self.head = chunk[:64 * 1024]
            self.tail = (self.tail + chunk)[-64 * 1024:]
            self.rows += chunk.count(b"\n")
            self.bytes += len(chunk)
            self._ends_with_newline = chunk.endswith(b"\n")
            yield chunk
        if not self._ends_with_newline:
            self.rows += 1

    def edge_trades(self) -> tuple[schema.Trade | None, schema.Trade | None]:
        return (_first_trade(self.head.splitlines()[:-1] or self.head.splitlines()),
                _first_trade(reversed(self.tail.splitlines()[1:] or self.tail.splitlines())))


def _first_trade(lines) -> schema.Trade | None:
    for line in lines:
        try:
            return schema.parse_history_line(line.decode(errors="replace"))
        except schema.MalformedTrade:
            continue
    return None


def ingest_day(client: HistoryClient, storage: Storage, symbol: str, date: str) -> RawDay:
    """Download, verify and store one day; return its facts. Storage is untouched on any failure."""
    path = storage.path(schema.raw_trades_path("", symbol, date).lstrip("/"))
    with tempfile.TemporaryDirectory(prefix="btc-history-") as workdir:
        zip_path, sha256, url = client.download(symbol, date, Path(workdir))
        census = _Census(csv_chunks(zip_path))
        storage.replace(path, census)
    first, last = census.edge_trades()
    return RawDay(symbol=symbol, date=date, path=path, source_url=url, sha256=sha256, rows=census.rows,
                  bytes=census.bytes,
                  first_trade_id=first.trade_id if first else None, last_trade_id=last.trade_id if last else None,
                  first_time_ms=schema.trade_time_to_ms(first.time) if first else None,
                  last_time_ms=schema.trade_time_to_ms(last.time) if last else None)

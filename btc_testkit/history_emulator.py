"""A stand-in for data.binance.vision: serves generated daily trade archives over HTTP.

    GET /data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-04-01.zip            the zipped CSV
    GET /data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-04-01.zip.CHECKSUM   "<sha256>  <zip name>"

The same paths as the real archive, so a client switches between the two by its base URL alone
(schema.history_zip_url). A day is generated on its first request (btc_testkit.generator,
deterministic per seed) and kept in a cache directory; days outside the configured range, such as
today and the future, which the real archive has not published yet, and unknown symbols are 404.
``corrupt_checksum`` makes a day's CHECKSUM disagree with its zip, to test download verification.

Beside each day's trades it publishes the day's 1-minute klines, as Binance does, computed from the same
generated trades apart from the project's bar code (btc_testkit.klines):

    GET /data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-04-01.zip (+ .CHECKSUM)

and it can plant the faults users of the real archive report: ``plant_hole`` removes trades from a day's
trade file while its klines keep them (a day with missing trade ids), ``change_close`` publishes klines with
one minute's close changed.

    with serve(cache_dir="/tmp/archive", trades_per_day=50_000) as archive:
        requests.get(schema.history_zip_url("BTCUSDT", "2025-04-01", archive.base_url))

or, standalone: ``python -m btc_testkit.history_emulator --port 8081 --cache-dir /tmp/archive``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import threading
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np

from btc_assets.contracts import schema
from btc_testkit import generator, klines


def _yesterday_utc() -> str:
    return (datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat()


@dataclass
class HistoryArchive:
    """The archive's content: which days exist, and their files, generated on demand and cached on disk."""

    cache_dir: Path
    symbols: tuple[str, ...] = (schema.DEFAULT_SYMBOL,)
    first_date: str = generator.LISTING_DATE
    last_date: str | None = None  # None: yesterday (UTC), the newest day the real archive has
    seed: int = 0
    trades_per_day: int | None = None  # None: the generator's realistic count for the date
    _corrupted: set[tuple[str, str]] = field(default_factory=set)
    _variants: dict[tuple[str, str], str] = field(default_factory=dict)  # (symbol, date) -> "hole-<n>", "close-<minute>"
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)

    def has_day(self, symbol: str, date: str) -> bool:
        last_date = self.last_date or _yesterday_utc()
        first, day, last = (Date.fromisoformat(text) for text in (self.first_date, date, last_date))
        return symbol in self.symbols and first <= day <= last

    def corrupt_checksum(self, symbol: str, date: str, corrupted: bool = True) -> None:
        """From now on serve a CHECKSUM for this day that does not match its zip (or stop doing so)."""
        (self._corrupted.add if corrupted else self._corrupted.discard)((symbol, date))

    def plant_hole(self, symbol: str, date: str, trades: int = 100) -> None:
        """From now on serve the day's trade file without ``trades`` consecutive trades from the middle of the day
        (their ids missing); its klines still count them."""
        self._variants[(symbol, date)] = f"hole-{int(trades)}"

    def change_close(self, symbol: str, date: str, minute: int = 720) -> None:
        """From now on serve the day's klines with the close of ``minute`` (of the day) one cent higher."""
        self._variants[(symbol, date)] = f"close-{int(minute)}"

    def zip_file(self, symbol: str, date: str, kind: str = "trades") -> Path:
        """The day's zip on disk (``kind``: trades or klines), generated (once, even under concurrent requests)
        if not cached yet."""
        self._ensure(symbol, date)
        name = schema.history_zip_name(symbol, date) if kind == "trades" else schema.klines_zip_name(symbol, date)
        return self._day_dir(symbol, date) / name

    def checksum_text(self, symbol: str, date: str, kind: str = "trades") -> str:
        """The day's CHECKSUM content, wrong on purpose if the day was corrupted."""
        self._ensure(symbol, date)
        text = Path(f"{self.zip_file(symbol, date, kind)}.CHECKSUM").read_text()
        if (symbol, date) not in self._corrupted:
            return text
        digest, file_name = schema.parse_checksum(text)
        # Flip every hex digit: still a well-formed sha256, but never the zip's.
        return schema.checksum_text("".join(f"{15 - int(digit, 16):x}" for digit in digest), file_name)

    def _day_dir(self, symbol: str, date: str) -> Path:
        # The generator's inputs are part of the path, so a cache never serves a day made differently.
        size = "default" if self.trades_per_day is None else str(self.trades_per_day)
        variant = self._variants.get((symbol, date))
        return self.cache_dir / f"seed={self.seed}" / f"trades={size}" / symbol / (variant or "published")

    def _ensure(self, symbol: str, date: str) -> None:
        day_dir = self._day_dir(symbol, date)
        done = day_dir / f"{schema.klines_zip_name(symbol, date)}.CHECKSUM"  # written last
        if done.exists():
            return
        with self._locks_guard:
            lock = self._locks.setdefault((symbol, date), threading.Lock())
        with lock:
            if not done.exists():
                day = generator.generate_day(symbol, date, seed=self.seed, trades=self.trades_per_day)
                frame = klines.klines_frame(day)  # from every trade: a hole is in the trade file only
                kind, _, amount = (self._variants.get((symbol, date)) or "-").partition("-")
                if kind == "hole":
                    middle = len(day) // 2
                    day = generator.without_rows(day, np.arange(middle, min(len(day), middle + int(amount))))
                elif kind == "close":
                    frame.loc[int(amount), "close"] += 1_000_000  # one cent, in units of 10^-8
                generator.write_zip(day, day_dir)
                klines.write_klines_zip(frame, symbol, date, day_dir)


class _ArchiveHandler(BaseHTTPRequestHandler):
    archive: HistoryArchive  # set on the subclass that serve() makes
    server_version = "history-emulator"

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        kind, target = "trades", schema.parse_history_path(path)
        if target is None:
            kind, target = "klines", schema.parse_klines_path(path)
        if target is None or not self.archive.has_day(target[0], target[1]):
            self._send(HTTPStatus.NOT_FOUND, b"NoSuchKey: The specified key does not exist.\n", "text/plain", with_body)
            return
        symbol, date, is_checksum = target
        if is_checksum:
            self._send(HTTPStatus.OK, self.archive.checksum_text(symbol, date, kind).encode(), "text/plain",
                       with_body)
            return
        zip_path = self.archive.zip_file(symbol, date, kind)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(zip_path.stat().st_size))
        self.end_headers()
        if with_body:
            with open(zip_path, "rb") as zipped:
                shutil.copyfileobj(zipped, self.wfile, 1 << 20)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, with_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        pass  # tests and the local stack would drown in access lines


class RunningArchive:
    """A started emulator: where it listens, and its archive (for ``corrupt_checksum``)."""

    def __init__(self, server: ThreadingHTTPServer, archive: HistoryArchive) -> None:
        self.server, self.archive = server, archive
        host, port = server.server_address[:2]
        self.base_url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start(host: str = "127.0.0.1", port: int = 0, **archive_options) -> RunningArchive:
    """Start serving in a background thread; ``port=0`` picks a free port (see ``base_url``)."""
    archive = HistoryArchive(**archive_options)
    handler = type("ArchiveHandler", (_ArchiveHandler,), {"archive": archive})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="history-emulator", daemon=True).start()
    return RunningArchive(server, archive)


@contextlib.contextmanager
def serve(host: str = "127.0.0.1", port: int = 0, **archive_options) -> Iterator[RunningArchive]:
    """The emulator for the duration of a ``with`` block; options as for HistoryArchive (cache_dir is required)."""
    running = start(host, port, **archive_options)
    try:
        yield running
    finally:
        running.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve generated Binance daily trade archives over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--cache-dir", required=True, help="where generated days are kept")
    parser.add_argument("--symbols", default=schema.DEFAULT_SYMBOL, help="comma-separated")
    parser.add_argument("--first-date", default=generator.LISTING_DATE)
    parser.add_argument("--last-date", default=None, help="default: yesterday (UTC)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trades-per-day", type=int, default=None, help="default: realistic for the date")
    args = parser.parse_args(argv)
    running = start(
        args.host,
        args.port,
        cache_dir=Path(args.cache_dir),
        symbols=tuple(args.symbols.split(",")),
        first_date=args.first_date,
        last_date=args.last_date,
        seed=args.seed,
        trades_per_day=args.trades_per_day,
    )
    print(f"serving {running.base_url}/{schema.history_zip_path('<SYMBOL>', '<DATE>')}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        running.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

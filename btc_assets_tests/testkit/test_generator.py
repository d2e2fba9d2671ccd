"""The trade generator: deterministic bytes, the archive's exact format, and trades that look like BTCUSDT's."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from decimal import Decimal

import numpy as np

from btc_testkit import generator

from btc_assets.contracts import schema

LINE = re.compile(rb"^\d+,\d+\.\d{8},\d+\.\d{8},\d+\.\d{8},\d+,(True|False),(True|False)$")


def csv_bytes(day) -> bytes:
    buffer = io.BytesIO()
    generator.write_csv(day, buffer)
    return buffer.getvalue()


def test_same_seed_same_bytes_other_seed_other_bytes():
    first = csv_bytes(generator.generate_day("BTCUSDT", "2025-04-01", seed=5, trades=20_000))
    again = csv_bytes(generator.generate_day("BTCUSDT", "2025-04-01", seed=5, trades=20_000))
    other = csv_bytes(generator.generate_day("BTCUSDT", "2025-04-01", seed=6, trades=20_000))
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(again).hexdigest()
    assert first != other


def test_csv_is_the_spot_archive_format(day_2025):
    text = csv_bytes(day_2025)
    lines = text.split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(day_2025) + 1  # no header, LF after every line
    assert all(LINE.match(line) for line in lines[:-1])
    # Each printed field is the exact decimal the day holds, and quote_qty is exactly price * qty.
    for line in lines[: 2000 : 7]:
        trade_id, price, qty, quote_qty, _, _, best = line.decode().split(",")
        assert Decimal(price) * Decimal(qty) == Decimal(quote_qty)
        assert Decimal(price) % Decimal("0.01") == 0 and Decimal(qty) % Decimal("0.00001") == 0
        assert best == "True"
    assert schema.parse_history_line(lines[0].decode()).trade_id == day_2025.trade_id[0]


def test_trade_ids_are_consecutive_and_continue_from_the_day_before():
    assert np.all(np.diff(generator.generate_day("BTCUSDT", "2025-04-01", trades=5_000).trade_id) == 1)
    before = generator.first_trade_id("BTCUSDT", "2025-03-31")
    day_before = generator.default_trade_count("BTCUSDT", "2025-03-31")
    assert generator.first_trade_id("BTCUSDT", "2025-04-01") == before + day_before
    # Around where the real BTCUSDT ids were in 2025: billions.
    assert 3_000_000_000 < before < 6_000_000_000


def test_time_is_in_microseconds_from_2025_and_milliseconds_before(day_2025, day_2024):
    day_start_ms = 1_743_465_600_000  # 2025-04-01 00:00 UTC
    assert day_2025.time.min() >= day_start_ms * 1000 and day_2025.time.max() < (day_start_ms + 86_400_000) * 1000
    assert day_2024.time.max() < schema.MICROSECONDS_FROM
    assert np.all(np.diff(day_2025.time) >= 0) and np.all(np.diff(day_2024.time) >= 0)
    assert np.all(day_2025.time_ms // 1000 == day_2025.time // 1_000_000)


def test_prices_quantities_and_sides_look_like_btcusdt(day_2025):
    price = day_2025.price_units / generator.UNITS
    assert np.all(day_2025.price_units % 1_000_000 == 0)  # 0.01 tick
    assert 60_000 < price.min() and price.max() < 100_000  # BTC in early April 2025
    assert 0.003 < (price.max() - price.min()) / price[0] < 0.2  # a day's range of a ~2.5% daily volatility
    assert 0.0005 < np.median(day_2025.qty_units / generator.UNITS) < 0.01
    assert 0.45 < day_2025.is_buyer_maker.mean() < 0.55


def test_activity_follows_the_clock_with_bursts():
    day = generator.generate_day("BTCUSDT", "2025-04-01", seed=3)
    assert 1_000_000 < len(day) < 6_000_000  # the default size is a realistic day for the date
    seconds = (day.time // 1_000_000) % 86_400
    per_hour = np.bincount(seconds // 3600, minlength=24) / 3600
    assert 10 < per_hour.mean() < 200  # tens of trades a second
    assert per_hour[14:17].mean() > 1.5 * per_hour[3:6].mean()  # US session busier than the Asian night
    assert np.bincount(seconds).max() > 5 * per_hour.mean()  # bursts: some seconds are far busier


def test_zip_and_checksum_hold_the_csv_and_verify(day_2024, tmp_path):
    zip_path, checksum_path = generator.write_zip(day_2024, tmp_path / "one")
    assert zip_path.name == "BTCUSDT-trades-2024-06-15.zip"
    assert checksum_path.name == "BTCUSDT-trades-2024-06-15.zip.CHECKSUM"
    digest, name = schema.parse_checksum(checksum_path.read_text())
    assert name == zip_path.name and digest == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["BTCUSDT-trades-2024-06-15.csv"]
        assert archive.read("BTCUSDT-trades-2024-06-15.csv") == csv_bytes(day_2024)
    again, _ = generator.write_zip(day_2024, tmp_path / "two")
    assert again.read_bytes() == zip_path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [zip_path.name, checksum_path.name]


def test_live_events_are_binance_trade_events(day_2025):
    events = list(generator.live_events(day_2025, 0, 500))
    assert len(events) == 500
    lines = csv_bytes(day_2025).decode().splitlines()[:500]
    for event, line in zip(events, lines):
        trade = schema.trade_from_event(event)
        trade_id, price, qty, _, trade_time, is_buyer_maker, _ = line.split(",")
        assert (trade.trade_id, trade.price, trade.qty) == (int(trade_id), price, qty)
        assert trade.trade_time_ms == int(trade_time) // 1000  # T is in ms even when the archive has µs
        assert 1 <= trade.event_time_ms - trade.trade_time_ms <= 8
        assert trade.is_buyer_maker == (is_buyer_maker == "True")
        assert set(event) == {*schema.REQUIRED_EVENT_KEYS, schema.EVENT_IGNORE}

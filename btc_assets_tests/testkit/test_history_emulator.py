"""The data.binance.vision emulator over real HTTP: zips that verify, 404s, and the corrupted-checksum switch."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from btc_testkit import history_emulator

from btc_assets.contracts import schema


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("archive")
    with history_emulator.serve(cache_dir=cache_dir, first_date="2024-01-01", trades_per_day=3_000) as running:
        yield running


def get(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_serves_a_zip_whose_checksum_verifies(archive):
    url = schema.history_zip_url("BTCUSDT", "2025-04-01", archive.base_url)
    assert url == archive.base_url + "/data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-04-01.zip"
    status, zipped = get(url)
    checksum_status, checksum = get(url + ".CHECKSUM")
    assert status == checksum_status == 200
    digest, name = schema.parse_checksum(checksum.decode())
    assert (digest, name) == (hashlib.sha256(zipped).hexdigest(), "BTCUSDT-trades-2025-04-01.zip")
    with zipfile.ZipFile(io.BytesIO(zipped)) as day:
        lines = day.read("BTCUSDT-trades-2025-04-01.csv").decode().splitlines()
    assert len(lines) == 3_000
    assert schema.trade_time_to_ms(schema.parse_history_line(lines[0]).time) >= 1_743_465_600_000
    assert get(url)[1] == zipped  # served again from the cache, same bytes


def test_head_announces_the_size(archive):
    url = schema.history_zip_url("BTCUSDT", "2024-06-15", archive.base_url)
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["Content-Length"]) == len(get(url)[1])


@pytest.mark.parametrize(
    "path",
    [
        "today",  # not published yet: resolved when the test runs, not when it is collected
        "tomorrow",
        schema.history_zip_path("BTCUSDT", "2099-01-01") + ".CHECKSUM",
        schema.history_zip_path("BTCUSDT", "2023-12-31"),  # before the configured first day
        schema.history_zip_path("ETHUSDT", "2025-04-01"),  # a symbol the archive does not have
        "data/spot/daily/trades/BTCUSDT/BTCUSDT-trades-2025-02-30.zip",
        "data/spot/monthly/trades/BTCUSDT/BTCUSDT-trades-2025-04.zip",
    ],
)
def test_missing_files_are_404(archive, path):
    if path in ("today", "tomorrow"):
        day = datetime.now(timezone.utc).date() + timedelta(days=path == "tomorrow")
        path = schema.history_zip_path("BTCUSDT", day.isoformat())
    assert get(f"{archive.base_url}/{path}")[0] == 404


def test_corrupted_checksum_no_longer_matches_the_zip_until_restored(archive):
    url = schema.history_zip_url("BTCUSDT", "2025-04-02", archive.base_url)
    zip_digest = hashlib.sha256(get(url)[1]).hexdigest()
    archive.archive.corrupt_checksum("BTCUSDT", "2025-04-02")
    corrupted, name = schema.parse_checksum(get(url + ".CHECKSUM")[1].decode())
    assert corrupted != zip_digest and len(corrupted) == 64 and name == "BTCUSDT-trades-2025-04-02.zip"
    other_day = schema.history_zip_url("BTCUSDT", "2025-04-01", archive.base_url)  # untouched
    other_digest, _ = schema.parse_checksum(get(other_day + ".CHECKSUM")[1].decode())
    assert other_digest == hashlib.sha256(get(other_day)[1]).hexdigest()
    archive.archive.corrupt_checksum("BTCUSDT", "2025-04-02", corrupted=False)
    assert schema.parse_checksum(get(url + ".CHECKSUM")[1].decode())[0] == zip_digest


def test_concurrent_first_requests_generate_the_day_once(archive):
    url = schema.history_zip_url("BTCUSDT", "2025-05-05", archive.base_url)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(get, [url] * 4))
    assert {status for status, _ in answers} == {200} and len({body for _, body in answers}) == 1
    day_dir = archive.archive.zip_file("BTCUSDT", "2025-05-05").parent
    assert not [path for path in day_dir.iterdir() if path.name.endswith(".part")]

"""The history assets on the real stack: raw trades into HDFS, MapReduce minute bars, their blocking checks, and failures that leave HDFS untouched."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import zipfile

import dagster as dg
import pytest

from btc_assets.defs.history.assets import day_path, minute_bars, raw_trades
from btc_assets.defs.history.checks import CHECKS, minute_bar_checks
from btc_testkit import generator
from btc_assets.contracts import schema
from btc_localstack.base import REPO_ROOT
from btc_assets_tests.reference import assert_bars_equal, duckdb_bars

ASSETS = [raw_trades, minute_bars, minute_bar_checks]


def archive_csv(archive, day: str, tmp_path) -> bytes:
    with zipfile.ZipFile(archive.archive.zip_file("BTCUSDT", day)) as packed:
        data = packed.read(schema.history_csv_name("BTCUSDT", day))
    (tmp_path / f"{day}.csv").write_bytes(data)
    return data


def bar_lines(storage, day: str) -> list[str]:
    directory = day_path(storage, "bars", "BTCUSDT", day)
    parts = sorted(s.path for s in storage.fs.list(directory) if s.path.rsplit("/", 1)[-1].startswith("part-"))
    return [line for part in parts for line in storage.fs.read(part).decode().splitlines()]


def test_a_day_through_hdfs_and_mapreduce_matches_duckdb(stack, history_resources, archive, tmp_path):
    day = "2025-04-01"
    staging = stack.services["hadoop"].staging_root
    staged_before = set(staging.glob("*/.staging"))
    result = dg.materialize(ASSETS, partition_key=day, resources=history_resources)
    assert result.success
    # The job staged its files in the stack's own directory, not in the machine's /tmp.
    assert len(set(staging.glob("*/.staging")) - staged_before) == 1
    checks = {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}
    assert checks == {name: True for name in CHECKS}

    storage = history_resources["storage"].storage
    expected_csv = archive_csv(archive, day, tmp_path)
    assert storage.fs.read(day_path(storage, "raw", "BTCUSDT", day)) == expected_csv

    raw_meta = result.asset_materializations_for_node("raw_trades")[0].metadata
    assert raw_meta["rows"].value == expected_csv.count(b"\n") == archive.archive.trades_per_day
    assert raw_meta["first_trade_id"].value == int(expected_csv.split(b",", 1)[0])
    bars_meta = result.asset_materializations_for_node("minute_bars")[0].metadata
    assert bars_meta["trades"].value == archive.archive.trades_per_day
    assert bars_meta["malformed_lines"].value == 0

    assert_bars_equal(bar_lines(storage, day), duckdb_bars(tmp_path / f"{day}.csv"))


def test_dirty_file_bars_skip_and_count_bad_lines(history_resources, tmp_path):
    """Shuffled lines, CRLF, a header, malformed lines and ms timestamps, through the real Hadoop job."""
    day = "2024-06-15"
    trades = generator.generate_day("BTCUSDT", day, seed=5, trades=30_000)
    clean = io.BytesIO()
    generator.write_csv(trades, clean)
    (tmp_path / "clean.csv").write_bytes(clean.getvalue())
    lines = clean.getvalue().decode().splitlines()
    random.Random(1).shuffle(lines)
    bad = ["id,price,qty,quote_qty,time,is_buyer_maker,is_best_match", "1,2,3", "x,1.0,1.0,1.0,1718409600000,True,True",
           "7,abc,1.0,1.0,1718409600000,True,True", "8,1.0,1.0,1.0,1718409600000,Maybe,True"]
    dirty = "\r\n".join(bad[:1] + lines[:15_000] + bad[1:] + lines[15_000:]) + "\r\n"

    storage = history_resources["storage"].storage
    storage.replace(day_path(storage, "raw", "BTCUSDT", day), dirty.encode())
    result = dg.materialize([minute_bars, minute_bar_checks], partition_key=day, resources=history_resources)
    assert result.success
    meta = result.asset_materializations_for_node("minute_bars")[0].metadata
    assert meta["malformed_lines"].value == len(bad)
    assert meta["trades"].value == 30_000
    skipped = meta["symbols"].value["BTCUSDT"]["skipped_by_reason"]
    assert skipped == {schema.HEADER_LINE: 1, schema.WRONG_COLUMN_COUNT: 1, schema.NON_NUMERIC: 2,
                       schema.BAD_BOOLEAN: 1}
    assert all(evaluation.passed for evaluation in result.get_asset_check_evaluations())
    assert_bars_equal(bar_lines(storage, day), duckdb_bars(tmp_path / "clean.csv"))


@pytest.mark.parametrize("failure", ["checksum", "missing"])
def test_bad_download_fails_clearly_and_leaves_hdfs_untouched(history_resources, archive, failure):
    storage = history_resources["storage"].storage
    if failure == "checksum":
        day, expected = "2025-04-05", "does not match its .CHECKSUM"
        dg.materialize([raw_trades], partition_key=day, resources=history_resources)  # a good copy first
        before = storage.fs.status(day_path(storage, "raw", "BTCUSDT", day))
        archive.archive.corrupt_checksum("BTCUSDT", day)
    else:
        day, expected = "2025-06-01", "HTTP 404"  # after the archive's last day
        before = None
    try:
        result = dg.materialize([raw_trades], partition_key=day, resources=history_resources, raise_on_error=False)
    finally:
        archive.archive.corrupt_checksum("BTCUSDT", day, corrupted=False)
    assert not result.success
    # The step itself was tried 1 + BTC_DOWNLOAD_RETRIES times (its RetryPolicy), each time from scratch.
    retries = [event for event in result.all_events if event.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == int(os.environ.get("BTC_DOWNLOAD_RETRIES", "2"))
    failure_event = next(event for event in result.all_events if event.event_type_value == "STEP_FAILURE")
    assert expected in failure_event.event_specific_data.error.to_string()
    path = day_path(storage, "raw", "BTCUSDT", day)
    assert storage.fs.status(path) == before
    assert not storage.fs.exists(path + "._tmp")


def test_cli_materializes_a_day_and_a_rerun_replaces(stack, archive, tmp_path):
    # (The demo test runs three days through the same CLI, twice.)
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path), BTC_BINANCE_HISTORY_URL=archive.base_url)
    days = ["2025-04-03", "2025-04-03"]
    from btc_assets.defs.resources import StorageResource

    storage = StorageResource(filesystem_url=env["BTC_HDFS_URL"], webhdfs_url=env["BTC_WEBHDFS_URL"],
                              root=env["BTC_STORAGE_ROOT"]).storage
    listings = []
    for day in days:
        result = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m",
                                 "btc_assets.definitions", "--select", "raw_trades,exchange_klines,minute_bars", "--partition", day],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "RUN_SUCCESS" in result.stderr + result.stdout
        listings.append((day, sorted(s.path.rsplit("/", 1)[-1] for s in
                                     storage.fs.list(day_path(storage, "bars", "BTCUSDT", day))),
                         sum(int(line.split("\t")[1]) for line in bar_lines(storage, day))))
    assert all(trades == archive.archive.trades_per_day for _, _, trades in listings)
    first_run, rerun = listings
    assert first_run == rerun  # same files, same trades: replaced, not appended


def test_daily_schedule_requests_the_newest_complete_day():
    from datetime import datetime, timezone

    from btc_assets.definitions import defs

    schedule = defs().resolve_schedule_def("history_job_schedule")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2025, 4, 2, 6, 0, tzinfo=timezone.utc))
    requests = schedule.evaluate_tick(context).run_requests
    assert [request.partition_key for request in requests] == ["2025-04-01"]
    assert schedule.cron_schedule == "0 6 * * *"

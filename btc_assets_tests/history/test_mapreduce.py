"""The Hadoop Streaming scripts as real processes (mapper | sort | reducer) against bars computed by DuckDB."""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from btc_assets.contracts import bars, schema
from btc_assets_tests.reference import assert_bars_equal, duckdb_bars

MAPREDUCE_DIR = Path(__file__).resolve().parents[2] / "mapreduce"
MAPPER, REDUCER = MAPREDUCE_DIR / "mapper.py", MAPREDUCE_DIR / "reducer.py"


def counters(stderr: str) -> dict[str, int]:
    """The Hadoop Streaming counters a task wrote to stderr, by name (group ``btc``)."""
    found = {}
    for line in stderr.splitlines():
        if line.startswith(f"reporter:counter:{schema.COUNTER_GROUP},"):
            name, value = line.split(",")[1:]
            found[name] = found.get(name, 0) + int(value)
    return found


def run_job(csv_bytes: bytes, *mapper_args: str, scripts: Path = MAPREDUCE_DIR, splits: int = 1):
    """``mapper | LC_ALL=C sort | reducer`` with real processes; ``splits`` mappers share the lines like input splits.

    Returns (bar lines, mapper counters, mapper output line count).
    """
    lines = csv_bytes.splitlines(keepends=True)
    step = max(1, math.ceil(len(lines) / splits))
    mapped, mapper_counters = b"", {}
    for start in range(0, max(len(lines), 1), step):
        mapper = subprocess.run(
            [sys.executable, str(scripts / "mapper.py"), *mapper_args],
            input=b"".join(lines[start : start + step]),
            capture_output=True,
            check=True,
            cwd=scripts,
        )
        mapped += mapper.stdout
        for name, value in counters(mapper.stderr.decode()).items():
            mapper_counters[name] = mapper_counters.get(name, 0) + value
    sort_env = {**os.environ, "LC_ALL": "C"}
    shuffled = subprocess.run(["sort"], input=mapped, capture_output=True, check=True, env=sort_env)
    reducer = subprocess.run(
        [sys.executable, str(scripts / "reducer.py")],
        input=shuffled.stdout,
        capture_output=True,
        check=True,
        cwd=scripts,
    )
    reducer_counters = counters(reducer.stderr.decode())
    bar_lines = reducer.stdout.decode().splitlines()
    assert reducer_counters == {schema.MINUTE_BARS_COUNTER: len(bar_lines), schema.BAD_PARTIALS_COUNTER: 0}
    return bar_lines, mapper_counters, len(mapped.splitlines())


@pytest.fixture(scope="module")
def bars_2025(csv_2025):
    """The clean 2025 day through the job, once: (bar lines, mapper counters, mapper lines)."""
    return run_job(csv_2025.read_bytes())


def test_bars_of_a_microsecond_day_match_duckdb_on_every_field(csv_2025, bars_2025, day_2025):
    bar_lines, mapper_counters, _ = bars_2025
    assert_bars_equal(bar_lines, duckdb_bars(csv_2025))
    assert len(bar_lines) == 1440  # 200k trades leave no minute of the day empty
    assert mapper_counters[schema.TRADES_COUNTER] == len(day_2025)
    assert mapper_counters[schema.MALFORMED_COUNTER] == 0


def test_bars_of_a_millisecond_day_match_duckdb(csv_2024, day_2024):
    assert day_2024.time.max() < schema.MICROSECONDS_FROM  # the 2024 archive format really is in ms
    bar_lines, mapper_counters, _ = run_job(csv_2024.read_bytes())
    assert_bars_equal(bar_lines, duckdb_bars(csv_2024))
    assert bar_lines[0].startswith("2024-06-15 00:00\t")
    assert mapper_counters[schema.TRADES_COUNTER] == len(day_2024)


def test_mapper_combines_in_memory_one_line_per_minute(bars_2025):
    bar_lines, _, mapper_lines = bars_2025
    assert mapper_lines == len(bar_lines) == 1440


def test_shuffled_lines_give_the_same_bytes(csv_2025, bars_2025):
    lines = csv_2025.read_bytes().splitlines(keepends=True)
    random.Random(3).shuffle(lines)
    # Small blocks: many chunks, each out of order, so open/close must come from trade ids.
    bar_lines, _, _ = run_job(b"".join(lines), "--block-bytes", "250000")
    assert bar_lines == bars_2025[0]


def test_any_split_into_mappers_gives_the_same_bytes(csv_2025, bars_2025):
    bar_lines, mapper_counters, mapper_lines = run_job(csv_2025.read_bytes(), splits=3)
    assert bar_lines == bars_2025[0]
    assert mapper_lines > 1440  # minutes cut by a split boundary arrive as two partials and are merged
    assert mapper_counters[schema.TRADES_COUNTER] == 200_000


def test_crlf_line_ends_give_the_same_bytes(csv_2025, bars_2025):
    bar_lines, mapper_counters, _ = run_job(csv_2025.read_bytes().replace(b"\n", b"\r\n"))
    assert bar_lines == bars_2025[0]
    assert mapper_counters[schema.MALFORMED_COUNTER] == 0


# Lines that are not trades, and the counter each must land in.
MALFORMED = [
    (b"id,price,qty,quote_qty,time,is_buyer_maker,is_best_match", schema.HEADER_LINE),
    (b"1,84000.00000000,0.00100000,84.00000000,1743465600000000,True", schema.WRONG_COLUMN_COUNT),
    (b"1,84000.00000000,0.00100000,84.00000000,1743465600000000,True,True,extra", schema.WRONG_COLUMN_COUNT),
    (b"garbage", schema.WRONG_COLUMN_COUNT),
    (b"1,abc,0.00100000,84.00000000,1743465600000000,True,True", schema.NON_NUMERIC),
    (b"1x,84000.00000000,0.00100000,84.00000000,1743465600000000,True,True", schema.NON_NUMERIC),
    (b"1,84000.00000000,,84.00000000,1743465600000000,True,True", schema.NON_NUMERIC),
    (b"1,84000.00000000,0.00100000,84.00000000,1743465600000000,yes,True", schema.BAD_BOOLEAN),
    (b"1,84000.00000000,0.00100000,84.00000000,1743465600000000,True,", schema.BAD_BOOLEAN),
    (b"1,nan,0.00100000,84.00000000,1743465600000000,True,True", schema.BAD_VALUE),
    (b"1,84000.00000000,-0.00100000,84.00000000,1743465600000000,True,True", schema.BAD_VALUE),
    (b"1,0.00000000,0.00100000,84.00000000,1743465600000000,True,True", schema.BAD_VALUE),
]


@pytest.mark.parametrize("mapper_args", [(), ("--line-by-line",)], ids=["arrow-blocks", "line-by-line"])
def test_malformed_lines_are_skipped_and_counted_by_reason(csv_2025, bars_2025, mapper_args):
    lines = csv_2025.read_bytes().splitlines(keepends=True)
    rng = random.Random(5)
    # The header first, as futures files have it; the rest scattered, twice each, some with CRLF.
    for bad_line, _ in MALFORMED[1:] * 2:
        lines.insert(rng.randrange(len(lines)), bad_line + rng.choice([b"\n", b"\r\n"]))
    lines.insert(0, MALFORMED[0][0] + b"\n")
    bar_lines, mapper_counters, _ = run_job(b"".join(lines), *mapper_args)

    assert bar_lines == bars_2025[0]  # every good line kept, every bad one dropped
    expected = {reason: 0 for reason in schema.MALFORMED_REASONS}
    expected[schema.HEADER_LINE] = 1
    for _, reason in MALFORMED[1:]:
        expected[reason] += 2
    assert {reason: mapper_counters[reason] for reason in schema.MALFORMED_REASONS} == expected
    assert mapper_counters[schema.MALFORMED_COUNTER] == 2 * len(MALFORMED) - 1
    assert mapper_counters[schema.TRADES_COUNTER] == 200_000


def test_line_by_line_path_gives_the_same_bytes_as_arrow(csv_2024):
    arrow_lines, _, _ = run_job(csv_2024.read_bytes())
    line_by_line, _, _ = run_job(csv_2024.read_bytes(), "--line-by-line")
    assert arrow_lines == line_by_line


def test_scripts_run_standalone_with_the_shipped_modules(tmp_path, csv_2024):
    # What Hadoop Streaming's -files gives a task: each file in its own cache folder, and a
    # symlink to it in the task's working folder, where the scripts run.
    task = tmp_path / "task"
    task.mkdir()
    for number, path in enumerate((MAPPER, REDUCER, *bars.streaming_support_files())):
        cached = tmp_path / "filecache" / str(number) / Path(path).name
        cached.parent.mkdir(parents=True)
        shutil.copy(path, cached)
        (task / cached.name).symlink_to(cached)
    assert sorted(p.name for p in task.iterdir()) == ["bars.py", "mapper.py", "reducer.py", "schema.py"]
    shipped, _, _ = run_job(csv_2024.read_bytes(), scripts=task)
    in_checkout, _, _ = run_job(csv_2024.read_bytes())
    assert shipped == in_checkout


def test_empty_input_gives_no_bars():
    bar_lines, mapper_counters, mapper_lines = run_job(b"")
    assert bar_lines == [] and mapper_lines == 0
    assert mapper_counters[schema.TRADES_COUNTER] == 0


def test_reads_smaller_than_a_line_give_the_same_bytes(csv_2024):
    head = b"".join(csv_2024.read_bytes().splitlines(keepends=True)[:3000])
    assert run_job(head, "--block-bytes", "50")[0] == run_job(head)[0]


@pytest.mark.parametrize("mapper_args", [(), ("--line-by-line",)], ids=["arrow-blocks", "line-by-line"])
def test_a_futures_style_header_of_six_columns_counts_as_a_header(csv_2024, mapper_args):
    clean = csv_2024.read_bytes()
    bar_lines, mapper_counters, _ = run_job(b"id,price,qty,quote_qty,time,is_buyer_maker\r\n" + clean, *mapper_args)
    assert bar_lines == run_job(clean)[0]
    assert mapper_counters[schema.HEADER_LINE] == mapper_counters[schema.MALFORMED_COUNTER] == 1


def test_densely_malformed_input_keeps_every_good_line(csv_2024):
    lines = csv_2024.read_bytes().splitlines(keepends=True)
    bad_line = b"7,84000.0,0.5,oops,1743465600000000,True,True\n"
    dense = [line if number % 200 else bad_line for number, line in enumerate(lines)]
    kept = [line for number, line in enumerate(lines) if number % 200]
    bar_lines, mapper_counters, _ = run_job(b"".join(dense))
    assert bar_lines == run_job(b"".join(kept))[0]
    assert mapper_counters[schema.NON_NUMERIC] == len(lines) - len(kept) == 300
    assert mapper_counters[schema.TRADES_COUNTER] == len(kept)

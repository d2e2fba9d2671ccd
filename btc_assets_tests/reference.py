"""Independent references the tests compare the pipeline against: minute bars computed by DuckDB SQL."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb

from btc_assets.contracts import schema


def duckdb_bars(csv_path: Path) -> list[tuple]:
    """The contract's minute bars (section 4), computed independently with SQL from the clean CSV."""
    kinds = ("BIGINT", "DOUBLE", "DOUBLE", "DOUBLE", "BIGINT", "BOOLEAN", "BOOLEAN")
    columns = ", ".join(f"'{name}': '{kind}'" for name, kind in zip(schema.HISTORY_COLUMNS, kinds))
    return duckdb.sql(
        f"""
        WITH trades AS (
            SELECT *, CASE WHEN time < 100000000000000 THEN time ELSE time // 1000 END AS time_ms
            FROM read_csv('{csv_path}', header = false, columns = {{{columns}}})
        )
        SELECT strftime(epoch_ms(time_ms - time_ms % 60000), '%Y-%m-%d %H:%M') AS minute,
               count(*), arg_min(price, id), max(price), min(price), arg_max(price, id), avg(price),
               sum(quote_qty) / sum(qty), sum(qty), sum(quote_qty), sum(qty) / count(*), sum(quote_qty) / count(*),
               avg(CASE WHEN is_buyer_maker THEN 1.0 ELSE 0.0 END),
               coalesce(sum(qty) FILTER (WHERE NOT is_buyer_maker), 0), min(id), max(id)
        FROM trades GROUP BY minute ORDER BY minute
        """
    ).fetchall()


def assert_bars_equal(bar_lines: list[str], expected: list[tuple]) -> None:
    """Every field of every bar: minute and integers exactly, floats to 1e-9 relative."""
    assert len(bar_lines) == len(expected)
    for line, reference in zip(bar_lines, expected):
        fields = line.split("\t")
        assert len(fields) == len(schema.BAR_FIELDS) == len(reference)
        for name, text, value in zip(schema.BAR_FIELDS, fields, reference):
            if name == schema.MINUTE:
                assert text == value
            elif name in schema.INTEGER_BAR_FIELDS:
                assert int(text) == value, (fields[0], name)
            else:
                assert math.isclose(float(text), value, rel_tol=1e-9), (fields[0], name, text, value)

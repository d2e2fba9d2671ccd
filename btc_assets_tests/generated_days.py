"""Generated trade days written as archive CSVs: fixtures shared by the contract, test-kit and history tests."""

from __future__ import annotations

import pytest

from btc_testkit import generator


@pytest.fixture(scope="session")
def day_2025():
    """200k BTCUSDT trades of 2025-04-01: µs timestamps, as the archive has them from 2025 on."""
    return generator.generate_day("BTCUSDT", "2025-04-01", seed=11, trades=200_000)


@pytest.fixture(scope="session")
def day_2024():
    """60k BTCUSDT trades of 2024-06-15: ms timestamps, as the archive has them before 2025."""
    return generator.generate_day("BTCUSDT", "2024-06-15", seed=12, trades=60_000)


@pytest.fixture(scope="session")
def csv_2025(day_2025, tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "BTCUSDT-trades-2025-04-01.csv"
    generator.write_csv(day_2025, path)
    return path


@pytest.fixture(scope="session")
def csv_2024(day_2024, tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "BTCUSDT-trades-2024-06-15.csv"
    generator.write_csv(day_2024, path)
    return path

"""The README's main-job command: stack up, history, models, live stream and predictions; twice in a row works."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from btc_localstack.base import REPO_ROOT
from btc_localstack.streams import stream_services


def run_demo(home) -> subprocess.CompletedProcess:
    env = dict(os.environ, DAGSTER_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "btc_localstack.cli", "demo", "--days", "3", "--trades-per-day", "20000"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)


def test_demo_runs_twice(stack, tmp_path):
    try:
        demo_twice(tmp_path)
    finally:
        stream_services(stack.paths.state_dir).stop_all()  # the demo leaves the live path running
    assert stack.is_up()


def demo_twice(tmp_path):
    for attempt in (1, 2):
        result = run_demo(tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"attempt {attempt}:\n{output[-4000:]}"
        for service in ("hadoop", "kafka", "influxdb"):
            assert any(line.startswith("up") and service in line for line in result.stdout.splitlines()), \
                f"attempt {attempt}: {service} not shown up:\n{result.stdout}"
        assert "[demo] done" in output
        assert "bars from 20,000 trades" in output
        assert "checks: trades_conserved ok, volume_conserved ok, ohlc_consistent ok, bars_inside_day ok, " \
               "trade_ids_contiguous ok" in output
        assert re.search(r"live: [\d,]+ trades and \d+ minute bars in InfluxDB", output), output[-3000:]
        # Trained on the three days (one each to train, validate and test), each model against persistence.
        for name in ("lr", "rf", "gbt", "persistence"):
            assert re.search(rf"\] +{name}: trained in [\d.]+s on [\d,]+ rows; test RMSE [\d.]+ USD, skill", output)
        # Two rounds of live predictions: a forecast from every model, then their errors on traded minutes.
        forecasts = re.findall(r"BTCUSDT \d{4}-\d\d-\d\d: forecast for \d\d:\d\d UTC: lr [\d,.]+, rf [\d,.]+, "
                               r"gbt [\d,.]+, persistence [\d,.]+", output)
        assert len(forecasts) == 2, output[-3000:]
        scored = re.findall(r"\] +(lr|rf|gbt|persistence): live RMSE ([\d.]+) USD over (\d+) minutes", output)
        assert {name for name, _, _ in scored} == {"lr", "rf", "gbt", "persistence"}, output[-3000:]
        assert all(float(rmse) > 0 and int(minutes) >= 1 for _, rmse, minutes in scored)

"""The README's main-job command: brings the stack up, shows its status, runs the assets; twice in a row works."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from btc_assets.lib.stack.base import REPO_ROOT
from btc_assets.lib.stream_service import StreamServices


def run_demo(home) -> subprocess.CompletedProcess:
    env = dict(os.environ, DAGSTER_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "btc_assets.cli", "demo", "--days", "1", "--trades-per-day", "20000"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)


def test_demo_runs_twice(stack, tmp_path):
    try:
        demo_twice(tmp_path)
    finally:
        StreamServices(stack.paths.state_dir).stop_all()  # the demo leaves the live path running
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

"""The README's main-job command: stack up, history, models, live stream and predictions; twice in a row works."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from btc_localstack.base import REPO_ROOT
from btc_localstack.dagster import graphql
from btc_localstack.streams import stream_services


RUN_OF_LATEST = """
query($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(limit: 1) { runId partition metadataEntries { label } } }
  }
}"""
RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
SHOWN = {"raw_trades": "rows", "minute_bars": "trades_per_second", "gbt_model": "rmse_usd",
         "price_predictions": "points_written"}


def run_demo(*options: str) -> subprocess.CompletedProcess:
    # The demo submits to the stack's own instance (DAGSTER_HOME from stack.env: PostgreSQL), as a user's does.
    return subprocess.run([sys.executable, "-m", "btc_localstack.cli", "demo", "--days", "3", "--trades-per-day", "20000",
                           *options], cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=1800)


def test_demo_runs_twice(stack):
    try:
        demo_twice(stack)
    finally:
        stream_services(stack.paths.state_dir).stop_all()  # the demo leaves the live path running
    assert stack.is_up()


def demo_runs_in_the_ui(stack) -> None:
    """The webserver's GraphQL API shows the demo's runs, SUCCESS, with their metadata."""
    url = stack.services["dagster"].url
    for asset, label in SHOWN.items():
        materializations = graphql(url, RUN_OF_LATEST, {"path": [asset]})["assetOrError"]["assetMaterializations"]
        assert materializations, f"{asset}: no materialization in the stack's instance"
        latest = materializations[0]
        assert label in {entry["label"] for entry in latest["metadataEntries"]}, (asset, latest["metadataEntries"])
        assert graphql(url, RUN_STATUS, {"id": latest["runId"]})["runOrError"]["status"] == "SUCCESS", asset


def demo_twice(stack):
    # The whole demo once; then again without the models (their training and two prediction rounds are the slow
    # part, ~5 min, and the first run already showed them): the stack, history and stream steps run a second time.
    for attempt in (1, 2):
        result = run_demo() if attempt == 1 else run_demo("--no-models")
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
        if attempt == 2:
            assert "trained in" not in output  # --no-models: no training, no prediction rounds
            continue
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
        demo_runs_in_the_ui(stack)

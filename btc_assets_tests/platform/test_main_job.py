"""The README's main-job command: stack up, history, models, live stream and predictions; twice in a row works."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from btc_localstack.base import REPO_ROOT
from btc_localstack.cli import build_parser
from btc_localstack.dagster import graphql
from btc_localstack.demo import demo_days
from btc_localstack.streams import stream_services
from btc_assets_tests.stream import spark_fixtures

# The live checks poll GraphQL and InfluxDB every 5 s: often enough for minutes-long waits, light on the stack.
wait_for = partial(spark_fixtures.wait_for, interval=5.0)

RUN_OF_LATEST = """
query($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(partitions: $partitions, limit: 1) { runId partition metadataEntries { label } } }
  }
}"""
RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
SHOWN = {"raw_trades": "rows", "minute_bars": "trades_per_second", "gbt_model": "rmse_usd",
         "price_predictions": "points_written"}
DEMO_DAYS = 3
DEMO_LAST_DAY = demo_days(build_parser().parse_args(["demo"]).start, DEMO_DAYS)[-1]  # from the demo's default start
BACKFILL_DAYS = demo_days("2024-08-01", 5)


LIVE_LINE = re.compile(r"live: [\d,]+ trades and \d+ minute bars in InfluxDB")


def run_demo(*options: str, on_live=None) -> subprocess.CompletedProcess:
    """The README's demo command; ``on_live()`` is called as soon as it reports the live path up."""
    # The demo submits to the stack's own instance (DAGSTER_HOME from stack.env: PostgreSQL), as a user's does.
    command = [sys.executable, "-m", "btc_localstack.cli", "demo", "--days", str(DEMO_DAYS), "--trades-per-day", "20000",
               *options]
    with tempfile.TemporaryDirectory() as scratch:
        out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(os.environ), stdout=stdout, stderr=stderr,
                                       text=True)
            deadline = time.monotonic() + 1800
            while process.poll() is None:
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    break
                if on_live is not None and LIVE_LINE.search(err.read_text()):
                    on_live()
                    on_live = None
                time.sleep(2)
        return subprocess.CompletedProcess(command, process.returncode, out.read_text(), err.read_text())


@dataclass
class LiveDemo:
    started: float  # when the first demo began
    switched_on: float | None = None  # when the health sensor and the prediction schedule were switched on
    failure: str | None = None  # what went wrong in a demo run, if anything


class Backfill:
    """`btc-pipeline backfill` of five days, in a process of its own. Beside the live stream it starts as soon as
    the supervision window opens (``live_demo``), so the daemon's waits (its loop looks for new backfills and for
    finished ones every 30 s) and its runs' launches fall beside the rest of the demo instead of adding to the
    window; without the demo (``-k backfill``) the test starts it itself."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.process is not None:
            return
        command = [sys.executable, "-m", "btc_localstack.cli", "backfill", "--start", BACKFILL_DAYS[0],
                   "--end", BACKFILL_DAYS[-1]]
        with (self.scratch / "stdout").open("w") as stdout, (self.scratch / "stderr").open("w") as stderr:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(os.environ), stdout=stdout,
                                            stderr=stderr, text=True)

    def result(self, timeout: float = 1500) -> subprocess.CompletedProcess:
        self.start()
        self.process.wait(timeout=timeout)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode,
                                           (self.scratch / "stdout").read_text(), (self.scratch / "stderr").read_text())


@pytest.fixture(scope="package")
def backfill(stack, tmp_path_factory):  # noqa: ARG001 - the stack's daemon runs it
    running = Backfill(tmp_path_factory.mktemp("backfill"))
    yield running
    if running.process is not None and running.process.poll() is None:
        running.process.kill()  # its own command, never finished (a failed test): the daemon's runs go on
        running.process.wait()


@pytest.fixture(scope="package")  # tests of other modules run beside the live stream: conftest.py
def live_demo(stack, backfill):
    """The demo run twice, under supervision from the moment the first run's live path is up: then the stack's
    health sensor and prediction schedule are switched on (as `btc-pipeline ui --supervise on` does), so the
    first run's prediction rounds and the whole second run happen inside the supervision test's 5 healthy
    minutes; the five-day backfill is submitted at that moment too. The live path the demo leaves running
    (emulator, producer, Spark job) is stopped after the module's tests."""
    from btc_localstack.dagster import switch

    demo = LiveDemo(started=time.time())
    url = stack.services["dagster"].url


    def supervise() -> None:
        assert switch(url, "stream_health_sensor", on=True) == "RUNNING"
        assert switch(url, "price_predictions_schedule", on=True, kind="schedule") == "RUNNING"
        demo.switched_on = time.time()
        backfill.start()

    try:
        try:
            demo_attempt(stack, 1, on_live=supervise)
            assert demo.switched_on is not None, "the first demo run never reported its live path up"
            demo_attempt(stack, 2)
        except AssertionError as error:
            demo.failure = str(error)
        yield demo
    finally:
        switch(url, "stream_health_sensor", on=False)
        switch(url, "price_predictions_schedule", on=False, kind="schedule")
        stream_services(stack.paths.state_dir).stop_all()


def test_demo_runs_twice(live_demo, stack):
    assert live_demo.failure is None, live_demo.failure
    assert stack.is_up()


def demo_runs_in_the_ui(stack) -> None:
    """The webserver's GraphQL API shows the demo's runs, SUCCESS, with their metadata (of the demo's days: the
    backfill's runs of other days go on beside it)."""
    url = stack.services["dagster"].url
    for asset, label in SHOWN.items():
        partitions = [DEMO_LAST_DAY] if asset in ("raw_trades", "minute_bars") else None
        materializations = graphql(url, RUN_OF_LATEST, {"path": [asset], "partitions": partitions}
                                   )["assetOrError"]["assetMaterializations"]
        assert materializations, f"{asset}: no materialization in the stack's instance"
        latest = materializations[0]
        assert label in {entry["label"] for entry in latest["metadataEntries"]}, (asset, latest["metadataEntries"])
        assert graphql(url, RUN_STATUS, {"id": latest["runId"]})["runOrError"]["status"] == "SUCCESS", asset


def demo_attempt(stack, attempt: int, on_live=None) -> None:
    # The whole demo once; then again without the models (their training and predictions are the slow part, and
    # the first run already showed them): the stack, history and stream steps run a second time.
    result = run_demo(on_live=on_live) if attempt == 1 else run_demo("--no-models", on_live=on_live)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"attempt {attempt}:\n{output[-4000:]}"
    for service in ("hadoop", "kafka", "influxdb"):
        assert any(line.startswith("up") and service in line for line in result.stdout.splitlines()), \
            f"attempt {attempt}: {service} not shown up:\n{result.stdout}"
    assert "[demo] done" in output
    assert "bars from 20,000 trades" in output
    verdicts = [set(line.split(", ")) for line in re.findall(r"checks: (.*)", output)]
    assert len(verdicts) == DEMO_DAYS and all(found == {f"{name} ok" for name in (
        "trades_conserved", "volume_conserved", "ohlc_consistent", "bars_inside_day", "trade_ids_contiguous",
        "bars_match_klines")} for found in verdicts), verdicts  # one line per day, every check of minute_bars
    assert LIVE_LINE.search(output), output[-3000:]
    if attempt == 2:
        assert "trained in" not in output  # --no-models: no training, no predictions
        return
    # Trained on the three days (one each to train, validate and test), each model against persistence.
    for name in ("lr", "rf", "gbt", "persistence"):
        assert re.search(rf"\] +{name}: trained in [\d.]+s on [\d,]+ rows; test RMSE [\d.]+ USD, skill", output)
    # The stream's scorer predicts the minute trading now with every model just trained (it loads them itself);
    # then a price_predictions run scores the last hour: a forecast from every model, their errors on the
    # minutes that traded.
    assert re.search(r"live predictions in the stream: BTCUSDT for \d\d:\d\d UTC: lr [\d,.]+, rf [\d,.]+, "
                     r"gbt [\d,.]+, persistence [\d,.]+", output), output[-3000:]
    forecasts = re.findall(r"BTCUSDT \d{4}-\d\d-\d\d: forecast for \d\d:\d\d UTC: lr [\d,.]+, rf [\d,.]+, "
                           r"gbt [\d,.]+, persistence [\d,.]+", output)
    assert len(forecasts) == 1, output[-3000:]
    scored = re.findall(r"\] +(lr|rf|gbt|persistence): live RMSE ([\d.]+) USD over (\d+) minutes", output)
    assert {name for name, _, _ in scored} == {"lr", "rf", "gbt", "persistence"}, output[-3000:]
    assert all(float(rmse) > 0 and int(minutes) >= 1 for _, rmse, minutes in scored)
    demo_runs_in_the_ui(stack)


# --- while the live stream runs supervised (the healthy minutes): a backfill under the daemon ---------------

RUNS_OF_BACKFILL = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status startTime endTime tags { key value } } }
  }
}"""


def test_a_backfill_of_five_days_never_runs_two_mapreduce_jobs_at_once(stack, backfill):
    """Submitted when the supervision window opens (``live_demo``), it runs inside the supervision test's 5 healthy
    minutes, beside the second demo run: the daemon runs the backfill's MapReduce jobs one at a time while the
    health sensor and the prediction schedule tick over the live stream (alone, e.g. with ``-k backfill``, it
    needs no demo)."""
    dagster = stack.services["dagster"]
    result = backfill.result()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    backfill_id = result.stdout.strip().splitlines()[-1]
    assert "5 of 5 days done" in result.stderr  # the progress the command printed

    # The backfill shows in the UI's backfill page ...
    listed = graphql(dagster.url, "{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status } } } }")
    statuses = {entry["id"]: entry["status"] for entry in listed["partitionBackfillsOrError"]["results"]}
    assert statuses.get(backfill_id) in ("COMPLETED_SUCCESS", "COMPLETED"), statuses
    # ... and its runs, each holding the MapReduce pool for its whole run, never overlapped (limit 1).
    runs = graphql(dagster.url, RUNS_OF_BACKFILL, {"id": backfill_id})["runsOrError"]["results"]
    partitions = sorted(tag["value"] for run in runs for tag in run["tags"] if tag["key"] == "dagster/partition")
    assert partitions == BACKFILL_DAYS
    assert all(run["status"] == "SUCCESS" for run in runs)
    spans = sorted((run["startTime"], run["endTime"]) for run in runs)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two MapReduce runs overlapped: {spans}"


# --- the live path the demo left running, supervised by the stack's daemon -------------------------------------

RESTART_RUNS = """
{ runsOrError(filter: {pipelineName: "restart_stream_job"}, limit: 20) {
    ... on Runs { results { runId status creationTime tags { key value } } } } }"""
SCHEDULE_RUNS = """
{ runsOrError(filter: {tags: [{key: "dagster/schedule_name", value: "price_predictions_schedule"}]}, limit: 5) {
    ... on Runs { results { runId status creationTime } } } }"""
CHECK_EXECUTIONS = """
query($path: [String!]!, $check: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $check, limit: 1) {
    status timestamp evaluation { success description }
  }
}"""
HEALTHY_SECONDS = 300  # the "no restart for 5 minutes"
RESTART_WITHIN = 180  # "within 3 minutes the daemon has launched the restart"


def restart_runs(url: str) -> dict[str, dict]:
    runs = graphql(url, RESTART_RUNS)["runsOrError"]["results"]
    return {run["runId"]: {**run, "tags": {tag["key"]: tag["value"] for tag in run["tags"]}} for run in runs}


def latest_check(url: str, asset: str, check: str) -> dict | None:
    executions = graphql(url, CHECK_EXECUTIONS, {"path": [asset], "check": check})["assetCheckExecutions"]
    return executions[0] if executions else None


def influx_scalar(reader, flux: str) -> int | None:
    rows = reader.query(flux)
    return None if not rows else int(rows[0]["_value"])


def newest(reader, measurement: str, since: float) -> float | None:
    rows = reader.query(f'from(bucket: "{reader.bucket}") |> range(start: {int(since)})'
                        f' |> filter(fn: (r) => r._measurement == "{measurement}")'
                        ' |> keep(columns: ["_time"]) |> group() |> max(column: "_time")')
    return rows[0]["_time"].timestamp() if rows else None


def emulator_control(path: str, method: str = "GET") -> dict:
    import requests

    port = os.environ["BTC_STACK_BINANCE_EMULATOR_PORT"]
    response = requests.request(method, f"http://127.0.0.1:{port}/control/{path}", timeout=30)
    response.raise_for_status()
    return response.json()


def test_daemon_supervises_the_live_stream(live_demo, stack, resources, browser):
    """Under the stack's daemon, with the health sensor and the prediction schedule switched on (by the fixture,
    before the second demo run): 5 healthy minutes with no restart (the second demo run, the five-day backfill test
    and the platform tests marked ``beside_the_live_stream`` among them: conftest.py), checks green, predictions
    written; then the Spark job and the producer SIGKILLed together, each restarted by a run the sensor requested;
    every trade the emulator made in InfluxDB exactly once."""
    from btc_assets import config
    from btc_assets.contracts import schema

    if live_demo.failure is not None or live_demo.switched_on is None:
        pytest.fail(f"the demo failed, so there is no live path to supervise: {live_demo.failure}")
    url = stack.services["dagster"].url
    services = stream_services(stack.paths.state_dir)
    assert all(services.processes[name].is_running() for name in ("binance-emulator", "producer", "spark-job"))
    reader = resources["influx"].reader()
    switched_on = live_demo.switched_on
    before = {run_id for run_id, run in restart_runs(url).items() if run["creationTime"] < switched_on}

    # Healthy: no restart for 5 minutes (the second demo run among them), the checks green, and the
    # schedule's run writes predictions.
    predicted = None
    while True:
        new = {run_id: run for run_id, run in restart_runs(url).items() if run_id not in before}
        assert not new, f"restarts requested while healthy: {[run['tags'].get('reason') for run in new.values()]}"
        runs = graphql(url, SCHEDULE_RUNS)["runsOrError"]["results"]
        assert all(run["status"] != "FAILURE" for run in runs), runs
        if predicted is None and any(run["status"] == "SUCCESS" and run["creationTime"] >= switched_on for run in runs):
            predicted = time.time()
        if time.time() - switched_on >= HEALTHY_SECONDS and predicted is not None:
            break
        assert time.time() - switched_on < HEALTHY_SECONDS + 420, "no price_predictions_schedule run succeeded"
        # Every 10 s, but the window's end is not overslept (a second past it, not up to ten).
        remaining = switched_on + HEALTHY_SECONDS - time.time()
        time.sleep(min(10.0, remaining + 1) if remaining > 0 else 10.0)
    from btc_localstack.dagster import switch

    assert switch(url, "price_predictions_schedule", on=False, kind="schedule") == "STOPPED"
    for asset, check in (("live_trades", "stream_healthy"), ("live_bars", "bars_fresh")):
        latest = latest_check(url, asset, check)
        assert latest and latest["timestamp"] >= switched_on, (asset, latest)
        assert latest["status"] == "SUCCEEDED" and latest["evaluation"]["success"], (asset, latest)
    for symbol in config.symbols():
        for model in ("lr", "rf", "gbt"):
            # a prediction point is stamped with the minute it predicts: one after the schedule was switched on
            points = influx_scalar(reader, (
                f'from(bucket: "{reader.bucket}") |> range(start: {int(switched_on)}, stop: 2100-01-01T00:00:00Z)'
                f' |> filter(fn: (r) => r._measurement == "{schema.PREDICTIONS_MEASUREMENT}" and r.{schema.SYMBOL_TAG} == '
                f'"{symbol}" and r.{schema.MODEL_TAG} == "{model}") |> group() |> count()'))
            assert points, f"no {model} prediction for {symbol} after the schedule was switched on"
    shots = stack.paths.state_dir / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{url}/assets/live_trades?view=checks", wait_until="networkidle")
    page.get_by_text("stream_healthy").first.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "06-live-checks-green.png"), full_page=True)
    page.close()

    # SIGKILL the Spark job and the producer: the sensor requests a restart of each, the daemon runs them (with the
    # arguments each was started with: the producer comes back on the emulator), the stream flows again.
    pids = {component: services.processes[component].pid() for component in ("spark-job", "producer")}
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    killed = time.time()
    phases: dict[str, float] = {}  # seconds after the kill each stage of the recovery was seen: printed at the end
    restarts = wait_for(lambda: (lambda found: found if set(found) == set(pids) else None)(
                        {run["tags"].get("component"): run for run_id, run in restart_runs(url).items()
                         if run_id not in before}),
                    RESTART_WITHIN, "the daemon launching a restart of both SIGKILLed components")
    for component, restart in restarts.items():
        assert restart["creationTime"] - killed <= RESTART_WITHIN, restart
        wait_for(lambda: restart_runs(url)[restart["runId"]]["status"] in ("SUCCESS", "FAILURE"), 240,
             f"the restart run of {component}")
        assert restart_runs(url)[restart["runId"]]["status"] == "SUCCESS", restart
        assert services.processes[component].pid() not in (None, pids[component])
    phases["restart runs succeeded"] = time.time() - killed
    # Flowing again: trades newer than the kill, and a bar of a minute after it.
    wait_for(lambda: (newest(reader, schema.TRADES_MEASUREMENT, killed - 600) or 0) >= killed + 5, 240,
         "new trades after the producer's restart")
    phases["new trades"] = time.time() - killed
    wait_for(lambda: (newest(reader, schema.BARS_MEASUREMENT, killed - 600) or 0) >= (killed // 60 + 1) * 60, 240,
         "new bars after the Spark job's restart")
    phases["a bar of a later minute"] = time.time() - killed
    switch(url, "stream_health_sensor", on=False)

    # Exactly once: the market paused, every id from the first the stream took to the emulator's last is in
    # InfluxDB once (ids go up by one per trade), across both kills.
    emulator_control("pause", "POST")
    ids = emulator_control("stats")["ids"]
    since = int(live_demo.started) - 3600
    for symbol in config.symbols():
        first_made, last = ids[symbol]
        where = (f'from(bucket: "{reader.bucket}") |> range(start: {since})'
                 f' |> filter(fn: (r) => r._measurement == "{schema.TRADES_MEASUREMENT}" and r.{schema.SYMBOL_TAG} == '
                 f'"{symbol}" and r._field == "trade_id" and r._value >= {first_made} and r._value <= {last}) |> group()')
        first = influx_scalar(reader, where + " |> min()")
        assert first is not None, f"{symbol}: none of the emulator's trades in InfluxDB"
        expected = last - first + 1
        wait_for(lambda: (influx_scalar(reader, where + " |> count()") or 0) >= expected, 180,
             f"{symbol}: all {expected:,} trades {first}..{last} in InfluxDB")
        assert influx_scalar(reader, where + " |> count()") == expected
        assert influx_scalar(reader, where + " |> distinct() |> count()") == expected
        phases[f"{symbol} counted"] = time.time() - killed
        print(f"\n[supervision] {symbol}: {expected:,} trades {first}..{last}, each once in InfluxDB; restarts "
              + ", ".join(f"{c} launched {r['creationTime'] - killed:.0f}s after the kill" for c, r in restarts.items())
              + "; then " + ", ".join(f"{what} {seconds:.0f}s" for what, seconds in phases.items())
              + f" after it; the healthy window ended {killed - switched_on:.0f}s after supervision began")
    reader.close()

"""A stored day replayed as the live stream (btc_assets.stream.replay, through its Dagster asset): every trade lands
once, the live bars equal the day's MapReduce bars for all 1,440 minutes, every minute gets a prediction, and the
predictions dashboard's queries show the replay."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import uuid
from datetime import date, datetime, timedelta

import dagster as dg
import pytest

from btc_testkit import bars as known_bars
from btc_testkit import generator

from btc_assets import dashboards
from btc_assets.clients import kafka as kafka_io
from btc_assets.clients.influx import Influx
from btc_assets.contracts import schema
from btc_assets.defs.history.assets import minute_bars
from btc_assets.defs.resources import MarketResource, StorageResource
from btc_assets.defs.stream.replay import stream_replay
from btc_assets.ml import features, models
from btc_assets.stream import replay
from btc_localstack.base import REPO_ROOT
from btc_localstack.dagster import graphql

DAY = "2025-02-11"
SYMBOL = "BTCUSDT"
TRADES = 150_000  # ~104 a minute: every minute of the day trades (60,000 leave 23 without)
SPEED = 2880.0  # the day in 30 s (the README's run is at 60x on the local stack)
MODELS = ("lr", "gbt", "persistence")
SMALL = models.ModelParams(gbt_max_iter=20, gbt_max_depth=4, gbt_max_bins=32)


@pytest.fixture
def replay_case(stack, spark, resources, monkeypatch):
    """A storage root with two generated days, the second's MapReduce bars and trained models; a replay bucket
    and topic template of the case's own."""
    unique = uuid.uuid4().hex[:10]
    root = f"/btc-test-replay-{unique}"
    bucket, template = f"replay_{unique}", f"{{symbol}}-REPLAY-{unique}"
    monkeypatch.setenv("BTC_REPLAY_BUCKET", bucket)
    monkeypatch.setenv("BTC_REPLAY_TOPIC_TEMPLATE", template)
    storage = StorageResource(filesystem_url=resources["storage"].filesystem_url,
                              webhdfs_url=resources["storage"].webhdfs_url, root=root)
    for day in (date.fromisoformat(DAY) - timedelta(days=1), date.fromisoformat(DAY)):
        generated = generator.generate_day(SYMBOL, day.isoformat(), seed=3, trades=TRADES)
        path = storage.storage.path(schema.raw_trades_path("", SYMBOL, day.isoformat()).lstrip("/"))
        local = stack.paths.state_dir / f"replay-{unique}-{day}.csv"
        generator.write_csv(generated, local)
        storage.storage.fs.write(path, local.read_bytes())
        local.unlink()
    case_resources = {**resources, "storage": storage, "market": MarketResource(symbols=SYMBOL)}
    assert dg.materialize([minute_bars], partition_key=DAY, resources=case_resources).success
    bars = known_bars.generated_bars("2025-01-01", 3, trades_per_day=20_000, seed=5, taker_signal=0.0015)
    frame = features.build_training_frame(spark.createDataFrame(bars.assign(symbol=SYMBOL)))
    train, validation, test = features.chronological_split(frame, features.plan_split(features.training_days(frame)))
    results = models.train_models(train, validation, test, SMALL, models=["lr", "gbt"], log=lambda _: None)
    for name in MODELS:
        models.save_model(storage.storage, name, "v1", results.models[name].model,
                          results.models[name].metrics_document(version="v1"))
    yield case_resources, bucket, template
    admin = Influx(resources["influx"].url, resources["influx"].org, bucket, resources["influx"].admin_token)
    api = admin.client.buckets_api()
    found = api.find_bucket_by_name(bucket)
    if found is not None:
        api.delete_bucket(found)
    admin.close()
    topic = schema.trade_topic(SYMBOL, template)
    kafka_io.delete_topics(resources["kafka"].bootstrap_servers, [topic, schema.dlq_topic(topic)])
    storage.storage.fs.delete(root, recursive=True)


def test_a_stored_day_replayed_lands_every_trade_bar_and_prediction(replay_case, resources):
    case_resources, bucket, template = replay_case
    result = dg.materialize([stream_replay], partition_key=DAY, resources=case_resources,
                            run_config={"ops": {"stream_replay": {"config": {"symbol": SYMBOL, "speed": SPEED}}}})
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = {name: value.value for name, value in event.materialization.metadata.items()}

    # Every trade of the day once: as many points as the file has trades, and the same trade ids.
    assert meta["trades"] == TRADES and meta["trades_landed"] == TRADES and meta["trade_ids_match"] is True, meta
    # The live bars are the day's MapReduce bars, time-shifted, all 1,440 of them.
    assert meta["live_bars"] == 1440 and meta["bars_equal_mapreduce"] == 1440, meta["bar_differences"]
    assert meta["bar_differences"] == []
    # Every minute of the day predicted by every model (the day before's tail gives the first ones their
    # history); the error of every minute but the last, which no later trade completes.
    assert meta["predicted_minutes"] == {name: 1440 for name in MODELS}, meta["predicted_minutes"]
    assert meta["errors_written"] == {name: 1439 for name in MODELS}, meta["errors_written"]
    metrics = meta["model_metrics"]
    assert {name: metrics[name]["rows"] for name in MODELS} == {name: 1439 for name in MODELS}, metrics
    assert metrics["persistence"]["skill"] == 0.0 and all(math.isfinite(metrics[name]["skill"]) for name in MODELS)
    assert "| lr | 1,440 | 1,439 |" in meta["skill"], meta["skill"]
    assert meta["evaluation"].startswith("![the replayed day](data:image/png;base64,"), meta["evaluation"][:80]

    # The replay is apart from the live stream: the live bucket has none of its points, the live topic none of
    # its trades. And the predictions dashboard, with its bucket variable on the replay's, shows it.
    start_ms = int(datetime.fromisoformat(meta["day_start"].replace("Z", "+00:00")).timestamp() * 1000)
    start, stop = replay.rfc3339(start_ms), replay.rfc3339(start_ms + 1440 * 60_000)
    live = resources["influx"].reader()
    assert not live.query(f'from(bucket: "{live.bucket}") |> range(start: {start}, stop: {stop})'
                          f' |> filter(fn: (r) => r._measurement == "{schema.BARS_MEASUREMENT}") |> limit(n: 1)')
    live.close()
    (variable,) = [v for v in dashboards.dashboard_json("btc-predictions")["templating"]["list"] if v["name"] == "bucket"]
    assert variable["query"].split(",") == [schema.DEFAULT_BUCKET, "btc_replay"], variable
    reader = Influx(resources["influx"].url, resources["influx"].org, bucket, resources["influx"].read_token)
    board = json.loads(dashboards.render("btc-predictions"))
    for title, flux, _ in dashboards.panel_queries(board, bucket=bucket, symbol=SYMBOL, start=start, stop=stop):
        assert reader.query(flux), f"panel {title!r} shows nothing of the replay"
    reader.close()


def test_a_replay_refuses_what_it_cannot_do(resources, tmp_path):
    storage = resources["storage"].storage
    targets = dataclasses.replace(replay.ReplayTargets.from_env(), bucket="btc_replay_x")
    with pytest.raises(replay.ReplayError, match="speed must be above 0"):
        replay.Replay(storage, targets, SYMBOL, DAY, speed=0, state_dir=tmp_path)
    with pytest.raises(replay.ReplayError, match="YYYY-MM-DD"):
        replay.Replay(storage, targets, SYMBOL, "11.02.2025", state_dir=tmp_path)
    with pytest.raises(replay.ReplayError, match="is the live one"):
        dataclasses.replace(targets, bucket=schema.DEFAULT_BUCKET)
    with pytest.raises(replay.ReplayError, match="materialize raw_trades for 2019-01-01"):
        replay.Replay(storage, targets, SYMBOL, "2019-01-01", state_dir=tmp_path).run()
    # A file out of id order is refused before anything starts: the producer would drop the trade.
    path = tmp_path / "day.csv"
    path.write_text("5,1.0,1.0,1.0,1739232000000,True,True\n4,1.0,1.0,1.0,1739232000001,True,True\n"
                    "not,a,trade\n")
    with pytest.raises(replay.ReplayError, match="trade 4 on line 2 is not above 5"):
        replay.scan(path)
    path.write_text("4,1.00000000,2.50000000,2.5,1739232000000123,False,True\nbad line\n")
    kept = tmp_path / "kept.csv"
    facts = replay.scan(path, keep=kept)
    assert (facts.trades, facts.malformed, facts.first_id, facts.id_sum) == (1, 1, 4, 4)
    assert kept.read_text() == "4,1.00000000,2.50000000,2.5,1739232000000123,False,True\n"  # the rows counted only
    (event,) = replay.events([path], SYMBOL, offset_ms=1000)
    assert event == {"e": "trade", "E": 1739232001000, "s": SYMBOL, "t": 4, "p": "1.00000000", "q": "2.50000000",
                     "T": 1739232001000, "m": False, "M": True}


RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status jobName tags { key value } } } }"""


def test_the_replay_command_launches_replay_job_on_the_stacks_dagster_and_reports_its_end(stack):
    """`btc-pipeline replay` launches a run of replay_job through the webserver's GraphQL API (the daemon runs it, the
    UI shows it) and follows its log: a day that was never stored fails the run with the replay's own message,
    which the command prints, and it exits 1 with the run's id."""
    outside = subprocess.run([sys.executable, "-m", "btc_localstack.cli", "replay", "--date", "2019-01-02"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert outside.returncode != 0 and "2019-01-02 is not a day of replay_job's partitions" in outside.stderr, \
        outside.stderr[-2000:]
    day = "2024-01-02"  # a day of the partitions that no test stores
    result = subprocess.run([sys.executable, "-m", "btc_localstack.cli", "replay", "--symbol", SYMBOL, "--date", day,
                             "--speed", "60"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"materialize raw_trades for {day} first" in result.stderr, result.stderr[-4000:]
    run_id = result.stdout.strip().splitlines()[-1]
    run = graphql(stack.services["dagster"].url, RUN, {"id": run_id})["runOrError"]
    assert run["status"] == "FAILURE" and run["jobName"] == "replay_job", run
    assert {"key": "dagster/partition", "value": day} in run["tags"], run
    assert f"the replay run ended FAILURE: see {stack.services['dagster'].url}/runs/{run_id}" in result.stderr


def test_the_replayed_days_plot_draws_every_model_on_the_days_own_times():
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    offset_ms = 123 * 86_400_000
    predicted = pd.date_range("2025-02-11 00:01", periods=90, freq="min", tz="UTC") + pd.Timedelta(milliseconds=offset_ms)
    close = 97_000 + np.cumsum(np.random.default_rng(3).normal(0, 20, len(predicted) + 1))
    stored = {}
    for name, shift in (("lr", 3.0), ("gbt", -2.0), ("persistence", 0.0)):
        actual = close[1:].copy()
        actual[-1] = np.nan  # the newest minute: not complete, no actual yet
        stored[name] = pd.DataFrame({"predicted_price": close[:-1] + shift, "actual_price": actual}, index=predicted)
    png = replay.evaluation_png(stored, SYMBOL, offset_ms)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 300
    assert replay.evaluation_png({}, SYMBOL, offset_ms) == b""

"""Live predictions in the stream: each completed minute scored by the newest saved models, the error once the
minute predicted completes, a new version picked up, a broken one refused (btc_assets.stream.scorer)."""

from __future__ import annotations

import dataclasses
import math
import os
import uuid
from collections import defaultdict

import pytest

from btc_testkit import bars as known_bars

from btc_assets.clients.storage import Storage
from btc_assets.contracts import schema
from btc_assets.ml import features, models, predictions
from btc_assets.stream import scorer, spark_job
from btc_assets_tests.stream.spark_fixtures import (
    TradeFeed,
    health_points,
    market_slice,
    new_case,
    trade_messages,
    wait_for,
)

SYMBOLS = ("BTCUSDT", "ETHUSDT")
MODELS = ("lr", "gbt", "persistence")
WARM_MINUTES = 20  # fed at once: 16 bars of history for the first scored minutes
SMALL = models.ModelParams(gbt_max_iter=20, gbt_max_depth=4, gbt_max_bins=32)


def _train(spark, storage: Storage, version: str, seed: int, names=MODELS, **params) -> None:
    """LR and GBT (and persistence) on three generated days, saved under ``version``."""
    bars = known_bars.generated_bars("2025-03-01", 3, trades_per_day=20_000, seed=seed, taker_signal=0.0015)
    frame = features.build_training_frame(spark.createDataFrame(bars.assign(symbol="BTCUSDT")))
    train, validation, test = features.chronological_split(frame, features.plan_split(features.training_days(frame)))
    trained = [name for name in names if name in models.TRAINED_MODELS]
    results = models.train_models(train, validation, test, dataclasses.replace(SMALL, **params),
                                  models=trained, log=lambda _: None)
    for name in names:
        result = results.models[name]
        models.save_model(storage, name, version, result.model, result.metrics_document(version=version))


def _stored(case) -> dict[tuple[str, str], dict[int, dict]]:
    """(symbol, model) -> minute predicted (since the epoch) -> the point's fields."""
    rows = case.admin.query(
        f'from(bucket: "{case.settings.influx_bucket}") |> range(start: 0)'
        f' |> filter(fn: (r) => r._measurement == "{schema.PREDICTIONS_MEASUREMENT}")'
        ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')
    found: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for row in rows:
        found[(row[schema.SYMBOL_TAG], row[schema.MODEL_TAG])][int(row["_time"].timestamp()) // 60] = row
    return found


def _scorer_health(case) -> dict:
    points = [point for point in health_points(case.admin) if point[schema.COMPONENT_TAG] == scorer.COMPONENT]
    return max(points, key=lambda point: point["_time"]) if points else {}


@pytest.fixture
def scoring_case(stack, spark):
    unique = uuid.uuid4().hex[:10]
    case = new_case(unique, SYMBOLS, bars_trigger="2 seconds", predictions_models=MODELS)
    assert case.settings.predicts, "the test env has the read token and WebHDFS the scorer needs"
    root = case.settings.checkpoint_root.removeprefix(os.environ["BTC_HDFS_URL"])  # the job's models: <root>/models
    storage = Storage.for_url(os.environ["BTC_HDFS_URL"], root, webhdfs_url=os.environ["BTC_WEBHDFS_URL"])
    yield case, storage
    for step in case.cleanup:
        step()
    storage.fs.delete(root, recursive=True)


def test_each_completed_minute_is_scored_by_the_newest_models(spark, scoring_case):
    case, storage = scoring_case
    _train(spark, storage, "v1", seed=5)
    market = market_slice(SYMBOLS, 30_000, day_size=400_000)
    by_minute: dict[int, list] = defaultdict(list)
    for message, (_, event) in zip(trade_messages(market, case.settings.topic_template), market.events):
        by_minute[event[schema.EVENT_TRADE_TIME] // 60_000].append(message)
    minutes = sorted(by_minute)[:WARM_MINUTES + 4]  # whole minutes only (the slice's last one is cut short)
    first = minutes[0]

    def feed(upto: int) -> None:  # the trades of minutes first..upto (relative), in order
        TradeFeed(case.bootstrap, [m for minute in minutes if fed[0] <= minute - first <= upto
                                   for m in by_minute[minute]]).start().join()
        fed[0] = upto + 1

    def scored_through() -> int | None:
        return _scorer_health(case).get("scored_through")

    fed = [0]
    job = spark_job.start_job(case.settings, spark)
    try:
        # 20 minutes and the first trades of the 21st at once: minutes up to the 20th are complete.
        feed(WARM_MINUTES)
        wait_for(lambda: scored_through() == first + WARM_MINUTES - 1, 180, "the first round scored",
                 state=lambda: _scorer_health(case))
        # One minute more: the 21st completes; the error of the minute it predicted is written.
        feed(WARM_MINUTES + 1)
        wait_for(lambda: scored_through() == first + WARM_MINUTES, 120, "the 21st minute scored",
                 state=lambda: _scorer_health(case))
        # A new LR version (other data, other regularisation) and a GBT version that cannot load: the next minute
        # is LR's new version's, and GBT's old version serves on.
        _train(spark, storage, "v2", seed=9, names=("lr",), lr_reg_param=0.001)
        broken = schema.model_dir(storage.root, "gbt", "v3")
        storage.fs.write(f"{broken}/{schema.MODEL_METRICS_FILE}", b"{}")
        feed(WARM_MINUTES + 2)
        wait_for(lambda: scored_through() == first + WARM_MINUTES + 1, 120, "the 22nd minute scored with LR v2",
                 state=lambda: _scorer_health(case))
        health = _scorer_health(case)
    finally:
        job.stop(120)

    assert health["models"] == len(MODELS) and health["model_loads"] == len(MODELS) + 1, health
    assert health["errors"] == 1, health  # GBT v3, once: a version that failed is not retried every round
    assert health["latency_ms"] >= 0 and health["latency_p99_ms"] >= 0, health  # written once a round scored

    # What every model should have said: the asset's own code on the bars the stream wrote.
    reader = case.admin
    last = first + WARM_MINUTES + 1  # the newest complete minute
    bars = predictions.read_live_bars(reader, SYMBOLS, last - first + 1, through_minute=last)
    assert sorted(set(bars[features.SYMBOL])) == sorted(SYMBOLS)
    loaded = {version: {name: models.load_model(storage, name, version)[0] for name in names}
              for version, names in (("v1", MODELS), ("v2", ("lr",)))}
    expected = {version: predictions.predict_live(spark, fitted, bars, last - first)
                for version, fitted in loaded.items()}
    stored = _stored(case)
    # Three minutes predicted by the first round that had the whole warm-up, then one more per minute. (A round
    # on a part of the warm-up may have predicted earlier minutes too: those are checked like the rest.)
    required = set(range(first + WARM_MINUTES - 2, last + 2))
    for symbol in SYMBOLS:
        rows = bars[bars[features.SYMBOL] == symbol]
        closes = dict(zip((int(t.timestamp()) // 60 for t in rows[schema.MINUTE]), rows[features.CLOSE]))
        for model in MODELS:
            points = stored[(symbol, model)]
            assert required <= set(points) <= set(range(first + features.LOOKBACK_BARS, last + 2)), \
                (symbol, model, sorted(points), sorted(required))
            for target, got in points.items():
                # LR's minutes scored after v2 was saved are v2's (each round rescores the last three minutes).
                version = "v2" if model == "lr" and target >= last - 1 else "v1"
                frame = expected[version]
                row = frame[(frame[features.SYMBOL] == symbol) & (frame[features.MINUTE_INDEX] == target - 1)]
                assert len(row) == 1, (symbol, model, target)
                want = float(row[f"predicted_{model}"].iloc[0])
                assert math.isclose(got["predicted_price"], want, rel_tol=1e-12), (symbol, model, target, got, want)
                if target <= last:  # the minute predicted has completed: its close and the error
                    assert got["actual_price"] == closes[target], (symbol, model, target, got)
                    assert math.isclose(got["error"], want - closes[target], rel_tol=1e-9, abs_tol=1e-9)
                else:  # the minute trading now: a forecast only
                    assert got.get("actual_price") is None and got.get("error") is None, got

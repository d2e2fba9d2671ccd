"""Live predictions: saved models from HDFS on live bars in InfluxDB, their errors once the minute trades, the Grafana panels."""

from __future__ import annotations

import json
import math
import time
import uuid

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from btc_assets.defs.ml.predictions import price_predictions
from btc_assets.defs.resources import MarketResource, InfluxResource, StorageResource
from btc_assets import dashboards
from btc_assets.ml import features, models, predictions
from btc_assets.contracts import points, schema
from btc_assets_tests.ml.conftest import SMALL, SYMBOL, first_days, spark_bars

LIVE_BARS = 45  # complete bars written as the stream would: 29 of them have the 16 bars of history a prediction needs
SETTLE = 300.0  # wide, so the bar of the minute before "now" stays incomplete however slow the test runs
LAST_COMPLETE = 10  # minutes before now: the newest complete bar (ended more than SETTLE ago)


@pytest.fixture(scope="module")
def saved_models(spark, resources, signal_bars):
    """LR, RF, GBT and persistence trained on five days of the signal bars, saved to a private HDFS root."""
    base = resources["storage"]
    storage = StorageResource(filesystem_url=base.filesystem_url, webhdfs_url=base.webhdfs_url, user=base.user,
                              root=f"/btc-predtest-{uuid.uuid4().hex[:10]}")
    frame = features.build_training_frame(spark_bars(spark, first_days(signal_bars, 5)))
    train, validation, test = features.chronological_split(frame, features.plan_split(features.training_days(frame)))
    results = models.train_models(train, validation, test, SMALL)
    for name, result in results.models.items():
        models.save_model(storage.storage, name, "v1", result.model, result.metrics_document(version="v1"))
    yield storage
    storage.storage.fs.delete(storage.storage.root, recursive=True)


@pytest.fixture
def live_bucket(resources):
    """A fresh InfluxDB bucket, and the influx resource pointed at it (the pipeline's write and read tokens)."""
    influx = resources["influx"]
    admin = influx.admin()
    name = f"predictions-test-{uuid.uuid4().hex[:8]}"
    bucket_id = admin.ensure_bucket(name)
    yield InfluxResource(url=influx.url, org=influx.org, bucket=name, write_token=influx.write_token,
                         read_token=influx.read_token, admin_token=influx.admin_token)
    admin.client.buckets_api().delete_bucket(bucket_id)
    admin.close()


def recent_bars(signal_bars, count: int, last_minute: int) -> pd.DataFrame:
    """``count`` generated bars of the last day (after the training days), one a minute up to ``last_minute``."""
    day = signal_bars[signal_bars[schema.MINUTE].str.startswith(sorted(set(signal_bars[schema.MINUTE].str[:10]))[-1])]
    chosen = day.iloc[600:600 + count].reset_index(drop=True)
    return chosen.assign(**{schema.MINUTE: [_label(last_minute - count + 1 + offset) for offset in range(count)]})


def write_bars(influx: InfluxResource, bars: pd.DataFrame) -> None:
    writer = influx.writer()
    writer.write_lines([points.bar_line(SYMBOL, row) for row in bars.to_dict("records")])
    writer.close()


def run(storage, influx, resources, **config):
    return dg.materialize([price_predictions], resources={"spark": resources["spark"], "storage": storage,
                                                          "influx": influx, "market": MarketResource(symbols=SYMBOL)},
                          run_config={"ops": {"price_predictions": {"config": {"settle_seconds": SETTLE, **config}}}},
                          raise_on_error=False)


def stored(influx: InfluxResource, model: str) -> pd.DataFrame:
    reader = influx.reader()
    rows = reader.query(predictions.predictions_flux(influx.bucket, SYMBOL, model, 180))
    reader.close()
    frame = pd.DataFrame(rows)
    return frame.set_index(pd.to_datetime(frame["_time"], utc=True).dt.strftime(schema.MINUTE_FORMAT)).sort_index()


def metadata(result) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {name: value.value for name, value in event.materialization.metadata.items()}


def test_predictions_for_live_minutes_land_under_each_model_with_their_errors(
        spark, resources, saved_models, live_bucket, signal_bars):
    now_minute = int(time.time() // 60)
    bars = recent_bars(signal_bars, LIVE_BARS + 2, now_minute - LAST_COMPLETE + 2)
    complete, upcoming = bars.iloc[:LIVE_BARS], bars.iloc[LIVE_BARS:LIVE_BARS + 1]
    # The minute before now has a bar too, still trading: neither a feature row nor an actual price.
    trading = bars.iloc[-1:].assign(**{schema.MINUTE: _label(now_minute - 1)})
    write_bars(live_bucket, pd.concat([complete, trading]))

    result = run(saved_models, live_bucket, resources)
    assert result.success
    facts = metadata(result)
    predictable = LIVE_BARS - (features.LOOKBACK_BARS - 1)
    assert facts["minutes_predicted"] == predictable
    assert facts["minutes_scored"] == predictable - 1  # the newest one's minute has not traded yet
    assert facts["points_written"] == 4 * predictable
    assert facts["model_versions"] == {name: "v1" for name in schema.MODELS}
    forecast_minute = upcoming.iloc[0][schema.MINUTE]
    assert facts["forecast"][SYMBOL]["minute"] == forecast_minute
    assert facts["evaluation"].startswith("![live predictions](data:image/png;base64,")

    closes = dict(zip(complete[schema.MINUTE], complete["close"]))
    scored_minutes = list(complete[schema.MINUTE])[features.LOOKBACK_BARS:]
    first_round = {}
    for name in schema.MODELS:
        series = stored(live_bucket, name)
        first_round[name] = series
        assert list(series.index) == [*scored_minutes, forecast_minute], name
        assert _label(now_minute) not in series.index  # nothing from the bar still trading
        scored = series.loc[scored_minutes]
        assert np.array_equal(scored["actual_price"].to_numpy(), [closes[minute] for minute in scored_minutes])
        assert np.allclose(scored["error"], scored["predicted_price"] - scored["actual_price"], rtol=0, atol=1e-6)
        assert math.isnan(series.loc[forecast_minute].get("actual_price", math.nan))
        errors = scored["error"].to_numpy()
        assert facts[f"{name}_rmse_usd"] == pytest.approx(math.sqrt(np.mean(errors**2)), rel=1e-9)
        assert facts["rolling_metrics"][name]["rows"] == predictable - 1
    # Persistence says the next close is the last one; skill is measured against exactly that.
    persistence = first_round[models.PERSISTENCE]
    feature_bars = complete.iloc[features.LOOKBACK_BARS - 1:]
    assert list(persistence["predicted_price"]) == list(feature_bars["close"])
    assert facts["persistence_skill"] == 0.0
    # The forecast is what the saved model makes of the newest 16 bars alone.
    for name in schema.MODELS:
        loaded, _ = models.load_model(saved_models.storage, name)
        live = features.latest_features(spark, complete.tail(features.LOOKBACK_BARS), SYMBOL)
        assert first_round[name].loc[forecast_minute, "predicted_price"] == models.predict_next_price(
            spark, loaded, live), name

    # The forecast minute trades: the next run scores it and forecasts the one after; nothing earlier moves.
    write_bars(live_bucket, upcoming)
    again = run(saved_models, live_bucket, resources)
    assert again.success
    assert metadata(again)["minutes_scored"] == predictable
    for name in schema.MODELS:
        series = stored(live_bucket, name)
        assert series.loc[forecast_minute, "actual_price"] == upcoming.iloc[0]["close"]
        assert series.loc[forecast_minute, "error"] == pytest.approx(
            first_round[name].loc[forecast_minute, "predicted_price"] - upcoming.iloc[0]["close"], abs=1e-6)
        assert _label(_index(forecast_minute) + 1) in series.index
        earlier = first_round[name].index
        assert np.array_equal(series.loc[earlier, "predicted_price"], first_round[name]["predicted_price"]), name

    # Grafana's prediction panels, with its read-only token, return those rows.
    reader = live_bucket.reader()
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7200))
    queries = dashboards.panel_queries(json.loads(dashboards.render("btc-predictions")), bucket=live_bucket.bucket,
                                       symbol=SYMBOL, start=start, stop="now()")
    for title, flux, fields in queries:
        rows = reader.query(flux)
        assert {row["_field"] for row in rows} == set(fields), title
        assert {row[schema.MODEL_TAG] for row in rows if row["_field"] != "actual_price"} == set(schema.MODELS), title
        assert all(row["_value"] is not None and math.isfinite(row["_value"]) for row in rows), title
    reader.close()


def test_no_saved_model_is_a_clear_failure(resources, live_bucket):
    base = resources["storage"]
    empty = StorageResource(filesystem_url=base.filesystem_url, webhdfs_url=base.webhdfs_url, user=base.user,
                            root=f"/btc-nomodels-{uuid.uuid4().hex[:8]}")
    result = run(empty, live_bucket, resources)
    assert not result.success
    assert "materialize price_models first" in _failure(result)


def test_too_few_live_bars_is_a_clear_failure(resources, saved_models, live_bucket, signal_bars):
    write_bars(live_bucket, recent_bars(signal_bars, features.LOOKBACK_BARS - 1, int(time.time() // 60) - LAST_COMPLETE))
    result = run(saved_models, live_bucket, resources)
    assert not result.success
    message = _failure(result)
    assert f"needs {features.LOOKBACK_BARS} complete bars" in message and "Is the stream running?" in message
    assert f"{{'{SYMBOL}': {features.LOOKBACK_BARS - 1}}}" in message


def test_complete_bars_leave_the_trading_minute_out():
    minutes = pd.to_datetime(["2025-04-01 10:00", "2025-04-01 10:01", "2025-04-01 10:02"], utc=True)
    bars = pd.DataFrame({schema.MINUTE: minutes, features.SYMBOL: SYMBOL, "close": [1.0, 2.0, 3.0]})
    at = pd.Timestamp("2025-04-01 10:03:14", tz="UTC").timestamp()
    assert list(predictions.complete_bars(bars, at, settle_seconds=15)["close"]) == [1.0, 2.0]  # 10:02 ended 14 s ago
    assert list(predictions.complete_bars(bars, at + 1, settle_seconds=15)["close"]) == [1.0, 2.0, 3.0]
    assert list(predictions.complete_bars(bars, at - 15, settle_seconds=0)["close"]) == [1.0, 2.0]  # 10:02:59


def test_prediction_points_are_the_contracts():
    frame = pd.DataFrame({features.SYMBOL: [SYMBOL, SYMBOL], features.MINUTE_INDEX: [29_058_240, 29_058_241],
                          features.NEXT_CLOSE: [84_001.5, math.nan], "predicted_lr": [84_000.25, 84_002.0]})
    assert predictions.prediction_lines(frame, ["lr"]) == [
        "price_predictions,symbol=BTCUSDT,model=lr predicted_price=84000.25,actual_price=84001.5,error=-1.25 "
        "1743494460000000000",
        "price_predictions,symbol=BTCUSDT,model=lr predicted_price=84002.0 1743494520000000000",
    ]


def _index(label: str) -> int:
    return int(pd.Timestamp(label, tz="UTC").timestamp()) // 60


def _label(minute_index: int) -> str:
    return time.strftime(schema.MINUTE_FORMAT, time.gmtime(minute_index * 60))


def _failure(result) -> str:
    (event,) = [event for event in result.all_events if event.is_step_failure]
    return str(event.step_failure_data.error)

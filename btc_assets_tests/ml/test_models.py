"""Models: skill on a planted signal and none on noise, the seed setup's misleading R², save and load via HDFS."""

from __future__ import annotations

import math

import numpy as np
import pytest

from btc_assets.ml import features, models

from btc_assets.contracts import schema
from btc_assets_tests.ml.conftest import SMALL, SYMBOL, spark_bars

NO_SKILL = 0.01  # on pure noise a model may not claim more than this


def _train(spark, bars, params=SMALL):
    frame = features.build_training_frame(spark_bars(spark, bars)).cache()
    plan = features.plan_split(features.training_days(frame))
    train, validation, test = features.chronological_split(frame, plan)
    return models.train_models(train, validation, test, params), (train, validation, test)


@pytest.fixture(scope="module")
def signal_run(spark, signal_bars):
    return _train(spark, signal_bars)


def test_models_beat_persistence_on_a_planted_signal(signal_run):
    results, _ = signal_run
    assert set(results.models) == {"lr", "rf", "gbt", "persistence"}
    for name in models.TRAINED_MODELS:
        test = results.models[name].metrics["test"]
        assert test["skill"] > 0.02, (name, test)
        assert results.models[name].metrics["validation"]["skill"] > 0.02, name
        assert test["rmse_usd"] < results.models["persistence"].metrics["test"]["rmse_usd"]
        assert test["r2_return"] > 0.02
    persistence = results.models["persistence"].metrics["test"]
    assert persistence["skill"] == 0.0
    assert results.rows["test"] == persistence["rows"] > 1_000


def test_models_claim_no_skill_on_noise(spark, noise_bars):
    results, _ = _train(spark, noise_bars)
    for name in models.TRAINED_MODELS:
        test = results.models[name].metrics["test"]
        assert test["skill"] <= NO_SKILL, (name, test)
        # R² on price looks excellent all the same: any model near the current price gets it.
        assert test["r2_price"] > 0.9


def test_seed_replication_shows_the_random_split_misleads(spark, signal_run):
    _, (train, validation, test) = signal_run
    report = models.seed_replication(train.unionByName(validation), test, SMALL)
    assert set(report) == {"lr", "rf", "gbt", "persistence"}
    # The original's number: high R² on minutes drawn at random from the same days (GBT: ~0.99)...
    assert report["gbt"]["random_split"]["r2_price"] > 0.9
    for name in models.TRAINED_MODELS:
        replica = report[name]
        assert replica["random_split"]["r2_price"] > 0.5, (name, replica)
        # ...and on the days after, worse than repeating the last price, by far.
        assert replica["later_days"]["skill"] < 0, (name, replica)
        assert replica["later_days"]["r2_price"] < replica["random_split"]["r2_price"]
        # Over one later day (the window the original's live R² came from) R² on price falls far below 0.
        assert min(replica["later_days"]["r2_price_by_day"].values()) < -1, (name, replica)
    assert report["persistence"]["later_days"]["r2_price"] > 0.9


def test_saved_models_load_back_with_the_same_predictions(spark, signal_run, signal_bars, ml_storage):
    results, (_, _, test) = signal_run
    storage = ml_storage.storage
    version = models.new_version()
    for name, result in results.models.items():
        url = models.save_model(storage, name, version, result.model, result.metrics_document(version=version))
        assert url == f"{storage.root_url}/models/{name}/{version}"
    for name, result in results.models.items():
        loaded, metrics = models.load_model(storage, name)  # the newest version
        assert metrics["version"] == version and metrics["model"] == name
        assert metrics["test"] == pytest.approx(result.metrics["test"], nan_ok=True)
        before = models.predict(result.model, test)
        after = models.predict(loaded, test)
        assert np.array_equal(before["predicted_price"].to_numpy(), after["predicted_price"].to_numpy()), name
        # Served live: features from the newest bars alone, the loaded model, the same price to the bit.
        last = after.iloc[-1]
        position = int(np.flatnonzero(signal_bars[schema.MINUTE] == last[schema.MINUTE].strftime("%Y-%m-%d %H:%M"))[0])
        live = features.latest_features(spark, signal_bars.iloc[position + 1 - features.LOOKBACK_BARS: position + 1], SYMBOL)
        assert models.predict_next_price(spark, loaded, live) == last["predicted_price"], name
    assert models.model_versions(storage, "gbt") == [version]
    # A version without metrics.json (a save cut short) is never the one served.
    storage.fs.mkdirs(f"{storage.root}/models/gbt/99991231T000000Z")
    assert models.load_model(storage, "gbt")[1]["version"] == version
    with pytest.raises(FileNotFoundError, match="price_models"):
        models.load_model(storage, "no-such-model")


def test_evaluation_plot_and_table(signal_run):
    results, _ = signal_run
    png = models.evaluation_png(results.predictions, ["gbt", "lr", "persistence"])
    assert png.startswith(b"\x89PNG") and 10_000 < len(png) < 400_000
    assert models.markdown_image(png).startswith("![evaluation](data:image/png;base64,iVBOR")
    table = models.metrics_table(results).splitlines()
    assert table[0].startswith("| model | RMSE (USD)") and len(table) == 2 + 4
    assert table[-1].startswith("| persistence |")


def test_price_metrics_by_hand():
    actual = np.array([100.0, 101.0, 103.0, 102.0])
    current = np.array([99.0, 100.0, 101.0, 103.0])  # persistence: each minute's close
    perfect = models.price_metrics(actual, actual, current)
    assert perfect["rmse_usd"] == 0.0 and perfect["skill"] == 1.0 and perfect["r2_price"] == 1.0
    same = models.price_metrics(actual, current, current)
    assert same["skill"] == 0.0
    assert same["rmse_usd"] == pytest.approx(math.sqrt((1 + 1 + 4 + 1) / 4))
    assert same["mae_usd"] == pytest.approx(5 / 4)
    assert same["r2_price"] == pytest.approx(1 - 7 / 5)  # mean 101.5: squares 2.25+0.25+2.25+0.25
    worse = models.price_metrics(actual, current - 1, current)
    assert worse["skill"] < 0

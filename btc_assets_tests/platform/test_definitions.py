"""The code location: definitions load without touching an engine, list their assets, and materialize from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest

from btc_assets.definitions import defs as load_definitions
from btc_localstack.base import REPO_ROOT

pytestmark = pytest.mark.beside_the_live_stream  # run in the supervision test's healthy window: conftest.py

PLATFORM_ASSETS = {"trade_topics", "influx_bucket"}
EVERY_ASSET = PLATFORM_ASSETS | {"raw_trades", "exchange_klines", "minute_bars", "live_trades", "live_bars", "training_set",
                                 "lr_model", "rf_model", "gbt_model", "persistence_model",
                                 "price_predictions", "stream_replay"}


def test_definitions_validate_and_list_assets():
    environment = dict(os.environ)
    definitions = load_definitions()
    assert dict(os.environ) == environment, "loading the definitions changed the environment"
    dg.Definitions.validate_loadable(definitions)
    keys = {key.to_user_string() for key in definitions.resolve_asset_graph().get_all_asset_keys()}
    assert keys == EVERY_ASSET
    for key in keys:
        spec = definitions.resolve_assets_def(key)
        assert spec.descriptions_by_key[dg.AssetKey.from_user_string(key)], f"{key} has no description"
    checks = {key.name for key in definitions.resolve_asset_graph().asset_check_keys}
    assert {"trades_conserved", "volume_conserved", "ohlc_consistent", "bars_inside_day",
            "trade_ids_contiguous", "bars_match_klines", "stream_healthy", "bars_fresh", "freshness_check"} <= checks
    history = definitions.resolve_job_def("history_job")
    assert {key.to_user_string() for key in history.asset_layer.selected_asset_keys} == {
        "raw_trades", "exchange_klines", "minute_bars"}
    assert definitions.resolve_asset_graph().get(dg.AssetKey("minute_bars")).freshness_policy is not None
    assert set(definitions.resources) >= {"storage", "kafka", "spark", "mapreduce", "influx"}
    # Live predictions every 5 minutes, off until switched on (they need the stream and saved models).
    schedule = definitions.resolve_schedule_def("price_predictions_schedule")
    assert schedule.cron_schedule == "*/5 * * * *" and schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    job = definitions.resolve_job_def("price_predictions_job")
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} == {"price_predictions"}
    assert {job.name for job in definitions.resolve_all_job_defs()} >= {"history_job", "restart_stream_job", "replay_job"}
    replay = definitions.resolve_job_def("replay_job")
    assert {key.to_user_string() for key in replay.asset_layer.selected_asset_keys} == {"stream_replay"}
    assert definitions.resolve_sensor_def("stream_health_sensor")
    assert definitions.resolve_sensor_def("freshness_checks_sensor")
    assert definitions.resolve_asset_graph().get(dg.AssetKey("minute_bars")).pools == {"mapreduce"}


def _sensor_interval_at_load(value: str) -> subprocess.CompletedProcess:
    """A fresh interpreter (the sensor's interval is read once, at import) loading the definitions as the daemon does."""
    code = ("from btc_assets.definitions import defs; "
            "print(defs().resolve_sensor_def('stream_health_sensor').minimum_interval_seconds)")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, BTC_STREAM_SENSOR_INTERVAL_SECONDS=value))


def test_the_health_sensor_ticks_as_often_as_configured():
    from btc_assets import config

    assert config.default("BTC_STREAM_SENSOR_INTERVAL_SECONDS") == "60"
    configured = _sensor_interval_at_load("7")
    assert configured.returncode == 0, configured.stderr[-2000:]
    assert configured.stdout.split()[-1] == "7"
    for wrong, says in (("0", "BTC_STREAM_SENSOR_INTERVAL_SECONDS=0 must be at least 1"),
                        ("a minute", "BTC_STREAM_SENSOR_INTERVAL_SECONDS='a minute' is not a whole number")):
        failed = _sensor_interval_at_load(wrong)
        assert failed.returncode != 0 and says in failed.stderr, failed.stderr[-2000:]


def test_runs_execute_in_process_unless_configured(monkeypatch):
    monkeypatch.delenv("BTC_DAGSTER_EXECUTOR", raising=False)
    assert load_definitions().executor.name == "in_process"
    monkeypatch.setenv("BTC_DAGSTER_EXECUTOR", "multiprocess")
    assert load_definitions().executor.name == "multiprocess"
    monkeypatch.setenv("BTC_DAGSTER_EXECUTOR", "threads")
    with pytest.raises(ValueError, match="BTC_DAGSTER_EXECUTOR must be one of in_process, multiprocess, got 'threads'"):
        load_definitions()


def test_dagster_cli_materializes_platform_assets(stack, tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m",
                             "btc_assets.definitions", "--select", "trade_topics,influx_bucket"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "RUN_SUCCESS" in result.stdout + result.stderr

    instance = dg.DagsterInstance.from_config(str(tmp_path))
    for name in PLATFORM_ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        assert event is not None, name
    topics = instance.get_latest_materialization_event(dg.AssetKey("trade_topics")).asset_materialization
    described = topics.metadata["topics"].value
    assert described["BTCUSDT-TRADES"]["partitions"] == 3
    assert "BTCUSDT-TRADES.dlq" in described

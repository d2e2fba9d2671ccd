"""The one Definitions object of the `btc_assets` code location.

Loading it touches no engine: resources connect lazily, and their settings are ``EnvVar``s resolved
when a run starts. ``load_profile_env`` fills the environment from the local stack's env file (the
``local`` profile) and the documented defaults first.
"""

from __future__ import annotations

import dagster as dg

from btc_assets.defs.batch import assets as batch_assets
from btc_assets.defs.batch.checks import minute_bar_checks
from btc_assets.defs.batch.schedules import history_job, history_schedule
from btc_assets.defs.ml import assets as ml_assets
from btc_assets.defs.ml import predictions as ml_predictions
from btc_assets.defs.platform import assets as platform_assets
from btc_assets.defs.stream.assets import live_bars, live_trades
from btc_assets.defs.stream.sensors import restart_stream_job, stream_health_sensor
from btc_assets.defs.resources import build_resources
from btc_assets.lib.config import load_profile_env

PROFILE = load_profile_env()

defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([platform_assets, batch_assets, ml_assets, ml_predictions]), live_trades, live_bars],
    asset_checks=[minute_bar_checks],
    jobs=[history_job, restart_stream_job, ml_predictions.price_predictions_job],
    schedules=[history_schedule, ml_predictions.price_predictions_schedule],
    sensors=[stream_health_sensor],
    resources=build_resources(),
)

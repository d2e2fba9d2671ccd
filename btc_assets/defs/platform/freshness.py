"""Freshness of what users look at: the newest history day every morning, the live series within minutes.

* `minute_bars` carries a ``FreshnessPolicy`` (``HISTORY_FRESHNESS``, in its definition): a materialization
  in the 24 hours before 09:00 UTC (the archive publishes a day in the morning; `history_job_schedule`
  asks for it at 06:00). The daemon's freshness evaluation shows it in the UI.
* `live_trades`, `live_bars` are observed, never materialized, and ``FreshnessPolicy`` counts only
  materializations: they get freshness *checks* instead, which read the time of the newest trade and
  bar that the health sensor's observations carry (`dagster/last_updated_timestamp`), so a stream that
  stops shows as stale even while the sensor keeps observing it. `freshness_checks_sensor` evaluates
  them every minute (running by default: it only reads).
"""

from datetime import timedelta

import dagster as dg

from btc_assets.defs.stream.assets import live_bars, live_trades

LIVE_FRESHNESS = timedelta(minutes=5)

live_freshness_checks = dg.build_last_update_freshness_checks(
    assets=[live_trades.key, live_bars.key], lower_bound_delta=LIVE_FRESHNESS, severity=dg.AssetCheckSeverity.ERROR)

freshness_checks_sensor = dg.build_sensor_for_freshness_checks(
    freshness_checks=live_freshness_checks, minimum_interval_seconds=60,
    name="freshness_checks_sensor", default_status=dg.DefaultSensorStatus.RUNNING)

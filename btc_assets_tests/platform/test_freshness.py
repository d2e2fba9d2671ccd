"""Freshness checks: the live series are stale once their newest data (not their newest observation) is old."""

from __future__ import annotations

import time

import dagster as dg

from btc_assets.defs.platform.freshness import LIVE_FRESHNESS, live_freshness_checks
from btc_assets.defs.stream.assets import live_bars, live_trades


def _evaluate(instance) -> dict[str, bool]:
    result = dg.materialize([live_trades, live_bars, *live_freshness_checks], instance=instance,
                            selection=dg.AssetSelection.checks(*live_freshness_checks), raise_on_error=False)
    return {evaluation.asset_key.to_user_string(): evaluation.passed
            for evaluation in result.get_asset_check_evaluations()}


def _observe(instance, key, updated: float) -> None:
    instance.report_runless_asset_event(dg.AssetObservation(
        asset_key=key, metadata={"dagster/last_updated_timestamp": dg.MetadataValue.timestamp(updated)}))


def test_live_series_are_fresh_while_their_data_is_new_and_stale_after():
    instance = dg.DagsterInstance.ephemeral()
    now = time.time()
    _observe(instance, live_trades.key, now - 30)
    _observe(instance, live_bars.key, now - 60)
    assert _evaluate(instance) == {"live_trades": True, "live_bars": True}
    # The sensor keeps observing a stream that stopped: the data's time, not the observation's, counts.
    _observe(instance, live_bars.key, now - LIVE_FRESHNESS.total_seconds() - 60)
    assert _evaluate(instance) == {"live_trades": True, "live_bars": False}

"""The history job (raw trades and klines -> minute bars -> checks) and its daily schedule for the newest complete day."""

import dagster as dg

from btc_assets.defs.history.assets import exchange_klines, minute_bars, raw_trades

history_job = dg.define_asset_job(
    "history_job", selection=dg.AssetSelection.assets(raw_trades, exchange_klines, minute_bars),
    description="Ingest a day of Binance trades and klines into HDFS, compute its minute bars with MapReduce and "
                "check them against the klines.")

# data.binance.vision publishes a day's file in the morning (UTC) of the next day; at 06:00 UTC
# the schedule requests the partition of the day before, the newest complete one.
history_schedule = dg.build_schedule_from_partitioned_job(history_job, hour_of_day=6, minute_of_hour=0)

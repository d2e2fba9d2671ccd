"""The stream's outputs as observable assets: Dagster records their health, the stream services produce them."""

import dagster as dg

live_trades = dg.AssetSpec(
    "live_trades", deps=["trade_topics"], group_name="stream", kinds={"spark", "influxdb"},
    description="Every live trade in InfluxDB (`trades`, tag symbol), written by the Spark Structured "
                "Streaming job from the Kafka trade topics. Observed by `stream_health_sensor`: Kafka lag "
                "behind the job's checkpoint, seconds since the job's last heartbeat.")

live_bars = dg.AssetSpec(
    "live_bars", deps=["trade_topics"], group_name="stream", kinds={"spark", "influxdb"},
    description="Event-time one-minute bars in InfluxDB (`bars_1m`), the same definitions as the "
                "MapReduce `minute_bars`. Observed by `stream_health_sensor`: time of the newest bar.")

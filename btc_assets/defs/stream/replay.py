"""A stored day replayed as the live stream (btc_assets.stream.replay), started from Dagster so the UI shows it."""

import dagster as dg

from btc_assets import config as settings
from btc_assets.defs.history.assets import daily_partitions
from btc_assets.defs.resources import InfluxResource, KafkaResource, MarketResource, StorageResource
from btc_assets.ml.models import markdown_image
from btc_assets.stream.replay import Replay, ReplayError, ReplayTargets


class ReplayConfig(dg.Config):
    symbol: str = ""  # the first of BTC_SYMBOLS when empty
    speed: float = 60.0  # times real time: 60 replays the day in 24 minutes


@dg.asset(partitions_def=daily_partitions, group_name="stream", kinds={"kafka", "spark", "influxdb"},
          deps=["raw_trades", "minute_bars"], pool="replay")
def stream_replay(context: dg.AssetExecutionContext, config: ReplayConfig, storage: StorageResource,
                  kafka: KafkaResource, influx: InfluxResource, market: MarketResource) -> dg.MaterializeResult:
    """The day's stored trades replayed through the Binance emulator at `speed` x real time, times shifted to now,
    into the producer, Kafka, the Spark job, the bars and the live predictions, as they run live, under names of
    their own: topic `BTC_REPLAY_TOPIC_TEMPLATE`, checkpoints `replay-*`, InfluxDB bucket `BTC_REPLAY_BUCKET`
    (the dashboards' `bucket` variable shows it).

    The run ends when every trade is in InfluxDB and the day is scored. Its metadata: trades landed, the live
    bars against the day's MapReduce bars, each model's skill over the day."""
    targets = ReplayTargets(
        bootstrap_servers=kafka.bootstrap_servers, partitions=kafka.partitions, replication=kafka.replication,
        influx_url=influx.url, influx_org=influx.org, write_token=influx.write_token, read_token=influx.read_token,
        admin_token=influx.admin_token, hdfs_url=storage.filesystem_url, webhdfs_url=storage.webhdfs_url,
        storage_root=storage.root, bucket=settings.get("BTC_REPLAY_BUCKET"),
        topic_template=settings.get("BTC_REPLAY_TOPIC_TEMPLATE"))
    try:
        symbol = settings.parse_symbols(config.symbol)[0] if config.symbol else market.symbol_list[0]
        report = Replay(storage.storage, targets, symbol, context.partition_key, config.speed,
                        log=context.log.info).run()
    except (ReplayError, ValueError) as error:
        raise dg.Failure(str(error)) from None
    evaluation = ({"evaluation": dg.MetadataValue.md(markdown_image(report.evaluation_png, "the replayed day"))}
                  if report.evaluation_png else {})
    return dg.MaterializeResult(metadata={
        "symbol": report.symbol, "speed": report.speed, "day_start": report.day_start,
        "trades": dg.MetadataValue.int(report.trades), "trades_landed": dg.MetadataValue.int(report.trades_landed),
        "trade_ids_match": report.trade_ids_match,
        "live_bars": dg.MetadataValue.int(report.live_bars),
        "bars_equal_mapreduce": dg.MetadataValue.int(report.bars_equal),
        "bar_differences": dg.MetadataValue.json(report.bar_differences),
        "predicted_minutes": dg.MetadataValue.json(report.predicted_minutes),
        "errors_written": dg.MetadataValue.json(report.errors_written),
        "skill": dg.MetadataValue.md(report.skill_markdown()),
        "model_metrics": dg.MetadataValue.json(report.skill),
        "wall_seconds": round(report.wall_seconds, 1),
        **evaluation,
    })


replay_job = dg.define_asset_job(
    "replay_job", selection=dg.AssetSelection.assets(stream_replay), partitions_def=daily_partitions,
    description="Replay a stored day as the live stream (`btc-pipeline replay --symbol S --date D --speed X`).")

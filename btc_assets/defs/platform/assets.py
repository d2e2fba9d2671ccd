"""Kafka topics and the InfluxDB bucket as assets: created if missing, described when materialized."""

import dagster as dg

from btc_assets.defs.resources import InfluxResource, KafkaResource, MarketResource
from btc_assets.contracts.schema import dlq_topic


@dg.asset(group_name="platform", kinds={"kafka"})
def trade_topics(context: dg.AssetExecutionContext, kafka: KafkaResource, market: MarketResource) -> dg.MaterializeResult:
    """The Kafka trade topic of every configured symbol and its dead-letter topic.

    Created with the configured partitions if missing (the broker's auto-creation is off, so a typo
    in a topic name fails loudly instead of creating a stray topic). Metadata: partitions and the
    number of records each topic holds.
    """
    described = {}
    topics = [kafka.topic(symbol) for symbol in market.symbol_list]
    created = kafka.ensure_trade_topics(topics)
    for topic in [name for topic in topics for name in (topic, dlq_topic(topic))]:
        offsets = kafka.end_offsets(topic)
        described[topic] = {"partitions": len(offsets), "records": sum(offsets.values()), "created": topic in created}
        context.log.info(f"{topic}: {'created' if topic in created else 'exists'}, {len(offsets)} partitions")
    return dg.MaterializeResult(metadata={
        "topics": dg.MetadataValue.json(described),
        "records": dg.MetadataValue.int(sum(item["records"] for item in described.values())),
    })


@dg.asset(group_name="platform", kinds={"influxdb"})
def influx_bucket(context: dg.AssetExecutionContext, influx: InfluxResource) -> dg.MaterializeResult:
    """The InfluxDB bucket that holds trades, minute bars, predictions and pipeline health.

    Created if missing (needs the all-access token); metadata lists the measurements it holds.
    """
    admin = influx.admin()
    try:
        bucket_id = admin.ensure_bucket(influx.bucket)
        measurements = [row["_value"] for row in admin.query(
            f'import "influxdata/influxdb/schema"\nschema.measurements(bucket: "{influx.bucket}")')]
    finally:
        admin.close()
    context.log.info(f"bucket {influx.bucket} ({bucket_id}): {measurements or 'empty'}")
    return dg.MaterializeResult(metadata={
        "bucket": influx.bucket, "bucket_id": bucket_id,
        "measurements": dg.MetadataValue.json(measurements),
    })

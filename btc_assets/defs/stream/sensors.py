"""Stream health: a sensor that measures the live path and requests a restart when it is down or stalled."""

import json
import time

import dagster as dg

from btc_assets.defs.resources import InfluxResource, KafkaResource, StorageResource, StreamResource
from btc_assets.defs.stream.assets import live_bars, live_trades
from btc_assets import config
from btc_assets.contracts import schema
from btc_assets.stream.health import measure


@dg.op
def restart_stream(context: dg.OpExecutionContext, stream: StreamResource) -> None:
    """Stop the Spark streaming job and start it again from its checkpoint (nothing is lost: replays
    of the last batch land on the same InfluxDB points)."""
    pid = stream.services().restart("spark-job")
    context.log.info(f"spark-job restarted, pid {pid}")


@dg.job(description="Restart the Spark Structured Streaming job (requested by stream_health_sensor).")
def restart_stream_job():
    restart_stream()


@dg.sensor(job=restart_stream_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def stream_health_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, storage: StorageResource,
                         influx: InfluxResource, stream: StreamResource):
    """Every minute: Kafka lag behind the Spark checkpoint and freshness of the Influx series, recorded as
    observations of `trade_topics`, `live_trades` and `live_bars`; a restart run when the job's heartbeat
    or its bars stall for longer than `stall_seconds` (at most one request per `cooldown_seconds`)."""
    topics = [kafka.topic(symbol) for symbol in config.symbols()]
    end_offsets = {topic: kafka.end_offsets(topic) for topic in topics}
    checkpoint = storage.storage.path(schema.checkpoint_dir("", stream.checkpoint_name).lstrip("/"))
    reader = influx.reader()
    try:
        health = measure(end_offsets=end_offsets, fs=storage.storage.fs, checkpoint=checkpoint, influx=reader)
    finally:
        reader.close()
    facts = {key: value for key, value in health.as_dict().items() if value is not None}
    events = [
        dg.AssetObservation(asset_key="trade_topics", metadata={
            "records": health.end_offsets,
            "by_topic": dg.MetadataValue.json({t: sum(p.values()) for t, p in end_offsets.items()})}),
        dg.AssetObservation(asset_key=live_trades.key, metadata=facts),
        dg.AssetObservation(asset_key=live_bars.key, metadata={
            key: facts[key] for key in ("last_bar_time", "seconds_since_bar") if key in facts}),
    ]
    problem = health.problem(stream.stall_seconds)
    cursor = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    if problem is None:
        return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor))
    if now - cursor.get("last_restart_request", 0) < stream.cooldown_seconds:
        return dg.SensorResult(asset_events=events, skip_reason=f"{problem}; restart already requested recently")
    context.log.warning(f"stream unhealthy: {problem}; requesting a restart")
    cursor["last_restart_request"] = now
    return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor),
                           run_requests=[dg.RunRequest(run_key=f"restart-{int(now)}", tags={"reason": problem[:200]})])

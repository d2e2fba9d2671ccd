"""Stream health: every component of the live path judged from the outside, reported as checks, restarted when down.

The producer, the WebSocket behind it, Kafka and the Spark job are each judged by ``btc_assets.stream.health``:

| component | healthy when | when not |
|---|---|---|
| producer | its pipeline_health heartbeat is younger than `stall_seconds` | restart the producer |
| WebSocket | the producer's newest trade is younger than `stall_seconds` | restart the producer (a new connection) |
| Kafka | its end offsets can be read | red checks, no restart (not a process this project runs in production) |
| Spark job | its heartbeat is fresh, and records waiting in Kafka mean new bars | restart the Spark job |

The verdicts land as asset check results on `live_trades` (`stream_healthy`) and `live_bars` (`bars_fresh`):
green, or red with the reason, in the UI. A restart is requested at most once per `cooldown_seconds` per component.
"""

import json
import time

import dagster as dg

from btc_assets import config
from btc_assets.defs.resources import InfluxResource, KafkaResource, MarketResource, StorageResource, StreamResource
from btc_assets.defs.stream.assets import live_bars, live_trades
from btc_assets.contracts import schema
from btc_assets.stream.health import StreamHealth, measure

COMPONENTS = ("producer", "spark-job")
STREAM_CHECK = "stream_healthy"  # on live_trades
BARS_CHECK = "bars_fresh"  # on live_bars


def sensor_interval_seconds() -> int:
    """How often the daemon evaluates `stream_health_sensor` (``BTC_STREAM_SENSOR_INTERVAL_SECONDS``)."""
    seconds = config.get_int("BTC_STREAM_SENSOR_INTERVAL_SECONDS")
    if seconds < 1:
        raise ValueError(f"BTC_STREAM_SENSOR_INTERVAL_SECONDS={seconds} must be at least 1 (seconds between the "
                         "stream health sensor's evaluations)")
    return seconds


class RestartConfig(dg.Config):
    component: str = "spark-job"  # "producer" or "spark-job"


@dg.op
def restart_stream(context: dg.OpExecutionContext, config: RestartConfig, stream: StreamResource) -> None:
    """Stop one stream service and start it again: the Spark job resumes from its checkpoint (a replayed batch
    lands on the same InfluxDB points), the producer from the last trade id in Kafka (gaps come from REST)."""
    if config.component not in COMPONENTS:
        raise dg.Failure(f"unknown stream component {config.component!r}: choose from {list(COMPONENTS)}")
    pid = stream.services().restart(config.component)
    context.log.info(f"{config.component} restarted, pid {pid}")


@dg.job(description="Restart a stream service, the producer or the Spark job (requested by stream_health_sensor).")
def restart_stream_job():
    restart_stream()


def judge(kafka: KafkaResource, storage: StorageResource, influx: InfluxResource, stream: StreamResource,
          market: MarketResource) -> tuple[StreamHealth | None, dict[str, dict[int, int]], dict[str, str]]:
    """(the measurements, Kafka's end offsets per topic, component -> why it is down); Kafka down is ``kafka``."""
    topics = [kafka.topic(symbol) for symbol in market.symbol_list]
    try:
        end_offsets = {topic: kafka.end_offsets(topic) for topic in topics}
    except Exception as error:  # noqa: BLE001 - an unreachable broker is a verdict, not a sensor crash
        return None, {}, {"kafka": f"Kafka at {kafka.bootstrap_servers} is unreachable: {error}"}
    checkpoint = storage.storage.path(schema.checkpoint_dir("", stream.checkpoint_name).lstrip("/"))
    reader = influx.reader()
    try:
        health = measure(end_offsets=end_offsets, fs=storage.storage.fs, checkpoint=checkpoint, influx=reader)
    finally:
        reader.close()
    return health, end_offsets, health.problems(stream.stall_seconds)


def check_results(health: StreamHealth | None, problems: dict[str, str]) -> list[dg.AssetCheckEvaluation]:
    facts = {key: value for key, value in (health.as_dict() if health else {}).items() if value is not None}
    stream_reasons = [f"{component}: {reason}" for component, reason in problems.items()]
    bar_reasons = [reason for component, reason in problems.items() if component in ("spark-job", "kafka")]
    return [
        dg.AssetCheckEvaluation(asset_key=live_trades.key, check_name=STREAM_CHECK, passed=not stream_reasons,
                                metadata={**facts, "problems": dg.MetadataValue.json(stream_reasons)},
                                description="; ".join(stream_reasons) or "producer, WebSocket, Kafka and Spark job healthy"),
        dg.AssetCheckEvaluation(asset_key=live_bars.key, check_name=BARS_CHECK, passed=not bar_reasons,
                                metadata={key: facts[key] for key in ("last_bar_time", "seconds_since_bar") if key in facts},
                                description="; ".join(bar_reasons) or "new bars keep coming"),
    ]


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(STREAM_CHECK, asset=live_trades.key,
                             description="Producer heartbeat, WebSocket freshness, Kafka and the Spark job's heartbeat and lag."),
           dg.AssetCheckSpec(BARS_CHECK, asset=live_bars.key,
                             description="New one-minute bars keep arriving while Kafka holds trades not read yet.")],
    can_subset=False)
def live_stream_checks(kafka: KafkaResource, storage: StorageResource, influx: InfluxResource, stream: StreamResource,
                       market: MarketResource):
    """The health sensor's verdicts, on demand (the sensor reports the same ones every minute)."""
    health, _, problems = judge(kafka, storage, influx, stream, market)
    for evaluation in check_results(health, problems):
        yield dg.AssetCheckResult(asset_key=evaluation.asset_key, check_name=evaluation.check_name,
                                  passed=evaluation.passed, metadata=evaluation.metadata,
                                  description=evaluation.description)


def _updated(epoch_seconds: float | None) -> dict:
    """When the series last got data (the freshness checks read it), not when it was observed."""
    return {} if epoch_seconds is None else {"dagster/last_updated_timestamp": dg.MetadataValue.timestamp(epoch_seconds)}


@dg.sensor(job=restart_stream_job, minimum_interval_seconds=sensor_interval_seconds(),
           default_status=dg.DefaultSensorStatus.STOPPED)
def stream_health_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource, storage: StorageResource,
                         influx: InfluxResource, stream: StreamResource, market: MarketResource):
    """Every `BTC_STREAM_SENSOR_INTERVAL_SECONDS` (a minute by default): the producer, the WebSocket, Kafka and
    the Spark job judged (checks on `live_trades` and `live_bars`, observations of Kafka lag and freshness); a
    restart run for each component that is down or stalled for longer than `stall_seconds`, at most one per
    component per `cooldown_seconds`."""
    health, end_offsets, problems = judge(kafka, storage, influx, stream, market)
    now = time.time()
    events: list = check_results(health, problems)
    if health is not None:
        facts = {key: value for key, value in health.as_dict().items() if value is not None}
        events += [
            dg.AssetObservation(asset_key="trade_topics", metadata={
                "records": health.end_offsets,
                "by_topic": dg.MetadataValue.json({t: sum(p.values()) for t, p in end_offsets.items()})}),
            dg.AssetObservation(asset_key=live_trades.key, metadata={**facts, **_updated(
                None if health.newest_trade_age is None else now - health.newest_trade_age)}),
            dg.AssetObservation(asset_key=live_bars.key, metadata={
                **{key: facts[key] for key in ("last_bar_time", "seconds_since_bar") if key in facts},
                **_updated(None if health.seconds_since_bar is None else now - health.seconds_since_bar)}),
        ]
    cursor = json.loads(context.cursor) if context.cursor else {}
    requests, waiting = [], []
    for component in COMPONENTS:
        if component not in problems:
            continue
        if now - cursor.get(f"last_restart_{component}", 0) < stream.cooldown_seconds:
            waiting.append(f"{component}: {problems[component]}; restart already requested recently")
            continue
        context.log.warning(f"{component} unhealthy: {problems[component]}; requesting a restart")
        cursor[f"last_restart_{component}"] = now
        requests.append(dg.RunRequest(
            run_key=f"restart-{component}-{int(now)}", tags={"reason": problems[component][:200], "component": component},
            run_config={"ops": {"restart_stream": {"config": {"component": component}}}}))
    if not requests and (waiting or "kafka" in problems):
        return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor),
                               skip_reason="; ".join(waiting + ([problems["kafka"]] if "kafka" in problems else [])))
    return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor), run_requests=requests)

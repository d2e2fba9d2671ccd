"""The stream health sensor against the real stack: a healthy stream is observed with its lag; a stopped one gets a restart run."""

from __future__ import annotations

import os
import time
import uuid

import dagster as dg

from btc_assets.contracts import points
from btc_assets.stream.health import PRODUCER_COMPONENT
from btc_assets.defs.resources import InfluxResource, KafkaResource, MarketResource, StorageResource, StreamResource
from btc_assets.defs.stream.sensors import stream_health_sensor
from btc_assets.stream import spark_job
from btc_assets_tests.stream.spark_fixtures import (TradeFeed, market_slice, new_case, trade_count, trade_messages,
                                                    wait_for)


def sensor_resources(case, stall_seconds: float) -> dict:
    env = os.environ
    return {
        "kafka": KafkaResource(bootstrap_servers=case.bootstrap, topic_template=case.settings.topic_template),
        "storage": StorageResource(filesystem_url=env["BTC_HDFS_URL"], webhdfs_url=env["BTC_WEBHDFS_URL"],
                                   root=case.settings.checkpoint_root.removeprefix(env["BTC_HDFS_URL"])),
        "influx": InfluxResource(url=env["BTC_INFLUX_URL"], org=env["BTC_INFLUX_ORG"], bucket=case.settings.influx_bucket,
                                 read_token=env["BTC_INFLUX_READ_TOKEN"]),
        "stream": StreamResource(stall_seconds=stall_seconds, cooldown_seconds=600),
        "market": MarketResource(symbols=",".join(case.settings.symbols)),
    }


def evaluate(resources: dict, instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
    return stream_health_sensor(context)


def observation(result, key: str) -> dict:
    (event,) = [event for event in result.asset_events
                if isinstance(event, dg.AssetObservation) and event.asset_key == dg.AssetKey(key)]
    return {name: value.value for name, value in event.metadata.items()}


def producer_heartbeat(case, newest_trade_age_s: float = 1.0) -> None:
    """A pipeline_health point as the producer writes one, now (a producer this test plays)."""
    fields = {"messages_received_per_s": 300.0, "messages_sent_per_s": 300.0, "reconnects": 0, "gaps_filled": 0,
              "gaps_unfillable": 0, "newest_trade_age_s": newest_trade_age_s}
    case.admin.write_lines([points.health_line(PRODUCER_COMPONENT, fields, time.time_ns())])


def requested(result) -> dict[str, str]:
    return {request.tags["component"]: request.tags["reason"] for request in result.run_requests}


def check(result, name: str):
    (evaluation,) = [event for event in result.asset_events
                     if isinstance(event, dg.AssetCheckEvaluation) and event.check_name == name]
    return evaluation


def test_healthy_stream_is_observed_and_a_stopped_one_restarted(stack, spark, monkeypatch):
    monkeypatch.setenv("BTC_SYMBOLS", "BTCUSDT")
    case = new_case(uuid.uuid4().hex[:10], ("BTCUSDT",))
    market = market_slice(("BTCUSDT",), 3_000, seed=21, day_size=400_000)
    job = spark_job.start_job(case.settings, spark)
    instance = dg.DagsterInstance.ephemeral()
    try:
        TradeFeed(case.bootstrap, trade_messages(market, case.settings.topic_template)).start().join()
        wait_for(lambda: trade_count(case.admin) >= market.count, 180, "trades in InfluxDB")
        time.sleep(3 * case.settings.health_seconds)  # a heartbeat after the last batch

        producer_heartbeat(case)
        healthy = evaluate(sensor_resources(case, stall_seconds=60), instance)
        assert not healthy.run_requests
        assert check(healthy, "stream_healthy").passed and check(healthy, "bars_fresh").passed
        trades = observation(healthy, "live_trades")
        assert trades["end_offsets"] == market.count
        assert trades["lag"] == 0
        assert trades["seconds_since_health"] < 60 and trades["seconds_since_producer"] < 60
        assert observation(healthy, "trade_topics")["records"] == market.count
    finally:
        job.stop()

    time.sleep(4)  # no Spark heartbeat any more: past a 3-second stall threshold; the producer still beats
    producer_heartbeat(case)
    stopped = evaluate(sensor_resources(case, stall_seconds=3), instance)
    assert list(requested(stopped)) == ["spark-job"]
    assert "heartbeat" in requested(stopped)["spark-job"]
    assert stopped.run_requests[0].run_config == {"ops": {"restart_stream": {"config": {"component": "spark-job"}}}}
    assert not check(stopped, "stream_healthy").passed and "spark-job" in check(stopped, "stream_healthy").description
    producer_heartbeat(case)
    again = evaluate(sensor_resources(case, stall_seconds=3), instance, cursor=stopped.cursor)
    assert not again.run_requests  # one request per cooldown, not one a minute

    # The producer: its heartbeat stops (a dead process), or it beats but no trade comes (a silent WebSocket).
    time.sleep(11)  # no producer heartbeat since the last one: past a 10-second stall threshold
    dead = evaluate(sensor_resources(case, stall_seconds=10), instance, cursor=stopped.cursor)
    assert "no producer heartbeat" in requested(dead)["producer"]
    producer_heartbeat(case, newest_trade_age_s=120.0)
    silent = evaluate(sensor_resources(case, stall_seconds=10), instance)
    assert "WebSocket is silent" in requested(silent)["producer"]
    for step in case.cleanup:
        step()


def test_a_stream_catching_up_on_a_backlog_is_not_stalled():
    """Lag and an old newest bar mean a stall only when the bars query has stopped committing batches too:
    a job working through a backlog writes bars of past minutes."""
    from btc_assets.stream.health import StreamHealth

    def health(bars_batch_age):
        return StreamHealth(end_offsets=50_000, processed_offsets=30_000, lag=20_000, seconds_since_bar=400.0,
                            seconds_since_health=3.0, last_bar_time="2026-12-02T00:00:00Z",
                            seconds_since_producer=2.0, newest_trade_age=1.0, seconds_since_bars_batch=bars_batch_age)

    assert health(5.0).problems(45) == {}
    assert "records waiting in Kafka" in health(200.0).problems(45)["spark-job"]
    assert "records waiting in Kafka" in health(None).problems(45)["spark-job"]
    caught_up = StreamHealth(end_offsets=50_000, processed_offsets=50_000, lag=0, seconds_since_bar=400.0,
                             seconds_since_health=3.0, last_bar_time=None, seconds_since_bars_batch=None)
    assert "spark-job" not in caught_up.problems(45)

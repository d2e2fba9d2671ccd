"""The live path on the cluster topology, through one node death after another.

Two symbols from the Binance emulator (``RATE`` trades/s together) go through the real producer into the
3-node Kafka (replication 3, ``min.insync.replicas`` 2, acks=all), and the Spark streaming job runs on the
standalone master (2 workers) with its checkpoints on the 3-DataNode HDFS, into InfluxDB. While it runs:

1. the broker leading BTCUSDT's partition is SIGKILLed and restarted ``BROKER_DOWN_S`` later (it rejoins
   every in-sync replica set);
2. one DataNode is SIGKILLed (brought back only after the test);
3. the Spark worker running the job's executor is SIGKILLed with it, and restarted;
4. the Spark driver is SIGKILLed with its JVM, and started again, as the health sensor's
   ``restart_stream_job`` would (the daemon-supervision test shows that sensor at work).

Then every trade id is in InfluxDB exactly once, the streamed bars equal ``mapper | sort | reducer`` over
the same trades, and the test prints the longest time without new bars during the broker failover
(target: under 30 s).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from kafka.admin import ConfigResource, ConfigResourceType

from btc_assets.clients import kafka as kafka_io
from btc_assets.contracts import schema
from btc_assets_tests.cluster.conftest import kill_tree, leader_of, topic_partitions
from btc_assets_tests.stream.helpers import producer_settings, read_topic, running_producer
from btc_assets_tests.stream.spark_fixtures import (JobProcess, bar_differences, influx_bars, influx_for,
                                                    mapreduce_csv_bars, parse_bar_line, trade_count, trade_points,
                                                    wait_for, write_events_csv)
from btc_testkit.binance_emulator import BinanceEmulator

SYMBOLS = ("BTCUSDT", "ETHUSDT")
RATE = 1_000  # trades per second, both symbols together
BROKER_DOWN_S = 30  # about twice the longest failover gap measured (12.6-15.9 s), so a stall shows
FAILOVER_TARGET_S = 30


class BarWatch:
    """Polls InfluxDB every second for the bars' trade total: the times it grew are when new bars landed."""

    def __init__(self, influx):
        self.influx = influx
        self.changes: list[float] = []
        self._last = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bar-watch", daemon=True)

    def __enter__(self) -> BarWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _total(self) -> int | None:
        try:
            rows = self.influx.query(f'from(bucket: "{self.influx.bucket}") |> range(start: -1h)'
                                     f' |> filter(fn: (r) => r._measurement == "{schema.BARS_MEASUREMENT}"'
                                     ' and r._field == "trades") |> group() |> sum()')
        except Exception:  # noqa: BLE001 - a slow answer is a missed poll, not a failure
            return None
        return int(rows[0]["_value"]) if rows else 0

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            total = self._total()
            if total is not None and total != self._last:
                self._last = total
                self.changes.append(time.monotonic())

    def flowing_since(self, since: float, batches: int = 2) -> bool:
        """Whether new bars landed at least ``batches`` times after ``since``."""
        return sum(1 for moment in self.changes if moment > since) >= batches

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in [start, end] without new bars."""
        moments = [start, *(moment for moment in self.changes if start < moment < end), end]
        return max(later - earlier for earlier, later in zip(moments, moments[1:]))


def topic_replicas(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """Per partition: (replicas, in-sync replicas)."""
    return {p["partition_index"]: (len(p["replica_nodes"]), len(p["isr_nodes"]))
            for p in topic_partitions(bootstrap, topic)}


def min_insync_replicas(bootstrap: str, topic: str) -> str:
    client = kafka_io.admin(bootstrap)
    try:
        configs = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        (by_name,) = [entries for kind in configs.values() for entries in kind.values()]
        return by_name["min.insync.replicas"]["value"]
    finally:
        client.close()


def executor_worker(spark, app_name: str) -> int:
    """The index of the worker running an executor of the active application ``app_name``."""
    state = spark.master_json()
    (app,) = [app for app in state["activeapps"] if app["name"] == app_name]
    busy = {worker["port"] for worker in state["workers"] if worker["state"] == "ALIVE" and worker["coresused"] > 0}
    for index in range(1, len(spark.workers) + 1):
        if spark.worker_ports(index)[0] in busy:
            return index
    raise AssertionError(f"no worker runs {app['id']}'s executors: {state['workers']}")


def test_the_stream_on_the_cluster_survives_a_broker_a_datanode_a_worker_and_the_driver_dying(
        stack, kafka_cluster, hadoop_cluster, spark_cluster, unique, tmp_path):
    bootstrap = kafka_cluster.bootstrap_servers
    template = "{symbol}-CLUSTER-" + unique
    topics = [schema.trade_topic(symbol, template) for symbol in SYMBOLS]
    kafka_io.ensure_trade_topics(bootstrap, topics, partitions=schema.DEFAULT_PARTITIONS, replication=3)
    assert topic_replicas(bootstrap, topics[0]) == {partition: (3, 3) for partition in range(schema.DEFAULT_PARTITIONS)}
    assert min_insync_replicas(bootstrap, topics[0]) == "2"
    client = kafka_io.admin(bootstrap)
    try:
        assert {broker["broker_id"] for broker in client.describe_cluster()["brokers"]} == {1, 2, 3}
    finally:
        client.close()
    bucket = f"cluster-{unique}"
    admin = influx_for(bucket)
    bucket_id = admin.ensure_bucket(bucket)
    # The cluster profile by configuration alone: the settings compose passes, pointed at the topology.
    env = {**os.environ, **hadoop_cluster.env(), **spark_cluster.env(),
           "BTC_PROFILE": "cluster", "BTC_SYMBOLS": ",".join(SYMBOLS),
           "BTC_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "BTC_KAFKA_TOPIC_TEMPLATE": template,
           "BTC_KAFKA_REPLICATION": "3", "BTC_INFLUX_BUCKET": bucket,
           "BTC_STORAGE_ROOT": f"/tests/stream-cluster/{unique}", "BTC_SPARK_DRIVER_HOST": "127.0.0.1",
           "BTC_SPARK_EXECUTOR_MEMORY": "1g", "BTC_STREAM_TRIGGER": "1 second",
           "BTC_STREAM_BARS_TRIGGER": "2 seconds", "BTC_STREAM_HEALTH_SECONDS": "2"}
    job = JobProcess(env, tmp_path / "spark-job.log")
    datanode = hadoop_cluster.daemon("datanode", hadoop_cluster.topology.datanodes)
    report: dict[str, object] = {}
    try:
        with BinanceEmulator(SYMBOLS, rate=RATE, seed=31) as binance, \
                running_producer(producer_settings(binance, bootstrap, template, replication=3)) as producer, \
                BarWatch(admin) as bars:
            started = time.monotonic()
            job.start()
            wait_for(lambda: bars.flowing_since(started, 3), timeout=300, what="bars from the job on the cluster",
                     state=job.log_tail)
            report["first bars after"] = f"{time.monotonic() - started:.0f}s"

            # 1. The broker leading BTCUSDT's partition.
            partition = next(p for p, end in kafka_io.end_offsets(bootstrap, topics[0]).items() if end > 0)
            victim = kafka_cluster.node(leader_of(bootstrap, topics[0], partition))
            killed = time.monotonic()
            victim.process.stop(kill=True)
            time.sleep(BROKER_DOWN_S)
            victim.start()
            wait_for(lambda: bars.flowing_since(killed + BROKER_DOWN_S, 3), timeout=120,
                     what="bars after the broker came back", state=job.log_tail)
            gap = bars.longest_gap(killed, time.monotonic())
            report["broker failover: longest time without new bars"] = f"{gap:.1f}s (target < {FAILOVER_TARGET_S}s)"
            print(f"\n[stream cluster] broker {victim.node_id} (leader of {topics[0]}/{partition}) SIGKILLed, "
                  f"restarted after {BROKER_DOWN_S}s: longest time without new bars {gap:.1f}s")
            assert gap < BROKER_DOWN_S, "the stream stalled until the killed broker came back"
            # The restarted broker caught up: every partition back to 3 in-sync replicas.
            wait_for(lambda: all(isr == 3 for _, isr in topic_replicas(bootstrap, topics[0]).values()), timeout=60,
                     what="3 in-sync replicas again", state=lambda: topic_replicas(bootstrap, topics[0]))

            # 2. A DataNode, under the checkpoints' writes.
            moment = time.monotonic()
            datanode.stop(kill=True)
            wait_for(lambda: bars.flowing_since(moment + 15, 3), timeout=120, what="bars without a DataNode",
                     state=job.log_tail)
            report["DataNode down: longest time without new bars"] = \
                f"{bars.longest_gap(moment, time.monotonic()):.1f}s"

            # 3. The Spark worker running the executor, with it.
            index = executor_worker(spark_cluster, "btc-spark-stream")
            moment = time.monotonic()
            kill_tree(spark_cluster.workers[index - 1].pid())
            wait_for(lambda: bars.flowing_since(moment + 10, 3), timeout=180, what="bars after the worker died",
                     state=job.log_tail)
            spark_cluster.start_worker(index)
            wait_for(lambda: len(spark_cluster.alive_workers()) == len(spark_cluster.workers), timeout=120,
                     what="the worker back")
            report["worker down: longest time without new bars"] = \
                f"{bars.longest_gap(moment, time.monotonic()):.1f}s"

            # 4. The driver (Python and its JVM), started again on its HDFS checkpoints.
            moment = time.monotonic()
            job.kill()
            time.sleep(2)
            job.start()
            wait_for(lambda: bars.flowing_since(moment + 10, 3), timeout=300, what="bars after the driver restart",
                     state=job.log_tail)
            report["driver restart: longest time without new bars"] = \
                f"{bars.longest_gap(moment, time.monotonic()):.1f}s"

            binance.pause()
            last = {symbol: binance.generated_ids(symbol)[-1] for symbol in SYMBOLS}
            wait_for(lambda: all(producer.stats()["last_trade_id"].get(s) == last[s] for s in SYMBOLS), timeout=120,
                     what="the producer caught up", state=lambda: (last, producer.stats(), binance.stats()))
            expected = {symbol: binance.generated_ids(symbol) for symbol in SYMBOLS}
        total = sum(len(ids) for ids in expected.values())
        wait_for(lambda: trade_count(admin) >= total, timeout=300, interval=2,
                 what=f"{total:,} trades in InfluxDB", state=job.log_tail)
        # The producer has stopped, so Kafka holds the final trades: MapReduce's bars of them are the reference.
        # A clean stop ends after the running micro-batches and leaves what a query has not read yet in Kafka for
        # the next start, so the job stops only once the bars query has caught up with the trades query too.
        reference, kafka_copies = {}, 0
        for symbol, topic in zip(SYMBOLS, topics):
            events = {}
            records = read_topic(bootstrap, topic)
            for record in records:
                event = json.loads(record.value)
                events[event[schema.EVENT_TRADE_ID]] = event
            kafka_copies += len(records) - len(events)
            csv_path = write_events_csv([events[key] for key in sorted(events)], tmp_path / f"{symbol}.csv")
            reference[symbol] = [parse_bar_line(line) for line in mapreduce_csv_bars(Path(csv_path))]
        wait_for(lambda: not bar_differences(influx_bars(admin), reference), timeout=120, interval=2,
                 what="bars equal to MapReduce's", state=lambda: (bar_differences(influx_bars(admin), reference)[:5],
                                                                  job.log_tail()))
        assert job.terminate() == 0, job.log_tail()
    finally:
        job.kill()
        hadoop_cluster.start_daemon("datanode", hadoop_cluster.topology.datanodes)  # the next tests have all three
        wait_for(lambda: hadoop_cluster.live_datanodes() == hadoop_cluster.topology.datanodes, timeout=120,
                 what="the DataNode back")

    points = trade_points(admin)
    for symbol in SYMBOLS:
        ids = [trade_id for trade_id, _ in points.get(symbol, [])]
        assert len(ids) == len(set(ids)), f"{symbol}: {len(ids) - len(set(ids))} trades twice"
        assert sorted(ids) == expected[symbol]  # every trade the market made, once

    # The bars: what MapReduce makes of the same trades (as Kafka has them, once each).
    problems = bar_differences(influx_bars(admin), reference)
    assert not problems, problems[:10]
    admin.client.buckets_api().delete_bucket(bucket_id)
    admin.close()
    print(f"[stream cluster] {total:,} trades of {len(SYMBOLS)} symbols at {RATE}/s, "
          f"{sum(len(b) for b in reference.values())} bars equal to MapReduce's, {kafka_copies} second copies in "
          "Kafka; " +
          "; ".join(f"{key}: {value}" for key, value in report.items()))

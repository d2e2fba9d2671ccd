"""Grafana as code: the committed dashboards are current, and every panel's Flux query returns its fields from the real InfluxDB."""

from __future__ import annotations

import json
import time

import pytest

from btc_assets.contracts import bars, points, schema

from btc_assets import dashboards

from btc_testkit import generator
from btc_assets.clients.influx import Influx

DAY = "2025-04-01"


def test_committed_dashboards_are_generated_from_code():
    for uid in dashboards.DASHBOARDS:
        committed = (dashboards.dashboard_dir() / f"{uid}.json").read_text()
        assert committed == dashboards.render(uid), f"run `btc-pipeline dashboards` to refresh {uid}.json"
        for panel in json.loads(committed)["panels"]:
            assert panel["datasource"]["uid"] == "btc-influxdb" and panel["btcFields"]


@pytest.fixture(scope="module")
def panel_bucket(resources):
    """A bucket holding two hours of trades, their minute bars, predictions of them and pipeline-health points."""
    influx = resources["influx"]
    admin = influx.admin()
    name = f"grafana-test-{int(time.time())}"
    bucket_id = admin.ensure_bucket(name)
    day = generator.generate_day("BTCUSDT", DAY, seed=3, trades=20_000)
    start_ms = int(day.time_ms[0])
    lines = [points.trade_line("BTCUSDT", trade.trade_id, trade.price, trade.qty,
                               schema.trade_time_to_ms(trade.time), trade.is_buyer_maker)
             for trade in day.trades()]
    minute_bars = [dict(zip(schema.BAR_FIELDS, bar)) for bar in bars.bars_from_trades(day.trades())]
    lines += [points.bar_line("BTCUSDT", bar) for bar in minute_bars]
    # Each model's prediction of every bar's close from the bar before (the last one not traded yet).
    for before, bar in zip(minute_bars, minute_bars[1:] + [None]):
        minute_ns = points.minute_start_ns(before[schema.MINUTE]) + 60_000_000_000
        for number, model in enumerate(schema.MODELS):
            lines.append(points.prediction_line("BTCUSDT", model, minute_ns, float(before["close"]) * (1 + number * 1e-4),
                                                float(bar["close"]) if bar else None))
    for second in range(0, 600, 10):
        for component in ("spark_trades", "spark_bars"):
            lines.append(points.health_line(component, {
                "input_rows_per_second": 100.0 + second, "processed_rows_per_second": 110.0 + second,
                "batch_duration_ms": 250 + second, "num_input_rows": 1000, "lag": second % 7,
                "restarts": 0, "errors": 0}, (start_ms + second * 1000) * 1_000_000))
    writer = Influx(influx.url, influx.org, name, influx.write_token)
    writer.write_lines(lines)
    writer.close()
    yield name, start_ms
    admin.client.buckets_api().delete_bucket(bucket_id)
    admin.close()


@pytest.mark.parametrize("uid", list(dashboards.DASHBOARDS))
def test_every_panel_query_returns_its_fields(resources, panel_bucket, uid):
    bucket, start_ms = panel_bucket
    influx = resources["influx"]
    reader = Influx(influx.url, influx.org, bucket, influx.read_token)  # Grafana's token
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_ms / 1000 - 60))
    stop = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_ms / 1000 + 86_400))
    queries = dashboards.panel_queries(json.loads(dashboards.render(uid)), bucket=bucket, symbol="BTCUSDT",
                                       start=start, stop=stop)
    for title, flux, fields in queries:
        if "now()" in flux:  # "seconds since the last bar": needs data near now, checked separately below
            continue
        rows = reader.query(flux)
        assert rows, f"{uid} / {title}: no rows"
        assert {row["_field"] for row in rows} == set(fields), f"{uid} / {title}"
        assert all(row["_value"] is not None for row in rows), f"{uid} / {title}"
    reader.close()


def test_freshness_panel_reports_seconds_since_the_last_bar(resources, panel_bucket):
    bucket, _ = panel_bucket
    influx = resources["influx"]
    now_minute = time.strftime(schema.MINUTE_FORMAT, time.gmtime(time.time() - 120))
    bar = dict.fromkeys(schema.BAR_FIELDS, 1.0) | {schema.MINUTE: now_minute, "trades": 1,
                                                   "first_trade_id": 1, "last_trade_id": 1}
    writer = Influx(influx.url, influx.org, bucket, influx.write_token)
    writer.write_lines([points.bar_line("ETHUSDT", bar)])
    writer.close()
    reader = Influx(influx.url, influx.org, bucket, influx.read_token)
    (title, flux, _), = [query for query in dashboards.panel_queries(
        json.loads(dashboards.render("btc-pipeline-health")), bucket=bucket, symbol="BTCUSDT",
        start="-1h", stop="now()") if "now()" in query[1] and "since" in query[0]]
    rows = reader.query(flux)
    assert len(rows) == 1 and 120 <= rows[0]["_value"] < 400, title
    reader.close()

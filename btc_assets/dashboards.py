"""Grafana dashboards as code: every panel's Flux query built from the schema's names.

`btc-pipeline dashboards` writes them to `grafana/dashboards/*.json` (provisioned by
`grafana/provisioning/dashboards/btc.yaml`); a test checks the committed files are current and runs
every panel's query against the real InfluxDB. Each panel records the fields it shows
(``btcFields``), which is what the test expects back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from btc_assets import config
from btc_assets.contracts import schema

DATASOURCE = {"type": "influxdb", "uid": "btc-influxdb"}


@dataclass(frozen=True)
class Panel:
    title: str
    flux: str
    fields: tuple[str, ...]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12


def _range(measurement: str, fields: tuple[str, ...], *, symbol: bool = True) -> str:
    wanted = " or ".join(f'r._field == "{name}"' for name in fields)
    symbol_filter = f' and r.{schema.SYMBOL_TAG} == "${{symbol}}"' if symbol else ""
    return (f'from(bucket: "${{bucket}}")\n'
            f"  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
            f'  |> filter(fn: (r) => r._measurement == "{measurement}"{symbol_filter})\n'
            f"  |> filter(fn: (r) => {wanted})\n")


def bars_panel(title: str, fields: tuple[str, ...], unit: str, fn: str = "last", scale: str = "",
               description: str = "") -> Panel:
    flux = _range(schema.BARS_MEASUREMENT, fields)
    if scale:
        flux += f"  |> map(fn: (r) => ({{r with _value: float(v: r._value) {scale}}}))\n"
    flux += f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)"
    return Panel(title, flux, fields, unit, description=description)


def market_dashboard() -> list[Panel]:
    return [
        bars_panel("Price (close) and VWAP", ("close", "vwap"), "currencyUSD",
                   description="Minute bars from the stream: close = price of the minute's last trade id"),
        bars_panel("Trades per second", ("trades",), "ops", fn="mean", scale="/ 60.0",
                   description="Trades in each minute bar / 60"),
        bars_panel("Volume (BTC) per minute", ("volume", "taker_buy_volume"), "short", fn="sum"),
        bars_panel("Quote volume (USDT) per minute", ("quote_volume",), "currencyUSD", fn="sum"),
        bars_panel("VWAP vs mean trade price", ("vwap", "avg_price"), "currencyUSD"),
        bars_panel("Maker ratio", ("maker_ratio",), "percentunit", fn="mean",
                   description="Share of trades whose buyer was the maker"),
        Panel("Last trade price", _range(schema.TRADES_MEASUREMENT, ("price",)) + "  |> last()",
              ("price",), "currencyUSD", kind="stat", width=6),
        Panel("Trades stored (range)", _range(schema.TRADES_MEASUREMENT, ("trade_id",))
              + "  |> count()", ("trade_id",), "short", kind="stat", width=6),
    ]


def _health(title: str, fields: tuple[str, ...], unit: str, fn: str = "mean") -> Panel:
    flux = (_range(schema.HEALTH_MEASUREMENT, fields, symbol=False)
            + f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)")
    return Panel(title, flux, fields, unit)


HEALTH_FIELDS = {
    "rates": ("input_rows_per_second", "processed_rows_per_second"),
    "lag": ("lag",),
    "batch": ("batch_duration_ms",),
    "errors": ("errors", "restarts"),
}


def health_dashboard() -> list[Panel]:
    return [
        _health("Input vs processed rows/s (per component)", HEALTH_FIELDS["rates"], "ops"),
        _health("Kafka lag (records not yet processed)", HEALTH_FIELDS["lag"], "short", fn="last"),
        _health("Micro-batch duration", HEALTH_FIELDS["batch"], "ms", fn="max"),
        _health("Errors and restarts", HEALTH_FIELDS["errors"], "short", fn="max"),
        Panel("Seconds since the last minute bar",
              _range(schema.BARS_MEASUREMENT, ("trades",), symbol=False)
              + "  |> group()\n  |> last()\n"
              + "  |> map(fn: (r) => ({r with _value: float(v: uint(v: now()) - uint(v: r._time)) / 1000000000.0}))",
              ("trades",), "s", kind="stat", width=6),
    ]


PREDICTED, ACTUAL, ERROR = schema.PREDICTION_FIELDS
ROLLING_ERROR_WINDOW = "30m"


def _errors(transform: str) -> str:
    """The stored prediction errors of every model, squared or made absolute by ``transform``."""
    return ('import "math"\n' + _range(schema.PREDICTIONS_MEASUREMENT, (ERROR,))
            + f"  |> map(fn: (r) => ({{r with _value: {transform}}}))\n")


def predictions_dashboard() -> list[Panel]:
    persistence = schema.MODELS[-1]
    return [
        Panel("Next-minute close: actual vs each model",
              _range(schema.PREDICTIONS_MEASUREMENT, (PREDICTED, ACTUAL))
              # The actual close is stored beside every model's prediction: show it once.
              + f'  |> filter(fn: (r) => r._field == "{PREDICTED}" or r.{schema.MODEL_TAG} == "{persistence}")\n'
              + "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)",
              (PREDICTED, ACTUAL), "currencyUSD", width=24,
              description="Each model's price for a minute, predicted from the bars before it, and the close "
                          f"that minute actually had ({ACTUAL} of the {persistence} series)"),
        Panel(f"Rolling RMSE per model ({ROLLING_ERROR_WINDOW})",
              _errors("r._value * r._value")
              + f"  |> timedMovingAverage(every: 1m, period: {ROLLING_ERROR_WINDOW})\n"
              + "  |> map(fn: (r) => ({r with _value: math.sqrt(x: r._value)}))",
              (ERROR,), "currencyUSD",
              description=f"Root mean squared error (predicted - actual) of the last {ROLLING_ERROR_WINDOW}: "
                          f"below {persistence}'s line a model beats repeating the last close"),
        Panel("Absolute error per minute", _errors("math.abs(x: r._value)")
              + "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)",
              (ERROR,), "currencyUSD"),
        Panel("Latest forecast per model", _range(schema.PREDICTIONS_MEASUREMENT, (PREDICTED,)) + "  |> last()",
              (PREDICTED,), "currencyUSD", kind="stat", width=24,
              description="The price each model expects for the minute trading now"),
    ]


DASHBOARDS = {
    "btc-market": ("BTC market (live)", market_dashboard),
    "btc-pipeline-health": ("BTC pipeline health", health_dashboard),
    "btc-predictions": ("BTC price predictions (live)", predictions_dashboard),
}


def _panel_json(panel: Panel, number: int, x: int, y: int) -> dict:
    return {
        "id": number, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [{"refId": "A", "datasource": DATASOURCE, "query": panel.flux}],
        "btcFields": list(panel.fields),
    }


def dashboard_json(uid: str) -> dict:
    title, build = DASHBOARDS[uid]
    panels, x, y = [], 0, 0
    for number, panel in enumerate(build(), start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append(_panel_json(panel, number, x, y))
        x += panel.width
    return {
        "uid": uid, "title": title, "tags": ["btc-pipeline"], "timezone": "utc", "schemaVersion": 39,
        "refresh": "10s", "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [
            # The live bucket, or the replay's (btc-pipeline replay): its times start at the replay's start.
            {"name": "bucket", "type": "custom", "query": f"{schema.DEFAULT_BUCKET},{config.default('BTC_REPLAY_BUCKET')}",
             "current": {"text": schema.DEFAULT_BUCKET, "value": schema.DEFAULT_BUCKET}},
            {"name": "symbol", "type": "custom", "query": schema.DEFAULT_SYMBOL,
             "current": {"text": schema.DEFAULT_SYMBOL, "value": schema.DEFAULT_SYMBOL}},
        ]},
        "panels": panels,
    }


def render(uid: str) -> str:
    return json.dumps(dashboard_json(uid), indent=2) + "\n"


def write_all(directory: Path | None = None) -> list[Path]:
    directory = directory or dashboard_dir()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for uid in DASHBOARDS:
        path = directory / f"{uid}.json"
        path.write_text(render(uid))
        written.append(path)
    return written


def panel_queries(dashboard: dict, *, bucket: str, symbol: str, start: str, stop: str,
                  window: str = "1m") -> list[tuple[str, str, list[str]]]:
    """(title, runnable Flux, fields) of every panel, with Grafana's variables filled in as Grafana would."""
    out = []
    for panel in dashboard["panels"]:
        flux = panel["targets"][0]["query"]
        flux = (flux.replace("${bucket}", bucket).replace("${symbol}", symbol)
                .replace("v.timeRangeStart", start).replace("v.timeRangeStop", stop)
                .replace("v.windowPeriod", window))
        out.append((panel["title"], flux, panel["btcFields"]))
    return out


def dashboard_dir() -> Path:
    """Where the provisioned dashboards live: ``grafana/dashboards`` of ``BTC_DATA_DIR``."""
    return config.grafana_dir() / "dashboards"

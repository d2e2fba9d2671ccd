"""Live price predictions: the newest minute bars in InfluxDB -> every saved model -> ``price_predictions``.

    bars = read_live_bars(reader, ["BTCUSDT"], minutes=110)      # bars_1m, one row per (symbol, minute)
    ready = complete_bars(bars, now=time.time())                 # the minute still trading is left out
    frame = predict_live(spark, {"gbt": model, ...}, ready, minutes=60)
    writer.write_lines(prediction_lines(frame, ["gbt", ...]))
    rolling_metrics(frame, ["gbt", ...])                         # RMSE and skill where the actual is known

Each complete bar ``t`` of the last ``minutes`` gets a prediction of the next minute's close from
the features of ``t`` and the bars before it (``features.feature_frame``: the code that built the
training set, so a model sees exactly the features it was trained on). The prediction is for
minute ``t + 1``; once that minute's bar exists its close is the actual price. Written to InfluxDB
(CONTRACTS.md section 5) at the start of the minute predicted, one series per symbol and model:

    price_predictions,symbol=BTCUSDT,model=gbt predicted_price=84131.2,actual_price=84127.9,error=3.3 1743465660000000000
    price_predictions,symbol=BTCUSDT,model=gbt predicted_price=84140.7 1743465720000000000      <- not traded yet

``error`` is predicted - actual in USD. Predictions are a function of the bars and the model, so a
run that repeats minutes writes the same points again (idempotent), and a later run fills in the
actual price and error of a minute an earlier run could only forecast.

A bar is complete once its minute has ended and the stream has had ``settle_seconds`` to write its
last update (the Spark job rewrites the live minute every ``BTC_STREAM_BARS_TRIGGER``); the bar
still trading is neither a feature row nor an actual price.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from btc_assets.ml import features, models

from btc_assets.contracts import points, schema

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import SparkSession

    from btc_assets.clients.influx import Influx

DEFAULT_SETTLE_SECONDS = 15.0  # the bars query of the stream job writes every 10 s by default
TARGET_MINUTE = "target_minute"  # the minute predicted: bar minute + 1
_NS_PER_MINUTE = 60 * 1_000_000_000


def history_minutes(minutes: int) -> int:
    """How far back to read bars so that each of the last ``minutes`` has its features' history (bars, not
    minutes: a minute without trades has no bar, so the lookback is widened)."""
    return minutes + 3 * features.LOOKBACK_BARS


def bars_flux(bucket: str, symbols: Sequence[str], minutes: int, through_minute: int | None = None) -> str:
    """Flux for the last ``minutes`` of ``bars_1m`` of ``symbols``, one row per bar with every field: up to now,
    or up to and including the minute ``through_minute`` (minutes since the epoch)."""
    wanted = " or ".join(f'r.{schema.SYMBOL_TAG} == "{symbol}"' for symbol in symbols)
    if through_minute is None:
        span = f"start: -{int(minutes)}m"
    else:
        stop = (int(through_minute) + 1) * 60
        span = f"start: {stop - int(minutes) * 60}, stop: {stop}"
    return (f'from(bucket: "{bucket}")\n'
            f"  |> range({span})\n"
            f'  |> filter(fn: (r) => r._measurement == "{schema.BARS_MEASUREMENT}")\n'
            f"  |> filter(fn: (r) => {wanted})\n"
            f'  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
            f'  |> keep(columns: ["_time", "{schema.SYMBOL_TAG}", '
            + ", ".join(f'"{name}"' for name in schema.BAR_MEASUREMENT_FIELDS) + "])")


def read_live_bars(reader: Influx, symbols: Sequence[str], minutes: int,
                   through_minute: int | None = None) -> pd.DataFrame:
    """The last ``minutes`` of live bars (up to now, or through the minute ``through_minute``): ``symbol``,
    ``minute`` (UTC timestamp) and the contract's bar fields.

    A bar missing a field (a partial write) is left out rather than guessed.
    """
    rows = reader.query(bars_flux(reader.bucket, symbols, minutes, through_minute))
    columns = [features.SYMBOL, schema.MINUTE, *schema.BAR_MEASUREMENT_FIELDS]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows).rename(columns={"_time": schema.MINUTE, schema.SYMBOL_TAG: features.SYMBOL})
    for name in schema.BAR_MEASUREMENT_FIELDS:
        if name not in frame:
            frame[name] = np.nan
    frame[schema.MINUTE] = pd.to_datetime(frame[schema.MINUTE], utc=True)
    frame = frame[columns].dropna()
    types = {name: "int64" if name in schema.INTEGER_BAR_FIELDS else "float64" for name in schema.BAR_MEASUREMENT_FIELDS}
    return frame.astype(types).sort_values([features.SYMBOL, schema.MINUTE], ignore_index=True)


def complete_bars(bars: pd.DataFrame, now: float, settle_seconds: float = DEFAULT_SETTLE_SECONDS) -> pd.DataFrame:
    """The bars whose minute ended at least ``settle_seconds`` before ``now`` (epoch seconds)."""
    cutoff = pd.Timestamp(now - 60.0 - settle_seconds, unit="s", tz="UTC")
    return bars[bars[schema.MINUTE] <= cutoff].reset_index(drop=True)


def bars_per_symbol(bars: pd.DataFrame) -> dict[str, int]:
    return {str(symbol): int(count) for symbol, count in bars.groupby(features.SYMBOL).size().items()}


def predict_live(spark: SparkSession, fitted: Mapping[str, PipelineModel], bars: pd.DataFrame,
                 minutes: int) -> pd.DataFrame:
    """Every model's next-minute price for each complete bar of the newest ``minutes`` that has its history.

    One row per (symbol, bar minute): ``symbol``, ``minute`` (the bar's), ``target_minute`` (predicted),
    ``minute_index``, ``close``, ``next_close`` (the actual, NaN until that minute's bar exists) and
    ``predicted_<model>`` (USD) per model: the shape ``models.evaluation_png`` plots.
    """
    if not len(bars):
        return pd.DataFrame()
    labelled = bars.assign(**{schema.MINUTE: bars[schema.MINUTE].dt.strftime(schema.MINUTE_FORMAT)})
    newest = int(bars[schema.MINUTE].max().timestamp()) // 60
    frame = features.feature_frame(spark.createDataFrame(labelled[[features.SYMBOL, *schema.BAR_FIELDS]]))
    frame = frame.dropna(subset=list(features.FEATURES)).where(frame[features.MINUTE_INDEX] > newest - minutes)
    # Every model on the same rows in one Spark job (a job per model costs a scheduling round trip each, which
    # the live scorer pays every minute): each adds its return column and drops its feature vector.
    for name, model in fitted.items():
        frame = (model.transform(frame).withColumnRenamed(models.PREDICTION, f"return_{name}")
                 .drop(models.FEATURE_VECTOR))
    keys = [features.SYMBOL, schema.MINUTE, features.MINUTE_INDEX, features.CLOSE, features.NEXT_CLOSE]
    out = (frame.select(*keys, *(f"return_{name}" for name in fitted)).toPandas()
           .sort_values([features.SYMBOL, features.MINUTE_INDEX], ignore_index=True))
    if out.empty:
        return pd.DataFrame()
    for name in fitted:
        out[f"predicted_{name}"] = out[features.CLOSE] * (1.0 + out.pop(f"return_{name}"))
    out[features.NEXT_CLOSE] = out[features.NEXT_CLOSE].astype(float)
    out[TARGET_MINUTE] = pd.to_datetime(out[schema.MINUTE], utc=True) + pd.Timedelta(minutes=1)
    return out


def prediction_lines(frame: pd.DataFrame, model_names: Iterable[str]) -> list[str]:
    """``price_predictions`` points of ``predict_live``'s frame: one per row and model."""
    lines = []
    for row in frame.itertuples(index=False):
        facts = row._asdict()
        minute_ns = int(facts[features.MINUTE_INDEX] + 1) * _NS_PER_MINUTE
        actual = facts[features.NEXT_CLOSE]
        actual = None if actual is None or math.isnan(actual) else float(actual)
        for name in model_names:
            lines.append(points.prediction_line(facts[features.SYMBOL], name, minute_ns,
                                                float(facts[f"predicted_{name}"]), actual))
    return lines


def rolling_metrics(frame: pd.DataFrame, model_names: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per model, over the rows whose actual is known: RMSE, MAE (USD) and skill against persistence
    (the bar's close) on the same minutes; ``rows`` 0 when no actual is known yet."""
    known = frame[frame[features.NEXT_CLOSE].notna()] if len(frame) else frame
    out = {}
    for name in model_names:
        if not len(known):
            out[name] = {"rows": 0}
            continue
        metrics = models.price_metrics(known[features.NEXT_CLOSE], known[f"predicted_{name}"], known[features.CLOSE])
        out[name] = {key: metrics[key] for key in ("rows", "rmse_usd", "mae_usd", "skill")}
    return out


def forecasts(frame: pd.DataFrame, model_names: Iterable[str]) -> dict[str, dict[str, object]]:
    """Per symbol, the newest prediction (the minute not traded yet): its minute and each model's price."""
    out = {}
    for symbol, rows in frame.groupby(features.SYMBOL):
        newest = rows.loc[rows[features.MINUTE_INDEX].idxmax()]
        out[str(symbol)] = {"minute": newest[TARGET_MINUTE].strftime(schema.MINUTE_FORMAT),
                            "close_before": float(newest[features.CLOSE]),
                            **{name: float(newest[f"predicted_{name}"]) for name in model_names}}
    return out


def predictions_flux(bucket: str, symbol: str, model: str, minutes: int) -> str:
    """Flux for one model's stored predictions of the last ``minutes`` (and the minute trading now), one row
    per minute predicted."""
    return (f'from(bucket: "{bucket}")\n'
            f"  |> range(start: -{int(minutes)}m, stop: 2m)\n"
            f'  |> filter(fn: (r) => r._measurement == "{schema.PREDICTIONS_MEASUREMENT}")\n'
            f'  |> filter(fn: (r) => r.{schema.SYMBOL_TAG} == "{symbol}" and r.{schema.MODEL_TAG} == "{model}")\n'
            f'  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')

"""The price models: pyspark.ml pipelines, their honest evaluation against persistence, storage, plots.

    results = train_models(train, validation, test, ModelParams())   # lr, rf, gbt + persistence
    print(metrics_table(results))
    save_model(storage, "gbt", version, results.models["gbt"].model, results.models["gbt"].metrics)
    model, metrics = load_model(storage, "gbt")                         # the newest complete version
    price = predict_next_price(spark, model, latest_features(spark, latest_bars))   # one minute, by hand
    # (the price_predictions asset serves many live minutes at once: ml/predictions.predict_live)
    seed = seed_replication(history, test, ModelParams())              # the original setup, same data

Every model predicts ``target_return`` (features.py); its price is ``close * (1 + prediction)``, so
metrics are in USD on the next minute's close. ``persistence`` ("the next close is the current one")
is a model too: a pipeline predicting a return of 0, saved beside the others, so whoever serves the
models treats all four alike. ``skill = 1 - RMSE / RMSE(persistence)`` on the same rows: above 0 the
model beats doing nothing. R² on price is reported because the original project did, but any model
that stays near the current price scores close to 1 on it; skill is the number to read.

The original hyperparameters are the defaults: random forest 150 trees of depth 7 with 128 bins,
gradient-boosted trees 150 iterations of depth 7 with 128 bins, plain least squares. GBT is fitted by
XGBoost on Spark (``xgboost.spark.SparkXGBRegressor``, histogram trees with those rounds, depth, bins and
learning rate): pyspark.ml's GBTRegressor runs a Spark job per tree level, which at this data size costs
~100 s of scheduling whatever the rows. ``seed_replication`` keeps pyspark.ml's GBT, as the original had.

Minute bars with a known answer (a random walk, optionally with a planted signal) for the model
tests and the benchmark are made by ``btc_testkit.bars``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from btc_assets.contracts import schema
from btc_assets.ml.features import (CLOSE, DATE, FEATURES, MINUTE_INDEX, NEXT_CLOSE, PREVIOUS_CLOSE, SEED_FEATURES,
                                     SEED_TARGET, SYMBOL, TARGET)

if TYPE_CHECKING:
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.sql import DataFrame

    from btc_assets.clients.storage import Storage

LR, RF, GBT, PERSISTENCE = schema.MODELS
TRAINED_MODELS = (LR, RF, GBT)
MODEL_NAMES = {LR: "linear regression", RF: "random forest", GBT: "gradient-boosted trees",
               PERSISTENCE: "persistence"}
FEATURE_VECTOR = "features"
PREDICTION = "predicted_return"
SEED_PREDICTION = "predicted_avg_price"
METRICS_VERSION = 1


@dataclass(frozen=True)
class ModelParams:
    """Hyperparameters; the defaults are the original project's."""

    lr_max_iter: int = 100
    lr_reg_param: float = 0.0
    lr_elastic_net_param: float = 0.0
    rf_num_trees: int = 150
    rf_max_depth: int = 7
    rf_max_bins: int = 128
    # How RF grows its trees, not what it grows (the same forest, to the last bit): statistics of up to 512 MB of
    # nodes per pass over the data (Spark's default 256 MB takes two passes per level for 150 depth-7 trees), and
    # each row's node kept between passes. 12-14 s -> 7 s on 30 days (README). The seed set-up keeps Spark's defaults.
    rf_max_memory_mb: int = 512
    rf_cache_node_ids: bool = True
    gbt_max_iter: int = 150
    gbt_max_depth: int = 7
    gbt_max_bins: int = 128
    gbt_step_size: float = 0.1
    # "xgboost": xgboost.spark.SparkXGBRegressor, the same rounds, depth, bins and learning rate in one native
    # fit (seconds); "spark": pyspark.ml's GBTRegressor, one Spark job per tree level (the seed set-up's).
    gbt_implementation: str = "xgboost"
    seed: int = 42

    def of(self, model: str) -> dict[str, float | int]:
        """The parameters one model uses (for its metrics.json and metadata)."""
        return {name: value for name, value in asdict(self).items() if name.startswith(f"{model}_") or name == "seed"}


def build_pipeline(model: str, params: ModelParams = ModelParams(), features: Sequence[str] = FEATURES,
                   label: str = TARGET, prediction: str = PREDICTION) -> Pipeline:
    """VectorAssembler + the model's regressor; ``persistence`` predicts a return of 0 (no features)."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import SQLTransformer, VectorAssembler
    from pyspark.ml.regression import GBTRegressor, LinearRegression, RandomForestRegressor

    if model == PERSISTENCE:
        no_change = f"SELECT *, CAST(0.0 AS DOUBLE) AS {prediction} FROM __THIS__"
        return Pipeline(stages=[SQLTransformer(statement=no_change)])
    columns = {"featuresCol": FEATURE_VECTOR, "labelCol": label, "predictionCol": prediction}
    if model == LR:
        regressor = LinearRegression(maxIter=params.lr_max_iter, regParam=params.lr_reg_param,
                                     elasticNetParam=params.lr_elastic_net_param, **columns)
    elif model == RF:
        regressor = RandomForestRegressor(numTrees=params.rf_num_trees, maxDepth=params.rf_max_depth,
                                          maxBins=params.rf_max_bins, maxMemoryInMB=params.rf_max_memory_mb,
                                          cacheNodeIds=params.rf_cache_node_ids, seed=params.seed, **columns)
    elif model == GBT and params.gbt_implementation == "xgboost":
        from xgboost.spark import SparkXGBRegressor

        regressor = SparkXGBRegressor(n_estimators=params.gbt_max_iter, max_depth=params.gbt_max_depth,
                                      max_bin=params.gbt_max_bins, learning_rate=params.gbt_step_size,
                                      random_state=params.seed, tree_method="hist", num_workers=1,
                                      verbose=False,  # not a line per round in the run's log
                                      features_col=FEATURE_VECTOR, label_col=label, prediction_col=prediction)
    elif model == GBT and params.gbt_implementation == "spark":
        regressor = GBTRegressor(maxIter=params.gbt_max_iter, maxDepth=params.gbt_max_depth,
                                 maxBins=params.gbt_max_bins, stepSize=params.gbt_step_size, seed=params.seed,
                                 **columns)
    elif model == GBT:
        raise ValueError(f"gbt_implementation must be 'xgboost' or 'spark', not {params.gbt_implementation!r}")
    else:
        raise ValueError(f"unknown model {model!r}: one of {schema.MODELS}")
    return Pipeline(stages=[VectorAssembler(inputCols=list(features), outputCol=FEATURE_VECTOR), regressor])


# --- Metrics --------------------------------------------------------------------------------


def price_metrics(actual: np.ndarray, predicted: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """RMSE and MAE (USD), R² on price, and skill = 1 - RMSE / RMSE(baseline), all on the same rows."""
    actual, predicted, baseline = (np.asarray(values, dtype=float) for values in (actual, predicted, baseline))
    error = predicted - actual
    rmse = math.sqrt(float(np.mean(error**2)))
    baseline_rmse = math.sqrt(float(np.mean((baseline - actual) ** 2)))
    spread = float(np.sum((actual - actual.mean()) ** 2))
    return {
        "rmse_usd": rmse,
        "mae_usd": float(np.mean(np.abs(error))),
        "r2_price": 1.0 - float(np.sum(error**2)) / spread if spread > 0 else float("nan"),
        "skill": 1.0 - rmse / baseline_rmse if baseline_rmse > 0 else float("nan"),
        "rows": int(len(actual)),
    }


def return_r2(actual_return: np.ndarray, predicted_return: np.ndarray) -> float:
    """R² on the next minute's return: the share of its variance a model explains (0 for persistence, about)."""
    spread = float(np.sum((actual_return - actual_return.mean()) ** 2))
    return 1.0 - float(np.sum((predicted_return - actual_return) ** 2)) / spread if spread > 0 else float("nan")


# --- Training -------------------------------------------------------------------------------


@dataclass
class ModelResult:
    """One fitted model: the PipelineModel, how long it took, and its metrics per evaluation period."""

    name: str
    model: PipelineModel
    train_seconds: float
    params: dict[str, float | int]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # {"validation": {...}, "test": {...}}

    def metrics_document(self, **extra) -> dict:
        """What goes to ``metrics.json`` beside the saved model."""
        return {"metrics_version": METRICS_VERSION, "model": self.name, "target": TARGET,
                "features": list(FEATURES), "train_seconds": round(self.train_seconds, 3),
                "params": self.params, **self.metrics, **extra}


@dataclass
class TrainingResults:
    """Every model's result, persistence included, and the test period's predictions (for plots)."""

    models: dict[str, ModelResult]
    predictions: pd.DataFrame  # symbol, minute, close, next_close, then one predicted_<model> price column each
    rows: dict[str, int]


def _prepared(frame: DataFrame, columns: Sequence[str], partitions: int = 2, cache: bool = True) -> DataFrame:
    # Both cores, and read (from HDFS) once: the trees go over the data once per level and tree.
    # (``cache=False`` is there for the benchmark, which measures what this is worth.)
    return frame.select(*columns).repartition(partitions).cache() if cache else frame.select(*columns)


def predict(model: PipelineModel, frame: DataFrame, prediction: str = PREDICTION) -> pd.DataFrame:
    """The model's predictions on ``frame``, ordered by symbol and minute, with the predicted price."""
    keep = [SYMBOL, schema.MINUTE, MINUTE_INDEX, CLOSE, NEXT_CLOSE, TARGET, prediction]
    out = model.transform(frame).select(*keep).toPandas().sort_values([SYMBOL, MINUTE_INDEX], ignore_index=True)
    out["predicted_price"] = out[CLOSE] * (1.0 + out[prediction])
    return out


def predict_next_price(spark, model: PipelineModel, live_features: pd.DataFrame) -> float:
    """The next minute's price ``model`` predicts from one live row (``features.latest_features``)."""
    row = spark.createDataFrame(live_features[[CLOSE, *FEATURES]])
    predicted_return = model.transform(row).select(PREDICTION).first()[0]
    return float(live_features[CLOSE].iloc[0]) * (1.0 + predicted_return)


def evaluate(model: PipelineModel, frame: DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics of ``model`` on ``frame`` against persistence on the same rows, and the predictions."""
    predictions = predict(model, frame)
    metrics = price_metrics(predictions[NEXT_CLOSE], predictions["predicted_price"], predictions[CLOSE])
    metrics["r2_return"] = return_r2(predictions[TARGET].to_numpy(), predictions[PREDICTION].to_numpy())
    return metrics, predictions


def train_models(train: DataFrame, validation: DataFrame, test: DataFrame, params: ModelParams = ModelParams(),
                 models: Iterable[str] = TRAINED_MODELS, log: Callable[[str], None] = print,
                 cache: bool = True) -> TrainingResults:
    """Fit each model on ``train``; evaluate it and persistence on ``validation`` and ``test``."""
    columns = [SYMBOL, schema.MINUTE, MINUTE_INDEX, CLOSE, NEXT_CLOSE, TARGET, *FEATURES]
    periods = {period: _prepared(frame, columns, cache=cache)
               for period, frame in (("train", train), ("validation", validation), ("test", test))}
    rows = {period: frame.count() for period, frame in periods.items()}
    if min(rows.values()) == 0:
        raise ValueError(f"every period needs rows to train and evaluate on, got {rows}")
    results: dict[str, ModelResult] = {}
    predictions = None
    try:
        for name in [*models, PERSISTENCE]:
            # GBT's rounds are thousands of small Spark jobs: at this data size their scheduling, not the
            # maths, is the cost, and one task per job is faster than two (RF's wide passes are not).
            # XGBoost fits on one worker, and the sums in its histograms depend on the order rows come in: one
            # partition in (symbol, minute) order gives the same model in local mode and on a cluster (a
            # repartition it did itself would keep the order shuffle blocks happen to arrive in; a coalesce
            # before its barrier stage is refused).
            if name == GBT and params.gbt_implementation == "spark":
                rows_to_fit = periods["train"].coalesce(1)
            elif name == GBT:
                rows_to_fit = periods["train"].repartition(1).sortWithinPartitions(SYMBOL, MINUTE_INDEX)
            else:
                rows_to_fit = periods["train"]
            started = time.monotonic()
            fitted = build_pipeline(name, params).fit(rows_to_fit)
            seconds = time.monotonic() - started
            result = ModelResult(name, fitted, seconds, params.of(name) if name != PERSISTENCE else {})
            for period in ("validation", "test"):
                result.metrics[period], predicted = evaluate(fitted, periods[period])
            if predictions is None:
                predictions = predicted[[SYMBOL, schema.MINUTE, MINUTE_INDEX, CLOSE, NEXT_CLOSE]].copy()
            predictions[f"predicted_{name}"] = predicted["predicted_price"].to_numpy()
            results[name] = result
            test_metrics = result.metrics["test"]
            log(f"{name}: trained in {seconds:.1f}s on {rows['train']:,} rows; test RMSE "
                f"{test_metrics['rmse_usd']:.2f} USD, skill {test_metrics['skill']:+.4f}")
    finally:
        for frame in periods.values():
            frame.unpersist()
    return TrainingResults(results, predictions, rows)


def seed_replication(history: DataFrame, later: DataFrame, params: ModelParams = ModelParams(),
                     models: Iterable[str] = TRAINED_MODELS, log: Callable[[str], None] = print) -> dict[str, dict]:
    """The original setup on the same data: seed features -> ``avg_price``, random 80/20 split of ``history``.

    Per model: metrics on the random 20% (what the original reported) and on ``later`` (the days after
    ``history``, what it met live), against persistence (the previous minute's close), with R² on
    price per day as well (the original's live R² was over short windows). Nothing is saved.
    """
    # The original's GBT is pyspark.ml's, and its RF ran with Spark's defaults.
    params = replace(params, gbt_implementation="spark", rf_max_memory_mb=256, rf_cache_node_ids=False)
    columns = [SYMBOL, DATE, schema.MINUTE, MINUTE_INDEX, SEED_TARGET, PREVIOUS_CLOSE, *SEED_FEATURES]
    fit_rows, holdout = history.select(*columns).randomSplit([0.8, 0.2], seed=params.seed)
    fit_rows, holdout, later = (_prepared(frame, columns) for frame in (fit_rows, holdout, later))
    report: dict[str, dict] = {}
    try:
        for name in models:
            started = time.monotonic()
            fitted = build_pipeline(name, params, features=SEED_FEATURES, label=SEED_TARGET,
                                    prediction=SEED_PREDICTION).fit(fit_rows.coalesce(1) if name == GBT else fit_rows)
            report[name] = {"train_seconds": time.monotonic() - started}
            for label, frame in (("random_split", holdout), ("later_days", later)):
                scored = fitted.transform(frame).select(DATE, SEED_TARGET, SEED_PREDICTION, PREVIOUS_CLOSE)
                report[name][label] = _seed_metrics(scored.toPandas(), SEED_PREDICTION)
            log(f"seed {name}: R² {report[name]['random_split']['r2_price']:.3f} on the random split, "
                f"{report[name]['later_days']['r2_price']:.3f} on the later days")
        report[PERSISTENCE] = {"train_seconds": 0.0}
        for label, frame in (("random_split", holdout), ("later_days", later)):
            scored = frame.select(DATE, SEED_TARGET, PREVIOUS_CLOSE).toPandas()
            report[PERSISTENCE][label] = _seed_metrics(scored, PREVIOUS_CLOSE)
    finally:
        for frame in (fit_rows, holdout, later):
            frame.unpersist()
    return report


def _seed_metrics(scored: pd.DataFrame, predicted: str) -> dict:
    metrics = price_metrics(scored[SEED_TARGET], scored[predicted], scored[PREVIOUS_CLOSE])
    metrics["r2_price_by_day"] = {
        day: price_metrics(rows[SEED_TARGET], rows[predicted], rows[PREVIOUS_CLOSE])["r2_price"]
        for day, rows in scored.groupby(DATE, sort=True)}
    return metrics


# --- Storage --------------------------------------------------------------------------------


def new_version(now: datetime | None = None) -> str:
    """A model version that sorts by time: ``20250401T120000Z``."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def save_model(storage: Storage, name: str, version: str, model: PipelineModel, metrics: dict) -> str:
    """Write the PipelineModel (Spark) then ``metrics.json`` (last: it marks the version complete); return the URL."""
    directory = schema.model_dir(storage.root, name, version)
    model.write().overwrite().save(storage.url(directory))
    storage.fs.write(f"{directory}/{schema.MODEL_METRICS_FILE}",
                     json.dumps(metrics, indent=2, sort_keys=True, default=_json_value).encode())
    return storage.url(directory)


def model_versions(storage: Storage, name: str) -> list[str]:
    """The complete versions of a model (those with ``metrics.json``), oldest first."""
    parent = schema.model_dir(storage.root, name, "").rstrip("/")
    if not storage.fs.exists(parent):
        return []
    versions = [status.path.rsplit("/", 1)[-1] for status in storage.fs.list(parent) if status.is_dir]
    return sorted(version for version in versions
                  if storage.fs.exists(f"{parent}/{version}/{schema.MODEL_METRICS_FILE}"))


def newest_version(storage: Storage, name: str) -> str | None:
    """The newest complete version of a model, or None: one listing, then a ``metrics.json`` lookup per version
    from the newest down (a version still being written has none yet)."""
    parent = schema.model_dir(storage.root, name, "").rstrip("/")
    if not storage.fs.exists(parent):
        return None
    for version in sorted((status.path.rsplit("/", 1)[-1] for status in storage.fs.list(parent) if status.is_dir),
                          reverse=True):
        if storage.fs.exists(f"{parent}/{version}/{schema.MODEL_METRICS_FILE}"):
            return version
    return None


def load_model(storage: Storage, name: str, version: str | None = None) -> tuple[PipelineModel, dict]:
    """A saved model and its metrics; the newest complete version unless ``version`` is given."""
    from pyspark.ml import PipelineModel

    if version is None:
        version = newest_version(storage, name)
        if version is None:
            raise FileNotFoundError(f"no saved version of {name!r} under {storage.url(storage.root)}/models: "
                                    "materialize price_models first")
    directory = schema.model_dir(storage.root, name, version)
    metrics = json.loads(storage.fs.read(f"{directory}/{schema.MODEL_METRICS_FILE}"))
    return PipelineModel.load(storage.url(directory)), metrics


def _json_value(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- Reports --------------------------------------------------------------------------------


def _number(value: float, digits: int) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _r2(value: float) -> str:
    return _number(value, 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 4)


def metrics_table(results: TrainingResults, seed: dict[str, dict] | None = None, period: str = "test") -> str:
    """Markdown: RMSE / MAE / R² / skill per model on the chronological test, the seed setup beside it."""
    header = "| model | RMSE (USD) | MAE (USD) | R² price | R² return | skill | train s |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if seed:
        header += (" seed R² random split | seed R² later days | seed R² per later day | seed RMSE later days |"
                   " seed skill later days |")
        rule += "---:|---:|---:|---:|---:|"
    lines = [header, rule]
    for name in [*[model for model in TRAINED_MODELS if model in results.models], PERSISTENCE]:
        result = results.models[name]
        metrics = result.metrics[period]
        line = (f"| {name} | {_number(metrics['rmse_usd'], 2)} | {_number(metrics['mae_usd'], 2)} | "
                f"{_number(metrics['r2_price'], 4)} | {_number(metrics['r2_return'], 4)} | "
                f"{_number(metrics['skill'], 4)} | {_number(result.train_seconds, 1)} |")
        if seed:
            replica = seed.get(name)
            if replica is None:
                line += " n/a | n/a | n/a | n/a | n/a |"
            else:
                later_r2 = replica["later_days"]["r2_price"]
                by_day = list(replica["later_days"]["r2_price_by_day"].values())
                line += (f" {_number(replica['random_split']['r2_price'], 4)} | "
                         f"{_r2(later_r2)} | {_r2(min(by_day))} .. {_r2(max(by_day))} | "
                         f"{_number(replica['later_days']['rmse_usd'], 2)} | "
                         f"{_number(replica['later_days']['skill'], 3)} |")
        lines.append(line)
    return "\n".join(lines)


def evaluation_png(predictions: pd.DataFrame, models: Sequence[str], last_minutes: int = 180,
                   error_window: int = 60, period: str = "test") -> bytes:
    """A PNG of a period's predictions (``period``: test, or live): actual vs predicted price (its last
    ``last_minutes``), rolling RMSE over time, and predicted vs actual next-minute return, for ``models``
    (first symbol only). Minutes whose actual is not known yet (NaN) show their prediction alone."""
    from matplotlib.figure import Figure

    symbol = predictions[SYMBOL].iloc[0]
    frame = predictions[predictions[SYMBOL] == symbol].sort_values(MINUTE_INDEX)
    minutes = pd.to_datetime(frame[schema.MINUTE], utc=True) + pd.Timedelta(minutes=1)  # the minute predicted
    actual = frame[NEXT_CLOSE].to_numpy()
    figure = Figure(figsize=(10, 8), dpi=64, layout="constrained")  # small: it travels inline in the metadata
    price_axes, error_axes, return_axes = figure.subplots(3, 1)
    tail = slice(max(0, len(frame) - last_minutes), None)
    price_axes.plot(minutes.iloc[tail], actual[tail], color="black", linewidth=1.4, label="actual close")
    for name in models:
        predicted = frame[f"predicted_{name}"].to_numpy()
        style = {"linestyle": "--", "color": "grey"} if name == PERSISTENCE else {}
        price_axes.plot(minutes.iloc[tail], predicted[tail], linewidth=0.9, label=name, **style)
        squared = pd.Series((predicted - actual) ** 2, index=minutes)
        rolling_rmse = np.sqrt(squared.rolling(error_window, min_periods=max(1, error_window // 4)).mean())
        error_axes.plot(minutes, rolling_rmse, linewidth=0.9, label=name, **style)
        if name != PERSISTENCE:
            close = frame[CLOSE].to_numpy()
            return_axes.scatter((actual / close - 1) * 1e4, (predicted / close - 1) * 1e4, s=3, alpha=0.4, label=name)
    price_axes.set_title(f"{symbol}: next-minute close, actual vs predicted (last {last_minutes} {period} minutes)")
    price_axes.set_ylabel("USD")
    price_axes.legend(loc="upper left", fontsize=8)
    error_axes.set_title(f"error over the {period} period: RMSE of the last {error_window} minutes")
    error_axes.set_ylabel("USD")
    error_axes.legend(loc="upper left", fontsize=8)
    return_axes.axhline(0.0, color="grey", linewidth=0.6)
    return_axes.axline((0.0, 0.0), slope=1.0, color="black", linewidth=0.6, linestyle=":")
    return_axes.set_title("next-minute return: predicted vs actual (basis points; dotted: perfect)")
    return_axes.set_xlabel("actual")
    return_axes.set_ylabel("predicted")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def markdown_image(png: bytes, title: str = "evaluation") -> str:
    """The PNG inline in markdown (Dagster shows it in the asset's metadata)."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"

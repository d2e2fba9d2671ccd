"""Training set and price models: from the minute bars in HDFS to Spark ML PipelineModels beside their metrics."""

import dagster as dg
from pydantic import Field

from btc_assets.defs.history.assets import minute_bars
from btc_assets.defs.resources import SparkResource, StorageResource
from btc_assets.ml import features, models
from btc_assets.contracts import schema

TRAINING_SET_PATH = "ml/training_set"
MINUTE_BARS_PATH = "agg/minute"
MODEL_ASSETS = {name: f"{name}_model" for name in schema.MODELS}


class TrainingSetConfig(dg.Config):
    validation_fraction: float = Field(0.15, description="share of the days, after the training days, that validate")
    test_fraction: float = Field(0.15, description="share of the days, the latest ones, that test")


@dg.asset(deps=[minute_bars], group_name="ml", kinds={"spark", "hdfs"})
def training_set(context: dg.AssetExecutionContext, config: TrainingSetConfig, spark: SparkResource,
                 storage: StorageResource) -> dg.MaterializeResult:
    """Features and target for every minute of every materialized day, split by day into train / validation / test.

    Spark reads all minute bars in HDFS (`/btc/agg/minute/symbol=*/date=*/part-*`) and computes
    the features of `btc_assets.ml.features`: lagged returns, VWAP deviation, volume and trade
    count relative to the last 15 minutes, maker ratio, taker-buy share, time of day and week, all
    from the current and earlier bars only. The target is the next minute's close as a return on
    the current close. Days are split in time order (earlier days train, the next validate, the
    last test); a period's last minute, whose target lies in the next period, is dropped. Written
    as parquet with a `split` column to `/btc/ml/training_set/`, replaced atomically.
    """
    store = storage.storage
    source = store.path(MINUTE_BARS_PATH)
    if not store.fs.exists(source):
        raise dg.Failure(f"no minute bars under {store.url(source)}: materialize minute_bars first")
    session = spark.session("btc-training-set")
    frame = features.build_training_frame(features.read_minute_bars(session, store.url(source))).cache()
    try:
        days = features.training_days(frame)
        plan = features.plan_split(days, config.validation_fraction, config.test_fraction)
        target = store.path(TRAINING_SET_PATH)
        staging = f"{target}._tmp"
        store.fs.delete(staging, recursive=True)
        features.label_split(frame, plan).coalesce(2).write.parquet(store.url(staging))
        store.fs.delete(target, recursive=True)
        store.fs.mkdirs(target.rsplit("/", 1)[0])
        store.fs.rename(staging, target)
    finally:
        frame.unpersist()
    written = session.read.parquet(store.url(target))
    rows = {row[features.SPLIT]: row["count"] for row in written.groupBy(features.SPLIT).count().collect()}
    symbols = sorted(row[0] for row in written.select(features.SYMBOL).distinct().collect())
    context.log.info(f"training set: {sum(rows.values()):,} rows over {len(days)} days {plan.boundaries()} "
                     f"-> {store.url(target)}")
    return dg.MaterializeResult(metadata={
        "rows": dg.MetadataValue.int(sum(rows.values())),
        "rows_per_split": dg.MetadataValue.json({name: rows.get(name, 0) for name in features.SPLITS}),
        "days": dg.MetadataValue.int(len(days)),
        "split_boundaries": dg.MetadataValue.json(plan.boundaries()),
        "symbols": dg.MetadataValue.json(symbols),
        "features": dg.MetadataValue.json(list(features.FEATURES)),
        "target": features.TARGET,
        "path": dg.MetadataValue.path(store.url(target)),
    })


class PriceModelsConfig(dg.Config):
    lr_max_iter: int = Field(100, description="linear regression: iterations")
    lr_reg_param: float = Field(0.0, description="linear regression: regularization (0: plain least squares)")
    lr_elastic_net_param: float = Field(0.0, description="linear regression: L1 share of the regularization")
    rf_num_trees: int = Field(150, description="random forest: trees (original: 150)")
    rf_max_depth: int = Field(7, description="random forest: depth (original: 7)")
    rf_max_bins: int = Field(128, description="random forest: bins per feature (original: 128)")
    rf_max_memory_mb: int = Field(512, description="random forest: MB of node statistics gathered per pass over "
                                                   "the data (Spark's default 256; the same forest, fewer passes)")
    rf_cache_node_ids: bool = Field(True, description="random forest: keep each row's node between passes "
                                                      "(Spark's default False; the same forest, faster)")
    gbt_max_iter: int = Field(150, description="gradient-boosted trees: iterations (original: 150)")
    gbt_max_depth: int = Field(7, description="gradient-boosted trees: depth (original: 7)")
    gbt_max_bins: int = Field(128, description="gradient-boosted trees: bins per feature (original: 128)")
    gbt_step_size: float = Field(0.1, description="gradient-boosted trees: learning rate")
    gbt_implementation: str = Field("xgboost", description="gradient-boosted trees: 'xgboost' "
                                    "(xgboost.spark, one native fit) or 'spark' (pyspark.ml GBTRegressor)")
    seed: int = Field(42, description="random seed of the trees (and of the seed replication's 80/20 split)")
    seed_replication: bool = Field(False, description="also train the original setup (seed features -> avg_price, "
                                                      "random 80/20 split) and report its metrics beside")
    version: str = Field("", description="model version directory; empty: the UTC time, e.g. 20250401T120000Z")

    def params(self) -> models.ModelParams:
        return models.ModelParams(**{name: getattr(self, name) for name in models.ModelParams.__dataclass_fields__})


_DESCRIPTIONS = {
    models.LR: "Linear regression on the training set's features, predicting the next minute's return.",
    models.RF: "Random forest (original: 150 trees, depth 7, 128 bins) predicting the next minute's return.",
    models.GBT: "Gradient-boosted trees (original: 150 iterations, depth 7, 128 bins) predicting the next "
                "minute's return.",
    models.PERSISTENCE: "The baseline every model must beat: the next minute's close is the current close.",
}


@dg.multi_asset(
    specs=[dg.AssetSpec(key, deps=[training_set], group_name="ml", kinds={"spark", "hdfs"}, skippable=True,
                        description=f"{_DESCRIPTIONS[name]} A Spark ML PipelineModel with metrics.json at "
                                    f"/btc/models/{name}/<version>/.")
           for name, key in MODEL_ASSETS.items()],
    can_subset=True,
)
def price_models(context: dg.AssetExecutionContext, config: PriceModelsConfig, spark: SparkResource,
                 storage: StorageResource):
    """LR, RF and GBT pipelines trained on the training set's earlier days, tested on its last against persistence.

    Each model predicts the next minute's return; its price is close * (1 + return). Metrics on the
    test period, in USD on the next minute's close: RMSE, MAE, R² on price, and skill = 1 - RMSE /
    RMSE(persistence) (above 0: better than predicting no change). Saved to
    `/btc/models/<model>/<version>/` (PipelineModel, then metrics.json). Metadata: the metrics,
    persistence beside them, training seconds, the path, and a PNG of actual vs predicted prices
    and the error over time. With `seed_replication`, the original setup (same features, random
    80/20 split) is trained on the same days and its misleading R² shown beside.
    """
    store = storage.storage
    selected = [name for name, key in MODEL_ASSETS.items() if dg.AssetKey(key) in context.selected_asset_keys]
    trained = [name for name in models.TRAINED_MODELS if name in selected]
    source = store.path(TRAINING_SET_PATH)
    if not store.fs.exists(source):
        raise dg.Failure(f"no training set at {store.url(source)}: materialize training_set first")
    frame = spark.session("btc-price-models").read.parquet(store.url(source))
    train, validation, test = features.chronological_split(frame)
    params = config.params()
    results = models.train_models(train, validation, test, params, models=trained, log=context.log.info)
    seed = (models.seed_replication(train.unionByName(validation), test, params, models=trained,
                                    log=context.log.info) if config.seed_replication else None)
    periods = _periods(frame)
    version = config.version or models.new_version()
    table = models.metrics_table(results, seed)
    persistence = results.models[models.PERSISTENCE].metrics
    for name in selected:
        result = results.models[name]
        document = result.metrics_document(version=version, periods=periods, persistence=persistence,
                                           seed_replication=(seed or {}).get(name))
        url = models.save_model(store, name, version, result.model, document)
        test_metrics = result.metrics["test"]
        shown = [name] if name == models.PERSISTENCE else [name, models.PERSISTENCE]
        png = models.evaluation_png(results.predictions, shown)
        metadata = {
            "rmse_usd": dg.MetadataValue.float(test_metrics["rmse_usd"]),
            "mae_usd": dg.MetadataValue.float(test_metrics["mae_usd"]),
            "r2_price": dg.MetadataValue.float(test_metrics["r2_price"]),
            "r2_return": dg.MetadataValue.float(test_metrics["r2_return"]),
            "skill": dg.MetadataValue.float(test_metrics["skill"]),
            "validation_skill": dg.MetadataValue.float(result.metrics["validation"]["skill"]),
            "persistence_rmse_usd": dg.MetadataValue.float(persistence["test"]["rmse_usd"]),
            "persistence_mae_usd": dg.MetadataValue.float(persistence["test"]["mae_usd"]),
            "persistence_r2_price": dg.MetadataValue.float(persistence["test"]["r2_price"]),
            "training_seconds": dg.MetadataValue.float(round(result.train_seconds, 2)),
            "rows": dg.MetadataValue.json(results.rows),
            "periods": dg.MetadataValue.json(periods),
            "params": dg.MetadataValue.json(result.params),
            "version": version,
            "path": dg.MetadataValue.path(url),
            "comparison": dg.MetadataValue.md(table),
            "evaluation": dg.MetadataValue.md(models.markdown_image(png, f"{name} on the test period")),
        }
        if seed and name in seed:
            metadata["seed_r2_random_split"] = dg.MetadataValue.float(seed[name]["random_split"]["r2_price"])
            metadata["seed_r2_later_days"] = dg.MetadataValue.float(seed[name]["later_days"]["r2_price"])
            metadata["seed_skill_later_days"] = dg.MetadataValue.float(seed[name]["later_days"]["skill"])
            metadata["seed_r2_by_later_day"] = dg.MetadataValue.json(seed[name]["later_days"]["r2_price_by_day"])
        yield dg.MaterializeResult(asset_key=MODEL_ASSETS[name], metadata=metadata)


def _periods(frame) -> dict[str, str]:
    """First and last day of each split of the training set (from its ``split`` column)."""
    from pyspark.sql import functions as F

    rows = frame.groupBy(features.SPLIT).agg(F.min(features.DATE), F.max(features.DATE)).collect()
    return {row[0]: f"{row[1]} .. {row[2]}" for row in rows}

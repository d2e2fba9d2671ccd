"""Live predictions: every saved price model on the newest live bars, into InfluxDB, every few minutes."""

import time

import dagster as dg
from pydantic import Field

from btc_assets.defs.ml.assets import MODEL_ASSETS
from btc_assets.defs.resources import InfluxResource, MarketResource, SparkResource, StorageResource
from btc_assets.defs.stream.assets import live_bars
from btc_assets.ml import features, models, predictions
from btc_assets.contracts import schema


class PricePredictionsConfig(dg.Config):
    minutes: int = Field(60, ge=1, description="how many of the newest complete live minutes to predict (and "
                                               "score, where the minute after has traded) per run")
    settle_seconds: float = Field(predictions.DEFAULT_SETTLE_SECONDS, ge=0,
                                  description="a bar counts as complete this long after its minute ended (the "
                                              "stream rewrites the live minute every BTC_STREAM_BARS_TRIGGER)")
    models: list[str] = Field(list(schema.MODELS), description="which saved models predict")
    model_version: str = Field("", description="the version directory of every model; empty: each model's newest")


@dg.asset(deps=[live_bars, *MODEL_ASSETS.values()], group_name="ml", kinds={"spark", "influxdb"})
def price_predictions(context: dg.AssetExecutionContext, config: PricePredictionsConfig, spark: SparkResource,
                      storage: StorageResource, influx: InfluxResource,
                      market: MarketResource) -> dg.MaterializeResult:
    """Each saved model's price for the next minute, from the newest live bars, written to InfluxDB with its error.

    Reads the last minutes of `bars_1m` from InfluxDB (Flux), leaves out the minute still trading,
    computes the training set's features for each complete bar (same code, so the same values),
    and lets the newest version of every model in `/btc/models/<model>/` predict the minute after.
    Writes `price_predictions` (tags symbol, model; fields predicted_price, and actual_price and
    error = predicted - actual once that minute's bar exists) at the start of the minute predicted.
    Repeating a minute writes the same point again; a later run fills in the error of a minute an
    earlier one could only forecast. Metadata: the forecast, rolling RMSE and skill against
    persistence per model over the scored minutes, and a PNG of actual vs predicted and the error.
    """
    names = [name for name in schema.MODELS if name in config.models]
    unknown = sorted(set(config.models) - set(schema.MODELS))
    if unknown or not names:
        raise dg.Failure(f"models {unknown or config.models} unknown: choose from {list(schema.MODELS)}")
    store = storage.storage
    started = time.monotonic()
    session = spark.session("btc-price-predictions")
    context.log.info(f"Spark session ({spark.master}) in {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    fitted, versions = {}, {}
    for name in names:
        try:
            fitted[name], saved = models.load_model(store, name, config.model_version or None)
        except FileNotFoundError as error:
            context.log.warning(str(error))
            continue
        versions[name] = saved.get("version", config.model_version)
    if not fitted:
        raise dg.Failure(f"no saved model under {store.url(store.path('models'))} for {names}: "
                         "materialize price_models first")
    context.log.info(f"{len(fitted)} models loaded in {time.monotonic() - started:.1f}s: "
                     + ", ".join(f"{name} {version}" for name, version in versions.items()))

    symbols = market.symbol_list
    reader = influx.reader()
    try:
        bars = predictions.read_live_bars(reader, symbols, predictions.history_minutes(config.minutes))
    except Exception as error:  # the client raises urllib3, HTTP and API errors alike
        raise dg.Failure(f"could not read {schema.BARS_MEASUREMENT} from InfluxDB at {influx.url}: {error}") from error
    finally:
        reader.close()
    ready = predictions.complete_bars(bars, time.time(), config.settle_seconds)
    started = time.monotonic()
    frame = predictions.predict_live(session, fitted, ready, config.minutes)
    context.log.info(f"{len(frame)} minutes predicted by {len(fitted)} models in {time.monotonic() - started:.1f}s")
    if frame.empty:
        raise dg.Failure(
            f"no live minute to predict: a prediction needs {features.LOOKBACK_BARS} complete bars of a symbol in "
            f"the last {predictions.history_minutes(config.minutes)} minutes of {schema.BARS_MEASUREMENT}; found "
            f"{predictions.bars_per_symbol(ready) or 'none'} for {symbols}. Is the stream running? "
            "(`btc-pipeline stream status`)")

    model_names = list(fitted)
    writer = influx.writer()
    try:
        written = writer.write_lines(predictions.prediction_lines(frame, model_names))
    finally:
        writer.close()
    scores = predictions.rolling_metrics(frame, model_names)
    forecast = predictions.forecasts(frame, model_names)
    for symbol, newest in forecast.items():
        prices = ", ".join(f"{name} {newest[name]:,.2f}" for name in model_names)
        context.log.info(f"{symbol} {newest['minute'][:10]}: forecast for {newest['minute'][11:]} UTC: {prices} "
                         f"(last close {newest['close_before']:,.2f})")
    scored = [name for name in model_names if scores[name]["rows"]]
    for name in scored:
        context.log.info(f"{name}: live RMSE {scores[name]['rmse_usd']:.2f} USD over {scores[name]['rows']} "
                         f"minutes, skill {scores[name]['skill']:+.4f}")

    metadata = {
        "points_written": dg.MetadataValue.int(written),
        "minutes_predicted": dg.MetadataValue.int(len(frame)),
        "minutes_scored": dg.MetadataValue.int(int(frame[features.NEXT_CLOSE].notna().sum())),
        "bars_read": dg.MetadataValue.json(predictions.bars_per_symbol(bars)),
        "forecast": dg.MetadataValue.json(forecast),
        "model_versions": dg.MetadataValue.json(versions),
        "rolling_metrics": dg.MetadataValue.json(scores),
        "comparison": dg.MetadataValue.md(_scores_table(scores, scored)),
    }
    for name in scored:  # floats: Dagster plots them over the runs
        metadata[f"{name}_rmse_usd"] = dg.MetadataValue.float(scores[name]["rmse_usd"])
        metadata[f"{name}_skill"] = dg.MetadataValue.float(scores[name]["skill"])
    if scored:
        png = models.evaluation_png(frame, model_names, last_minutes=config.minutes,
                                    error_window=max(1, min(30, config.minutes)), period="live")
        metadata["evaluation"] = dg.MetadataValue.md(models.markdown_image(png, "live predictions"))
    return dg.MaterializeResult(metadata=metadata)


def _scores_table(scores: dict[str, dict], scored: list[str]) -> str:
    if not scored:
        return "No predicted minute has traded yet: errors follow in the next run."
    lines = ["| model | minutes scored | RMSE (USD) | MAE (USD) | skill vs persistence |", "|---|---:|---:|---:|---:|"]
    for name in scored:
        facts = scores[name]
        lines.append(f"| {name} | {facts['rows']} | {facts['rmse_usd']:.2f} | {facts['mae_usd']:.2f} | "
                     f"{facts['skill']:+.4f} |")
    return "\n".join(lines)


price_predictions_job = dg.define_asset_job(
    "price_predictions_job", selection=dg.AssetSelection.assets(price_predictions),
    description="Predict the next minute's price with every saved model from the newest live bars.")

# Each run predicts (and scores) the last hour of minutes, so every 5 minutes leaves no minute out
# while a Spark session and four models are loaded only twelve times an hour.
price_predictions_schedule = dg.ScheduleDefinition(
    name="price_predictions_schedule", job=price_predictions_job, cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Live predictions every 5 minutes (switch on once the stream runs and price_models exist).")

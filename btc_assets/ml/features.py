"""What the price models see and what they predict: every feature and the target, defined once.

    bars = read_minute_bars(spark, storage.url(storage.path("agg/minute")))
    frame = build_training_frame(bars)                      # features + target, one row per minute
    plan = plan_split(training_days(frame))                 # earlier days train, then validate, last test
    train, validation, test = chronological_split(frame, plan)
    live = latest_features(spark, latest_bars)              # the same features for one live minute

Honest features (``FEATURES``) use the current minute's bar and earlier bars only, as ratios, so
a model trained at one price level works at any other:

| feature | definition (``t`` is the current bar, ``t-k`` the k-th bar before it) |
|---------|------|
| return_1m | close[t] / close[t-1] - 1 |
| return_1m_lag1, return_1m_lag2 | the same, one and two bars earlier |
| return_5m, return_15m | close[t] / close[t-5] - 1, close[t] / close[t-15] - 1 |
| vwap_deviation | close[t] / vwap[t] - 1: where the minute closed against its volume-weighted price |
| range_1m | high[t] / low[t] - 1 |
| volume_ratio_15m, trades_ratio_15m | volume (trades) of t over their mean across t-14..t |
| maker_ratio | the bar's share of trades whose buyer was the maker |
| taker_buy_share, taker_buy_share_lag1 | taker_buy_volume / volume of t and of t-1 |
| minute_of_day, day_of_week | 0..1439 (UTC) and 0..6 (Monday = 0) |

Target: ``target_return = next_close / close - 1`` where ``next_close`` is the close of the
minute right after (``minute + 1``); a row whose next minute has no bar (no trade) has no target
and is left out. A model's price is ``close * (1 + predicted return)``.

Lags count bars, not minutes: minutes without trades have no bar (CONTRACTS.md section 4), so
``t-1`` is the last minute that traded. One implementation computes them, in Spark (windows partitioned by symbol, ordered by
minute), for training and for serving; ``latest_features`` runs it on a live minute's newest bars.

The seed project's features (``SEED_FEATURES``: day of week, hour, minute, average quantity, average
quote quantity, maker share, predicting ``avg_price`` of the same minute) are kept beside them only
for ``seed_replication``: average quote quantity over average quantity *is* the minute's VWAP, so
they encode the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from btc_assets.contracts import schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SYMBOL = "symbol"
DATE = "date"
MINUTE_INDEX = "minute_index"  # minutes since the epoch: the order of bars, and the time features' source
CLOSE = "close"
NEXT_CLOSE = "next_close"  # the target minute's close: evaluation only, never a feature
TARGET = "target_return"
SPLIT = "split"
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)

FEATURES = (
    "return_1m",
    "return_1m_lag1",
    "return_1m_lag2",
    "return_5m",
    "return_15m",
    "vwap_deviation",
    "range_1m",
    "volume_ratio_15m",
    "trades_ratio_15m",
    "maker_ratio",
    "taker_buy_share",
    "taker_buy_share_lag1",
    "minute_of_day",
    "day_of_week",
)
ROLLING_BARS = 15  # the window of the volume and trade-count means
LOOKBACK_BARS = 16  # bars a live minute needs: itself and the 15 before it (return_15m)

# The seed project's setup, for seed_replication only (see the module docstring).
SEED_FEATURES = ("day_of_week", "hour", "minute_of_hour", "avg_quantity", "avg_quote_quantity", "maker_ratio")
SEED_TARGET = "avg_price"
PREVIOUS_CLOSE = "previous_close"  # the seed target's persistence baseline: the last close before the minute

MINUTES_PER_DAY = 1440
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)

# Columns of the training frame beyond the features: keys, evaluation and seed columns.
FRAME_COLUMNS = (
    SYMBOL, DATE, schema.MINUTE, MINUTE_INDEX, CLOSE, NEXT_CLOSE, TARGET, *FEATURES,
    *(name for name in SEED_FEATURES if name not in FEATURES), SEED_TARGET, PREVIOUS_CLOSE,
)

# The MapReduce text output as Spark reads it (CONTRACTS.md section 4).
BAR_DDL = ", ".join(
    f"{name} {'STRING' if name == schema.MINUTE else 'BIGINT' if name in schema.INTEGER_BAR_FIELDS else 'DOUBLE'}"
    for name in schema.BAR_FIELDS
)
_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"  # not the `date=D._tmp` staging dirs of a running job


def read_minute_bars(spark: SparkSession, minute_bars_url: str) -> DataFrame:
    """Every day's bars under ``<root>/agg/minute`` (``symbol=S/date=D/part-*``), with a ``symbol`` column."""
    from pyspark.sql import functions as F

    base = minute_bars_url.rstrip("/")
    bars = (spark.read.option("sep", schema.BAR_SEPARATOR).option("basePath", base)
            .schema(f"{BAR_DDL}, {SYMBOL} STRING, {DATE} STRING")
            .csv(f"{base}/{SYMBOL}=*/{DATE}={_DATE_GLOB}/part-*"))
    return bars.drop(DATE).withColumn(SYMBOL, F.col(SYMBOL).cast("string"))


def feature_frame(bars: DataFrame) -> DataFrame:
    """Features, target and seed columns for every bar (nulls where the history or next minute is missing).

    ``bars``: the contract's fields plus ``symbol``; ``minute`` as the ``YYYY-MM-DD HH:MM`` label or
    a timestamp. Row order and partitioning of the input do not matter.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    minute = F.col(schema.MINUTE)
    if dict(bars.dtypes)[schema.MINUTE] == "string":
        minute = F.to_timestamp(minute, "yyyy-MM-dd HH:mm")
    bars = bars.withColumn(schema.MINUTE, minute).withColumn(
        MINUTE_INDEX, F.expr(f"unix_seconds({schema.MINUTE}) div 60"))
    by_minute = Window.partitionBy(SYMBOL).orderBy(MINUTE_INDEX)
    rolling = by_minute.rowsBetween(-(ROLLING_BARS - 1), Window.currentRow)

    def lag(name: str, bars_back: int):
        return F.lag(name, bars_back).over(by_minute)

    def taker_share(bars_back: int):
        if bars_back == 0:
            return F.col("taker_buy_volume") / F.col("volume")
        return lag("taker_buy_volume", bars_back) / lag("volume", bars_back)

    next_minute = F.lead(MINUTE_INDEX, 1).over(by_minute)
    next_close = F.when(next_minute == F.col(MINUTE_INDEX) + 1, F.lead(CLOSE, 1).over(by_minute))
    minute_of_day = F.col(MINUTE_INDEX) % MINUTES_PER_DAY
    columns = {
        "return_1m": F.col(CLOSE) / lag(CLOSE, 1) - 1,
        "return_1m_lag1": lag(CLOSE, 1) / lag(CLOSE, 2) - 1,
        "return_1m_lag2": lag(CLOSE, 2) / lag(CLOSE, 3) - 1,
        "return_5m": F.col(CLOSE) / lag(CLOSE, 5) - 1,
        "return_15m": F.col(CLOSE) / lag(CLOSE, 15) - 1,
        "vwap_deviation": F.col(CLOSE) / F.col("vwap") - 1,
        "range_1m": F.col("high") / F.col("low") - 1,
        # The full window only: fewer bars means the symbol's first minutes, dropped below anyway.
        "volume_ratio_15m": F.when(F.count("volume").over(rolling) == ROLLING_BARS,
                                   F.col("volume") / F.avg("volume").over(rolling)),
        "trades_ratio_15m": F.when(F.count("trades").over(rolling) == ROLLING_BARS,
                                   F.col("trades") / F.avg("trades").over(rolling)),
        "taker_buy_share": taker_share(0),
        "taker_buy_share_lag1": taker_share(1),
        "minute_of_day": minute_of_day,
        "day_of_week": (F.expr(f"{MINUTE_INDEX} div {MINUTES_PER_DAY}") + EPOCH_WEEKDAY) % 7,
        "hour": F.expr(f"(({MINUTE_INDEX} % {MINUTES_PER_DAY}) div 60)"),
        "minute_of_hour": F.col(MINUTE_INDEX) % 60,
        NEXT_CLOSE: next_close,
        TARGET: next_close / F.col(CLOSE) - 1,
        PREVIOUS_CLOSE: lag(CLOSE, 1),
        DATE: F.date_format(schema.MINUTE, "yyyy-MM-dd"),
    }
    return bars.withColumns(columns).select(*FRAME_COLUMNS)


def build_training_frame(bars: DataFrame) -> DataFrame:
    """The rows a model can learn from: every feature known and the next minute traded."""
    return feature_frame(bars).dropna(subset=[*FEATURES, TARGET])


# --- The chronological split ----------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    """Which days train, validate and test: consecutive runs, in this order."""

    train_days: tuple[str, ...]
    validation_days: tuple[str, ...]
    test_days: tuple[str, ...]

    def period_of(self, day: str) -> str | None:
        for period, days in zip(SPLITS, (self.train_days, self.validation_days, self.test_days)):
            if day in days:
                return period
        return None

    def boundaries(self) -> dict[str, str]:
        """First and last day of each period, for metadata and logs."""
        return {period: f"{days[0]} .. {days[-1]}"
                for period, days in zip(SPLITS, (self.train_days, self.validation_days, self.test_days))}


def plan_split(days: list[str], validation_fraction: float = 0.15, test_fraction: float = 0.15) -> SplitPlan:
    """Sorted days cut into train / validation / test, each at least one day, the test the latest."""
    days = sorted(set(days))
    if len(days) < 3:
        raise ValueError(f"a chronological split needs at least 3 days of bars, got {len(days)}: {days}")
    test = max(1, round(len(days) * test_fraction))
    validation = max(1, round(len(days) * validation_fraction))
    train = len(days) - test - validation
    if train < 1:
        raise ValueError(f"{len(days)} days leave no training day with validation={validation}, test={test}")
    return SplitPlan(tuple(days[:train]), tuple(days[train:train + validation]), tuple(days[train + validation:]))


def training_days(frame: DataFrame) -> list[str]:
    """The distinct days of a training frame, sorted."""
    return sorted(row[0] for row in frame.select(DATE).distinct().collect())


def label_split(frame: DataFrame, plan: SplitPlan) -> DataFrame:
    """The frame with a ``split`` column; rows whose target minute lies in the next period are dropped.

    A row belongs to the period of its minute. The last minute of a period would take its target
    from the first minute of the next one, so it is dropped: no price of a later period is ever in
    an earlier period's rows. Features may look back across a boundary: that is only the past.
    """
    from pyspark.sql import functions as F

    def period(day):
        expression = F.lit(None).cast("string")
        for name, days in zip(SPLITS, (plan.train_days, plan.validation_days, plan.test_days)):
            expression = F.when(day.isin(list(days)), F.lit(name)).otherwise(expression)
        return expression

    target_day = F.date_format(F.timestamp_seconds((F.col(MINUTE_INDEX) + 1) * 60), "yyyy-MM-dd")
    labelled = frame.withColumn(SPLIT, period(F.col(DATE))).withColumn("_target_split", period(target_day))
    return (labelled.where(F.col(SPLIT).isNotNull() & (F.col(SPLIT) == F.col("_target_split")))
            .drop("_target_split"))


def chronological_split(frame: DataFrame, plan: SplitPlan | None = None) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(train, validation, test) by day, as ``plan`` says; without a plan, by the frame's ``split`` column
    (the training_set asset's output has one)."""
    from pyspark.sql import functions as F

    if plan is None and SPLIT not in frame.columns:
        raise ValueError(f"the frame has no {SPLIT!r} column: pass a SplitPlan")
    labelled = frame if plan is None else label_split(frame.drop(SPLIT), plan)
    return tuple(labelled.where(F.col(SPLIT) == name) for name in SPLITS)  # type: ignore[return-value]


# --- One live minute, without Spark ---------------------------------------------------------


def latest_features(spark: SparkSession, bars: pd.DataFrame, symbol: str = schema.DEFAULT_SYMBOL) -> pd.DataFrame:
    """The features of the newest bar in ``bars`` (one symbol), as one row, from the newest ``LOOKBACK_BARS``
    bars alone: what a live minute has. Computed by ``feature_frame`` itself (one implementation of the
    features, for training and serving).

    ``bars``: the contract's fields, ``minute`` as a timestamp or ``YYYY-MM-DD HH:MM`` label, in any order.
    Returns ``minute`` (UTC timestamp), ``minute_index``, ``close`` and ``FEATURES``.
    """
    minutes = pd.to_datetime(bars[schema.MINUTE], utc=True, format="mixed")
    ordered = bars.assign(**{schema.MINUTE: minutes}).sort_values(schema.MINUTE).tail(LOOKBACK_BARS)
    if len(ordered) < LOOKBACK_BARS:
        raise ValueError(f"features need the last {LOOKBACK_BARS} bars, got {len(ordered)}")
    labelled = ordered.assign(**{schema.MINUTE: ordered[schema.MINUTE].dt.strftime(schema.MINUTE_FORMAT), SYMBOL: symbol})
    from pyspark.sql import functions as F

    frame = feature_frame(spark.createDataFrame(labelled[[SYMBOL, *schema.BAR_FIELDS]]))
    newest = frame.orderBy(F.col(MINUTE_INDEX).desc()).limit(1).select(MINUTE_INDEX, CLOSE, *FEATURES).toPandas()
    newest.insert(0, schema.MINUTE, [ordered[schema.MINUTE].iloc[-1]])
    return newest

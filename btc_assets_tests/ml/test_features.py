"""Features and split: only past bars feed a feature, the split is chronological, live features equal Spark's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btc_testkit import bars as known_bars
from btc_assets.ml import features

from btc_assets.contracts import schema
from btc_assets_tests.ml.conftest import SYMBOL, spark_bars

VOLATILE = ["open", "high", "low", "close", "avg_price", "vwap", "volume", "quote_volume", "avg_quantity",
            "avg_quote_quantity", "maker_ratio", "taker_buy_volume", "trades"]


def _frame(spark, bars: pd.DataFrame) -> pd.DataFrame:
    frame = features.feature_frame(spark_bars(spark, bars)).toPandas()
    return frame.sort_values([features.SYMBOL, features.MINUTE_INDEX], ignore_index=True)


def _rewrite_from(bars: pd.DataFrame, first_row: int, seed: int) -> pd.DataFrame:
    """Bars whose rows from ``first_row`` on are replaced by other plausible values (earlier rows untouched)."""
    rng = np.random.default_rng(seed)
    changed = bars.copy()
    later = changed.index >= first_row
    for column in VOLATILE:
        values = changed.loc[later, column]
        factor = rng.uniform(0.5, 1.5, later.sum())
        changed.loc[later, column] = (np.maximum(1, np.rint(values * factor)).astype(int) if column == "trades"
                                      else values * factor)
    return changed


def test_no_feature_uses_the_target_minute_or_later(spark, signal_bars):
    bars = signal_bars.head(2 * 1440).reset_index(drop=True)
    cuts = [40, 700, 2000]
    # One Spark pass: each variant is its own symbol, and windows never cross symbols.
    variants = [bars.assign(symbol="BASE")] + [_rewrite_from(bars, cut, seed=cut).assign(symbol=f"CUT{cut}")
                                               for cut in cuts]
    frame = features.feature_frame(spark.createDataFrame(pd.concat(variants, ignore_index=True))).toPandas()
    frame = frame.sort_values([features.SYMBOL, features.MINUTE_INDEX], ignore_index=True)
    base = frame[frame[features.SYMBOL] == "BASE"].reset_index(drop=True)
    columns = list(features.FEATURES)
    for cut in cuts:
        changed = frame[frame[features.SYMBOL] == f"CUT{cut}"].reset_index(drop=True)
        # Rows before the cut see only unchanged bars: every feature identical, to the bit.
        pd.testing.assert_frame_equal(changed.loc[: cut - 1, columns], base.loc[: cut - 1, columns], check_exact=True)
        # The row just before the cut has its target in the changed minute: only its target moved.
        assert changed.loc[cut - 1, features.TARGET] != base.loc[cut - 1, features.TARGET]
        # And the change does reach the features from the cut on (the test would notice a leak).
        assert not changed.loc[cut, columns].equals(base.loc[cut, columns])


def test_features_do_not_depend_on_row_order_or_partitioning(spark, signal_bars):
    bars = signal_bars.head(1440)
    ordered = _frame(spark, bars)
    shuffled = bars.sample(frac=1.0, random_state=3)
    scrambled = features.feature_frame(spark_bars(spark, shuffled).repartition(3)).toPandas()
    scrambled = scrambled.sort_values([features.SYMBOL, features.MINUTE_INDEX], ignore_index=True)
    pd.testing.assert_frame_equal(scrambled, ordered, check_exact=True)


def test_training_frame_rows_and_target(spark, signal_bars):
    bars = signal_bars.head(1440).reset_index(drop=True)
    frame = features.build_training_frame(spark_bars(spark, bars)).toPandas().sort_values(features.MINUTE_INDEX)
    assert frame[list(features.FEATURES) + [features.TARGET]].notna().all().all()
    # The first rows lack the 15 bars of history; rows before a minute without trades lack a target.
    minute_index = (pd.to_datetime(bars[schema.MINUTE], utc=True).astype("int64") // 60_000_000_000).to_numpy()
    has_next = np.append(np.diff(minute_index) == 1, False)
    assert len(frame) == int(has_next[features.LOOKBACK_BARS - 1:].sum())
    by_minute = bars.set_index(minute_index)
    row = frame.iloc[100]
    next_close = by_minute.loc[row[features.MINUTE_INDEX] + 1, "close"]
    assert row[features.NEXT_CLOSE] == next_close
    assert row[features.TARGET] == next_close / row[features.CLOSE] - 1


def test_split_is_chronological(spark, signal_bars):
    frame = features.build_training_frame(spark_bars(spark, signal_bars))
    days = features.training_days(frame)
    plan = features.plan_split(days)
    assert plan == features.SplitPlan(tuple(days[:5]), (days[5],), (days[6],))
    labelled = features.label_split(frame, plan).toPandas()
    periods = {name: labelled[labelled[features.SPLIT] == name] for name in features.SPLITS}
    for name, period_days in zip(features.SPLITS, (plan.train_days, plan.validation_days, plan.test_days)):
        assert set(periods[name][features.DATE]) == set(period_days)
    # Every minute of a period, and the minute its target comes from, lie before the next period starts.
    for earlier, later in ((features.TRAIN, features.VALIDATION), (features.VALIDATION, features.TEST)):
        assert periods[earlier][features.MINUTE_INDEX].max() + 1 < periods[later][features.MINUTE_INDEX].min()
    # Exactly the last minute of each earlier period (target across the boundary) is dropped.
    full = frame.toPandas()
    dropped = set(full[features.MINUTE_INDEX]) - set(labelled[features.MINUTE_INDEX])
    boundary_minutes = {int(pd.Timestamp(f"{period[-1]} 23:59", tz="UTC").value // 60_000_000_000)
                        for period in (plan.train_days, plan.validation_days)}
    assert dropped <= boundary_minutes
    train, validation, test = features.chronological_split(frame, plan)
    assert (train.count(), validation.count(), test.count()) == tuple(len(periods[name]) for name in features.SPLITS)


def test_plan_split_by_day_counts():
    month = [f"2025-04-{day:02d}" for day in range(1, 31)]
    plan = features.plan_split(list(reversed(month)))
    assert (len(plan.train_days), len(plan.validation_days), len(plan.test_days)) == (22, 4, 4)
    assert plan.train_days[-1] < plan.validation_days[0] <= plan.validation_days[-1] < plan.test_days[0]
    assert plan.test_days[-1] == "2025-04-30"
    assert plan.boundaries()["test"] == "2025-04-27 .. 2025-04-30"
    assert features.plan_split(month[:3]) == features.SplitPlan((month[0],), (month[1],), (month[2],))
    with pytest.raises(ValueError, match="at least 3 days"):
        features.plan_split(month[:2])


def test_the_newest_bars_alone_give_the_training_features(spark, noise_bars):
    """A live minute has only its newest 16 bars: its features equal the training frame's row to the bit."""
    bars = noise_bars.head(2 * 1440).reset_index(drop=True)
    frame = _frame(spark, bars)
    columns = [features.MINUTE_INDEX, features.CLOSE, *features.FEATURES]
    for row in [features.LOOKBACK_BARS - 1, 1000, len(bars) - 1]:
        # What the live predictor will have: the newest bars, timestamps as InfluxDB gives them, any order.
        recent = bars.iloc[row + 1 - features.LOOKBACK_BARS: row + 1].assign(
            **{schema.MINUTE: pd.to_datetime(bars[schema.MINUTE].iloc[row + 1 - features.LOOKBACK_BARS: row + 1],
                                             utc=True)})
        live = features.latest_features(spark, recent.sample(frac=1.0, random_state=row), SYMBOL)
        expected = frame.loc[[row], columns].reset_index(drop=True)
        pd.testing.assert_frame_equal(live[columns], expected, check_exact=True, check_dtype=False)
        assert live[schema.MINUTE].iloc[0] == pd.Timestamp(bars[schema.MINUTE].iloc[row], tz="UTC")
    # Longer history changes nothing: only the newest bars count.
    whole = features.latest_features(spark, bars, SYMBOL)
    pd.testing.assert_frame_equal(whole[columns], frame.loc[[len(bars) - 1], columns].reset_index(drop=True),
                                  check_exact=True, check_dtype=False)
    with pytest.raises(ValueError, match="last 16 bars"):
        features.latest_features(spark, bars.tail(features.LOOKBACK_BARS - 1), SYMBOL)


def test_minute_bars_read_from_contract_text(spark, tmp_path, signal_bars):
    """Bars written as the MapReduce job writes them read back through Spark to the same features."""
    bars = signal_bars.head(300).reset_index(drop=True)
    day_dir = tmp_path / "agg" / "minute" / f"symbol={SYMBOL}" / "date=2025-04-01"
    day_dir.mkdir(parents=True)
    (day_dir / "part-00000").write_text(known_bars.bars_text(bars))
    staging = tmp_path / "agg" / "minute" / f"symbol={SYMBOL}" / "date=2025-04-01._tmp"
    staging.mkdir()
    (staging / "part-00000").write_text(known_bars.bars_text(bars))  # a running job's output: never read
    read = features.read_minute_bars(spark, f"file://{tmp_path}/agg/minute")
    assert read.count() == len(bars)
    from_text = features.feature_frame(read).toPandas().sort_values(features.MINUTE_INDEX, ignore_index=True)
    pd.testing.assert_frame_equal(from_text, _frame(spark, bars), check_exact=True)

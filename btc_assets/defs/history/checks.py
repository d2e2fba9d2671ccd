"""Blocking checks on a day's minute bars: against an independent parse of the day's raw file, and against
Binance's own 1-minute klines of the day."""

import math

import dagster as dg

from btc_assets.defs.history.assets import day_path, exchange_klines, minute_bars
from btc_assets.defs.resources import MarketResource, StorageResource
from btc_assets.contracts import schema
from btc_assets.history.bar_files import id_gaps, missing_minutes, raw_totals, read_bar_text, read_bars

CHECKS = {
    "trades_conserved": "trades in the bars == rows of the raw file that parse as trades",
    "volume_conserved": "sum of volume and of quote volume in the bars == the raw file's (1e-9 relative)",
    "ohlc_consistent": "high >= open, close >= low in every bar",
    "bars_inside_day": "every bar's minute lies inside the partition's day",
    "trade_ids_contiguous": "first/last trade ids cover the file with no gap (a gap is reported with its ids)",
}


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(name, asset=minute_bars, description=text, blocking=True)
           for name, text in CHECKS.items()],
    can_subset=False,
)
def minute_bar_checks(context: dg.AssetCheckExecutionContext, storage: StorageResource, market: MarketResource):
    """The day's bars against its raw trades; missing minutes are reported, never a failure."""
    day = context.partition_key
    fs = storage.storage.fs
    outcomes = {name: [] for name in CHECKS}
    metadata = {name: {} for name in CHECKS}
    for symbol in market.symbol_list:
        bars = read_bars(fs, day_path(storage.storage, "bars", symbol, day))
        with fs.open(day_path(storage.storage, "raw", symbol, day)) as stream:
            raw = raw_totals(stream)
        trades = int(bars["trades"].sum())
        outcomes["trades_conserved"].append(trades == raw["trades"])
        metadata["trades_conserved"][symbol] = {"bars": trades, "raw": raw["trades"]}

        volume, quote = float(bars["volume"].sum()), float(bars["quote_volume"].sum())
        outcomes["volume_conserved"].append(math.isclose(volume, raw["volume"], rel_tol=1e-9)
                                            and math.isclose(quote, raw["quote_volume"], rel_tol=1e-9))
        metadata["volume_conserved"][symbol] = {"bars_volume": volume, "raw_volume": raw["volume"],
                                                "bars_quote_volume": quote, "raw_quote_volume": raw["quote_volume"]}

        bad_ohlc = bars[(bars["high"] < bars[["open", "close"]].max(axis=1))
                        | (bars["low"] > bars[["open", "close"]].min(axis=1))]
        outcomes["ohlc_consistent"].append(bad_ohlc.empty)
        metadata["ohlc_consistent"][symbol] = {"bad_bars": len(bad_ohlc),
                                               "first_bad": bad_ohlc[schema.MINUTE].astype(str).head(5).tolist()}

        outside = bars[bars[schema.MINUTE].dt.strftime("%Y-%m-%d") != day]
        missing, longest = missing_minutes(bars, day)
        outcomes["bars_inside_day"].append(outside.empty)
        metadata["bars_inside_day"][symbol] = {"outside": len(outside), "missing_minutes": missing,
                                               "longest_missing_run": longest}

        gaps = id_gaps(bars)
        covered = (not bars.empty and int(bars["first_trade_id"].min()) == raw["first_trade_id"]
                   and int(bars["last_trade_id"].max()) == raw["last_trade_id"]
                   and trades == raw["last_trade_id"] - raw["first_trade_id"] + 1)
        outcomes["trade_ids_contiguous"].append(covered and not gaps)
        metadata["trade_ids_contiguous"][symbol] = {
            "first_trade_id": raw["first_trade_id"], "last_trade_id": raw["last_trade_id"],
            "gaps": [f"{low}..{high}" for low, high in gaps]}

    for name in CHECKS:
        yield dg.AssetCheckResult(check_name=name, asset_key=minute_bars.key, passed=all(outcomes[name]),
                                  metadata={"by_symbol": dg.MetadataValue.json(metadata[name])})


@dg.asset_check(asset=minute_bars, blocking=True, additional_deps=[exchange_klines],
                description="each minute's open, high, low, close, volume, quote volume, trade count and taker-buy "
                            "volume equal Binance's 1-minute klines (exchange_klines); a kline minute without "
                            "trades matches when there is no bar, and is counted")
def bars_match_klines(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                      market: MarketResource) -> dg.AssetCheckResult:
    """The day's MapReduce bars against the klines Binance computed from its own trades: a hole in the trade
    file, a re-uploaded day or a bug in the bar code shows as the minutes and fields that differ."""
    from btc_assets.history import klines

    day = context.partition_key
    fs = storage.storage.fs
    verdicts, failures = {}, []
    for symbol in market.symbol_list:
        path = storage.storage.path(schema.raw_klines_path("", symbol, day).lstrip("/"))
        if not fs.exists(path):
            failures.append(f"{symbol}: no klines at {path}: materialize exchange_klines for {day}")
            verdicts[symbol] = {"klines": "missing"}
            continue
        bars = klines.bar_lines(read_bar_text(fs, day_path(storage.storage, "bars", symbol, day)))
        result = klines.compare(bars, klines.parse_klines(fs.read(path).decode()))
        verdicts[symbol] = {"minutes": result.minutes, "matched": result.matched,
                            "empty_minutes": result.empty_minutes,
                            "mismatched_minutes": len(result.mismatched_minutes()),
                            "first_differences": [list(difference) for difference in result.differences[:10]],  # minute, field, bar, kline
                            "bars_without_kline": result.bars_without_kline[:10]}
        context.log.info(f"{symbol} {day}: {result.summary()}")
        if not result.ok:
            failures.append(f"{symbol}: {result.summary()}")
    empty = {symbol: facts.get("empty_minutes", 0) for symbol, facts in verdicts.items()}
    passed = "every minute equal to Binance's klines (minutes without trades: " + \
        ", ".join(f"{symbol} {count}" for symbol, count in empty.items()) + ")"
    return dg.AssetCheckResult(
        passed=not failures, description="; ".join(failures) if failures else passed,
        metadata={"by_symbol": dg.MetadataValue.json(verdicts),
                  "mismatched_minutes": dg.MetadataValue.int(sum(facts.get("mismatched_minutes", 0)
                                                                 for facts in verdicts.values())),
                  "empty_minutes": dg.MetadataValue.int(sum(empty.values()))})

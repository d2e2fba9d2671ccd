"""Daily-partitioned history: raw trade files in HDFS and their MapReduce minute bars."""

import time
from datetime import timedelta

import dagster as dg

from btc_assets.defs.resources import BinanceHistoryResource, MapReduceResource, MarketResource, StorageResource
from btc_assets.contracts import bars, schema
from btc_assets import config
from btc_assets.history.bar_files import missing_minutes, read_bars
from btc_assets.clients.hadoop_streaming import StreamingJob
from btc_assets.history.download import ingest_day

# Binance's spot archive starts long before; 2024 keeps the UI's partition list useful. The last
# partition is yesterday (UTC): the newest complete day.
MAPREDUCE_POOL = "mapreduce"
# The newest day is in by 09:00 UTC: a materialization in the 24 hours before (btc_assets/defs/platform/freshness.py).
HISTORY_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 9 * * *", lower_bound_delta=timedelta(hours=24),
                                            timezone="UTC")
MAP_SLOTS = 2  # parallel map tasks in the local profile (one per core of the target machine)
daily_partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC")
# A download that still fails after the client's own retries is tried again later, from scratch.
DOWNLOAD_RETRY = dg.RetryPolicy(max_retries=config.get_int("BTC_DOWNLOAD_RETRIES"),
                                delay=config.get_int("BTC_DOWNLOAD_RETRY_DELAY_SECONDS"),
                                backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def day_path(storage, kind: str, symbol: str, day: str) -> str:
    relative = {"raw": schema.raw_trades_path, "bars": schema.minute_bars_dir}[kind]("", symbol, day)
    return storage.path(relative.lstrip("/"))


@dg.asset(partitions_def=daily_partitions, group_name="history", kinds={"hdfs"},
          retry_policy=DOWNLOAD_RETRY)
def raw_trades(context: dg.AssetExecutionContext, storage: StorageResource,
               binance_history: BinanceHistoryResource, market: MarketResource) -> dg.MaterializeResult:
    """The day's Binance spot trades CSV in HDFS, per symbol, exactly as data.binance.vision publishes it.

    Downloaded with retries, verified against its SHA-256 `.CHECKSUM`, unzipped and streamed to
    `/btc/raw/trades/symbol=S/date=D/S-trades-D.csv` through a temporary file renamed on success:
    a missing day (404) or a checksum mismatch fails the partition and leaves HDFS untouched.
    """
    day = context.partition_key
    client = binance_history.client(log=context.log.warning)
    facts = []
    for symbol in market.symbol_list:
        started = time.monotonic()
        raw = ingest_day(client, storage.storage, symbol, day)
        context.log.info(f"{symbol} {day}: {raw.rows:,} rows, {raw.bytes / 1e6:.1f} MB in "
                         f"{time.monotonic() - started:.1f}s -> {raw.path}")
        facts.append(raw)
    first = facts[0]
    return dg.MaterializeResult(metadata={
        "rows": dg.MetadataValue.int(sum(raw.rows for raw in facts)),
        "bytes": dg.MetadataValue.int(sum(raw.bytes for raw in facts)),
        "first_trade_id": first.first_trade_id, "last_trade_id": first.last_trade_id,
        "time_range": f"{_iso(first.first_time_ms)} .. {_iso(first.last_time_ms)}",
        "source_url": dg.MetadataValue.url(first.source_url),
        "sha256": first.sha256,
        "path": dg.MetadataValue.path(first.path),
        "symbols": dg.MetadataValue.json([raw.as_dict() for raw in facts]),
        **per_symbol_metadata({raw.symbol: {"rows": raw.rows, "bytes": raw.bytes} for raw in facts}),
    })


@dg.asset(partitions_def=daily_partitions, group_name="history", kinds={"hdfs"},
          retry_policy=DOWNLOAD_RETRY)
def exchange_klines(context: dg.AssetExecutionContext, storage: StorageResource,
                    binance_history: BinanceHistoryResource, market: MarketResource) -> dg.MaterializeResult:
    """Binance's own 1-minute klines of the day in HDFS, per symbol, as data.binance.vision publishes them.

    Fetched like `raw_trades` (retries, SHA-256 `.CHECKSUM`, a temporary file renamed on success) from
    `data/spot/daily/klines/S/1m/S-1m-D.zip`, parsed (12 columns; open times in ms before 2025, µs from 2025)
    and stored as `/btc/raw/klines/symbol=S/date=D/S-1m-D.csv`. The `bars_match_klines` check on
    `minute_bars` compares the MapReduce bars with them, minute by minute.
    """
    from btc_assets.history.klines import ingest_klines

    day = context.partition_key
    client = binance_history.client(log=context.log.warning)
    facts = []
    for symbol in market.symbol_list:
        raw = ingest_klines(client, storage.storage, symbol, day)
        context.log.info(f"{symbol} {day}: {raw.rows:,} klines (open times in {raw.unit}) -> {raw.path}")
        facts.append(raw)
    return dg.MaterializeResult(metadata={
        "rows": dg.MetadataValue.int(sum(raw.rows for raw in facts)),
        "time_unit": facts[0].unit,
        "source_url": dg.MetadataValue.url(facts[0].source_url),
        "sha256": facts[0].sha256,
        "path": dg.MetadataValue.path(facts[0].path),
        "symbols": dg.MetadataValue.json([raw.as_dict() for raw in facts]),
    })


@dg.asset(partitions_def=daily_partitions, deps=[raw_trades], group_name="history", kinds={"hdfs", "hadoop"},
          # At most BTC_MAPREDUCE_CONCURRENCY jobs at once (the instance's pool limit), however many runs a backfill queues.
          pool=MAPREDUCE_POOL, freshness_policy=HISTORY_FRESHNESS)
def minute_bars(context: dg.AssetExecutionContext, storage: StorageResource,
                mapreduce: MapReduceResource, market: MarketResource) -> dg.MaterializeResult:
    """One-minute bars of the day (CONTRACTS.md section 4) from a Hadoop Streaming job.

    `mapreduce/mapper.py` combines in the mapper (one partial per minute, not one record per
    trade) and `reducer.py` merges the partials. Output goes to a temporary directory that replaces
    `/btc/agg/minute/symbol=S/date=D/` only when the job succeeded, so a re-run replaces a day's
    bars instead of appending to them. Metadata: bars, trades, malformed lines (Hadoop counters),
    duration, throughput and the day's minutes without trades.
    """
    day = context.partition_key
    fs = storage.storage.fs
    totals = {"bars": 0, "trades": 0, "malformed_lines": 0}
    per_symbol = {}
    duration = 0.0
    for symbol in market.symbol_list:
        counters, elapsed, target = compute_minute_bars(mapreduce, storage.storage, symbol, day, context=context)
        duration += elapsed
        frame = read_bars(fs, target)
        missing, longest = missing_minutes(frame, day)
        btc = {name.split(".", 1)[1]: value for name, value in counters.items()
               if name.startswith(schema.COUNTER_GROUP + ".")}
        per_symbol[symbol] = {"bars": len(frame), "trades": int(frame["trades"].sum()),
                              "malformed_lines": btc.get(schema.MALFORMED_COUNTER, 0),
                              "skipped_by_reason": {reason: btc[reason] for reason in schema.MALFORMED_REASONS
                                                    if btc.get(reason)},
                              "missing_minutes": missing, "longest_missing_run": longest,
                              "seconds": round(elapsed, 2), "path": target}
        for key in totals:
            totals[key] += per_symbol[symbol][key]
        context.log.info(f"{symbol} {day}: {len(frame)} bars from {per_symbol[symbol]['trades']:,} trades "
                         f"in {elapsed:.1f}s ({per_symbol[symbol]['trades'] / elapsed:,.0f} trades/s)")
    first = per_symbol[market.symbol_list[0]]
    return dg.MaterializeResult(metadata={
        "bars": dg.MetadataValue.int(totals["bars"]),
        "trades": dg.MetadataValue.int(totals["trades"]),
        "malformed_lines": dg.MetadataValue.int(totals["malformed_lines"]),
        "duration_s": dg.MetadataValue.float(round(duration, 2)),
        "trades_per_second": dg.MetadataValue.float(float(round(totals["trades"] / duration if duration else 0.0))),
        "missing_minutes": dg.MetadataValue.int(first["missing_minutes"]),
        "longest_missing_run": dg.MetadataValue.int(first["longest_missing_run"]),
        "path": dg.MetadataValue.path(first["path"]),
        "symbols": dg.MetadataValue.json(per_symbol),
        **per_symbol_metadata({symbol: {"bars": facts["bars"], "trades": facts["trades"],
                                        "malformed_lines": facts["malformed_lines"],
                                        "missing_minutes": facts["missing_minutes"],
                                        "trades_per_second": round(facts["trades"] / facts["seconds"], 1)
                                        if facts["seconds"] else 0.0}
                               for symbol, facts in per_symbol.items()}),
    })


def compute_minute_bars(mapreduce: MapReduceResource, storage, symbol: str, day: str,
                        context: dg.AssetExecutionContext | None = None):
    """Run the MapReduce job over a day's raw file; replace the day's bars directory with its output.

    Returns (Hadoop counters, seconds from job start to output in place, bars directory). The job
    writes to a staging directory that is renamed over the day's bars only when it succeeded, and
    deleted when it failed or was cancelled. The benchmark calls this too (without a ``context``), so
    it measures exactly what the asset runs.
    """
    fs = storage.fs
    source = day_path(storage, "raw", symbol, day)
    target = day_path(storage, "bars", symbol, day)
    staging = target + "._tmp"
    fs.delete(staging, recursive=True)
    status = fs.status(source)
    if status is None:
        raise FileNotFoundError(f"{source} does not exist: materialize raw_trades for {day} first")
    scripts = config.mapreduce_dir()
    # The map tasks hand the mapper blocks of whole lines (LineBlockInputFormat), not a line at a time.
    line_input, line_by_line = mapreduce.line_input()
    if line_by_line and context is not None:
        context.log.warning(f"minute_bars reads {symbol} {day} line by line: {line_by_line}")
    job = StreamingJob(
        mapper=str(scripts / "mapper.py"), reducer=str(scripts / "reducer.py"),
        files=bars.streaming_support_files(), inputs=[storage.url(source)], output=storage.url(staging),
        input_format=line_input.get("input_format", ""), libjars=line_input.get("libjars", ()),
        conf={**line_input.get("conf", {}),
              "mapreduce.job.name": f"minute_bars {symbol} {day}", "mapreduce.job.reduces": "1",
              # LocalJobRunner runs one map task at a time unless told otherwise: use both cores, with
              # one split per core (not one per 128 MB block, which leaves a lone third split). On YARN
              # the block-sized splits stand: a map task per block, as many at once as the cluster has room.
              **({"mapreduce.local.map.tasks.maximum": str(MAP_SLOTS),
                  "mapreduce.input.fileinputformat.split.minsize": str(-(-status.length // MAP_SLOTS))}
                 if mapreduce.framework == "local" else {}),
              # The combining mapper emits ~1,440 lines: a small sort buffer is plenty.
              "mapreduce.task.io.sort.mb": "16",
              # The client polls for progress/completion every 1 s/5 s by default: a second lost per job.
              "mapreduce.client.progressmonitor.pollinterval": "100",
              "mapreduce.client.completion.pollinterval": "100"})
    started = time.monotonic()
    try:
        counters = mapreduce.run(job, context=context)
    except BaseException:
        fs.delete(staging, recursive=True)
        raise
    fs.delete(target, recursive=True)
    fs.mkdirs(target.rsplit("/", 1)[0])
    fs.rename(staging, target)
    return counters, time.monotonic() - started, target


def per_symbol_metadata(figures: dict[str, dict[str, float | int]]) -> dict[str, dg.MetadataValue]:
    """Each symbol's figures as their own numbers (``<SYMBOL>_<figure>``, which the UI plots across partitions)
    and one table of them all, so a second symbol is as visible as the first."""
    metadata: dict[str, dg.MetadataValue] = {}
    names = list(next(iter(figures.values()), {}))
    rows = ["| symbol | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for symbol, values in figures.items():
        for name, value in values.items():
            metadata[f"{symbol}_{name}"] = (dg.MetadataValue.int(value) if isinstance(value, int)
                                            else dg.MetadataValue.float(float(value)))
        rows.append(f"| {symbol} | " + " | ".join(f"{values[name]:,}" for name in names) + " |")
    metadata["per_symbol"] = dg.MetadataValue.md("\n".join(rows))
    return metadata


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"

"""`btc-pipeline`: the local stack, the end-to-end demo and the test run.

    btc-pipeline stack up|down|status|logs|reset|provision   the local engines (Kafka, HDFS, Spark, InfluxDB)
    btc-pipeline demo                                        stack up, status, materialize the assets
    btc-pipeline test [pytest args]                          provision the engines, run the test suite
    btc-pipeline ui [--supervise on|off]                     the Dagster UI's URL; the stream's sensor and schedule
    btc-pipeline config --env-example | --markdown           the documented settings
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from btc_assets import config

from btc_assets.contracts import schema
from btc_assets.clients.jvm import JavaError
from btc_assets.processes import ProcessError
from btc_localstack.base import REPO_ROOT, StackError, progress


def _stack(topology: str = "local"):
    from btc_localstack.manager import LocalStack

    return LocalStack(topology=topology)


ENDPOINT_KEYS = ("namenode", "webhdfs", "bootstrap_servers", "url", "master")


def print_status(stack, verbose: bool = False) -> bool:
    """One line per engine: up/DOWN, its endpoints (every detail with ``verbose``)."""
    status = stack.status()
    width = max(len(name) for name in status)
    for name, facts in status.items():
        running = facts.get("running")
        mark = "up  " if running is True else ("    " if isinstance(running, str) else "DOWN")
        shown = {key: value for key, value in facts.items() if key != "running"
                 and (verbose or key in ENDPOINT_KEYS)}
        details = "  ".join(str(value) for value in shown.values()) if not verbose else \
            ", ".join(f"{key}={value}" for key, value in shown.items())
        note = running if isinstance(running, str) else ""
        print(f"{mark} {name:<{width}}  {note} {details}".rstrip())
    print(f"env file: {stack.env_file}")
    return all(facts.get("running") is not False for facts in status.values())


def cmd_stack(args) -> int:
    stack = _stack(args.topology)
    names = args.services or None
    if args.action == "provision":
        stack.provision(names)
    elif args.action == "up":
        stack.up(names)
        print_status(stack)
    elif args.action == "down":
        if not names and stack.topology == "local":  # the stream services would crash-loop without their engines
            from btc_localstack.streams import stream_services

            stream_services(stack.paths.state_dir).stop_all()
        stack.down(names, kill=args.kill)
    elif args.action == "status":
        if args.json:
            print(json.dumps(stack.status(), indent=2, default=str))
            return 0 if stack.is_up() else 3
        return 0 if print_status(stack, verbose=args.verbose) else 3
    elif args.action == "logs":
        for service in stack.select(names):
            for log in service.log_files():
                print(f"==> {log} <==")
                lines = log.read_text(errors="replace").splitlines()[-args.lines:]
                print("\n".join(lines))
    elif args.action == "reset":
        if not names:
            raise StackError("name the service(s) to reset (their data is deleted), e.g. "
                             "`btc-pipeline stack reset influxdb`")
        stack.down(names)
        for service in stack.select(names):
            shutil.rmtree(service.state, ignore_errors=True)
            progress(service.name, f"data deleted ({service.state})")
    return 0


def dagster_env(stack) -> dict[str, str]:
    """This environment with the stack's settings, DAGSTER_HOME (its PostgreSQL-backed instance) among them."""
    env = dict(os.environ)
    env.update(stack.env())
    return env


@contextlib.contextmanager
def history_source(args, stack, env: dict[str, str]):
    """With ``--source emulator``, serve generated days as data.binance.vision would, for the runs in ``env``."""
    if args.source != "emulator":
        yield
        return
    from btc_testkit import history_emulator

    with history_emulator.serve(cache_dir=stack.paths.cache_dir / "history-emulator",
                                symbols=tuple(config.symbols()),
                                trades_per_day=args.trades_per_day or None) as archive:
        env["BTC_BINANCE_HISTORY_URL"] = archive.base_url
        progress("history", f"Binance history emulator on {archive.base_url}")
        yield


def cmd_demo(args) -> int:
    """The main job end to end on the local stack."""
    started = time.monotonic()
    stack = _stack()
    stack.up()
    print_status(stack)
    env = dagster_env(stack)
    from btc_localstack import demo

    logs = stack.paths.state_dir / "demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    steps = demo.demo_steps(args)
    with history_source(args, stack, env):
        for number, (title, command) in enumerate(steps, start=1):
            if run_step(f"{number:02d}", title, command, env, logs) != 0:
                return 1
    if not demo.trains_models(args) and not args.no_models:
        progress("demo", f"models skipped: training needs {demo.MIN_TRAINING_DAYS} days of history (--days)")
    if args.source == "emulator" and not args.no_stream:
        if demo_live(stack, warmup_minutes=demo.WARMUP_MINUTES if demo.trains_models(args) else 0.0) != 0:
            return 1
        if demo.trains_models(args):
            if wait_for_live_bars(stack) != 0 or wait_for_stream_predictions(stack) != 0:
                return 1
            title, command = demo.prediction_step()
            if run_step(f"{len(steps) + 1:02d}", title, command, env, logs) != 0:
                return 1
    progress("demo", f"done in {time.monotonic() - started:.0f}s; the stack keeps running "
                     "(`btc-pipeline stack down` stops it; `dagster dev` shows the runs)")
    return 0


# What a step's log says worth showing: a check's verdict, a symbol's day ("BTCUSDT 2025-04-01: ..."),
# a model's figures ("gbt: trained in ...", "seed rf: ...").
_MODEL_NAMES = "|".join(schema.MODELS)
STEP_SUMMARY = re.compile(r" - (?:INFO|DEBUG) - .* - (?:\w+ - )?(?:(?P<check>Asset check '\w+' on '\w+' "
                          rf"(?:passed|failed))(?:\. Description: .*)?|(?P<fact>(?:[A-Z0-9]+ \d{{4}}-\d\d-\d\d|(?:seed )?(?:{_MODEL_NAMES})): .*))\.?$")


def run_step(number: str, title: str, command: list[str], env: dict[str, str], logs: Path,
             component: str = "demo") -> int:
    """One demo step: the command's full output goes to a log file, the console gets a summary."""
    log_path = logs / f"{number}-{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')[:40]}.log"
    progress(component, f"{title} …")
    started = time.monotonic()
    with open(log_path, "w") as log:
        result = subprocess.run(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    output = log_path.read_text(errors="replace").splitlines()
    if result.returncode != 0:
        print("\n".join(output[-40:]), file=sys.stderr)
        progress(component, f"FAILED after {time.monotonic() - started:.0f}s (exit {result.returncode}); "
                         f"full log: {log_path}")
        return result.returncode
    if len(output) <= 15 and not any(" - dagster - " in line for line in output):
        for line in output:  # a short listing (e.g. the assets): show it as it is
            progress(component, f"    {line}")
    checks = []
    for line in output:
        match = STEP_SUMMARY.search(line)
        if match and match["fact"]:
            progress(component, f"    {match['fact']}")
        elif match and match["check"]:
            checks.append(match["check"].split("'")[1] + (" ok" if match["check"].endswith("passed") else " FAILED"))
    if checks:
        progress(component, f"    checks: {', '.join(checks)}")
    progress(component, f"    done in {time.monotonic() - started:.0f}s (log {log_path})")
    return 0


def cmd_backfill(args) -> int:
    """A Dagster backfill of the history assets over a range of days, on the stack's instance (it shows in the UI's
    backfill page); the daemon runs it, at most BTC_MAPREDUCE_CONCURRENCY MapReduce jobs at once."""
    from btc_localstack.dagster import BACKFILL_DONE, backfill_status, launch_backfill
    from btc_localstack.demo import demo_days

    start, end = date.fromisoformat(args.start), date.fromisoformat(args.end)
    if end < start:
        raise StackError(f"--end {end} is before --start {start}")
    stack = _stack()
    dagster = stack.services["dagster"]
    if not dagster.is_running():
        raise StackError("the Dagster webserver and daemon are not running: `btc-pipeline stack up` starts them")
    days = demo_days(args.start, (end - start).days + 1)
    backfill_id = launch_backfill(dagster.url, ["raw_trades", "exchange_klines", "minute_bars"], days,
                                  title=f"history {days[0]}..{days[-1]}")
    progress("backfill", f"{len(days)} days submitted: {dagster.url}/runs/b/{backfill_id}")
    if args.no_wait:
        print(backfill_id)
        return 0
    told = None
    while True:
        status = backfill_status(dagster.url, backfill_id)
        runs = status["runs"] or []
        counts = {state: sum(run["status"] == state for run in runs) for state in ("SUCCESS", "FAILURE", "STARTED", "QUEUED")}
        line = (f"{status['status'].lower()}: {counts['SUCCESS']} of {len(days)} days done, {counts['STARTED']} running, "
                f"{counts['QUEUED']} queued, {counts['FAILURE']} failed")
        if line != told:
            progress("backfill", line)
            told = line
        if status["status"] in BACKFILL_DONE and not counts["STARTED"] and not counts["QUEUED"]:
            break
        time.sleep(3)
    print(backfill_id)
    if counts["FAILURE"] or status["status"] not in ("COMPLETED", "COMPLETED_SUCCESS"):
        progress("backfill", f"{counts['FAILURE']} of {len(days)} days failed: see {dagster.url}/runs/b/{backfill_id}")
        return 1
    return 0


def cmd_replay(args) -> int:
    """A stored day replayed as the live stream: a run of `replay_job` on the stack's Dagster (the UI shows it),
    followed here until it ends (btc_assets.stream.replay)."""
    from btc_localstack.dagster import RUN_DONE, launch_run, run_messages

    from btc_assets.defs.history.assets import daily_partitions

    date.fromisoformat(args.date)
    if args.date not in daily_partitions.get_partition_keys():
        raise StackError(f"{args.date} is not a day of replay_job's partitions: from "
                         f"{daily_partitions.start:%Y-%m-%d} to yesterday (UTC)")
    dagster = _stack().services["dagster"]
    if not dagster.is_running():
        raise StackError("the Dagster webserver and daemon are not running: `btc-pipeline stack up` starts them")
    run_config = {"ops": {"stream_replay": {"config": {"symbol": args.symbol or "", "speed": args.speed}}}}
    run_id = launch_run(dagster.url, "replay_job", run_config, partition=args.date)
    progress("replay", f"run {run_id}: {dagster.url}/runs/{run_id}")
    if args.no_wait:
        print(run_id)
        return 0
    cursor, status = None, "QUEUED"
    while True:
        status, messages, cursor = run_messages(dagster.url, run_id, cursor)
        for message in messages:
            progress("replay", message)
        if status in RUN_DONE:
            break
        time.sleep(2)
    print(run_id)
    if status != "SUCCESS":
        progress("replay", f"the replay run ended {status}: see {dagster.url}/runs/{run_id}")
        return 1
    return 0


def _reader(stack):
    from btc_assets.clients.influx import Influx

    env = stack.env()
    return Influx(env["BTC_INFLUX_URL"], env["BTC_INFLUX_ORG"], env["BTC_INFLUX_BUCKET"], env["BTC_INFLUX_READ_TOKEN"])


def demo_live(stack, timeout_s: float = 300.0, warmup_minutes: float = 0.0) -> int:
    """Start the live path on the emulator and wait until its trades and minute bars are in InfluxDB and the
    producer and the Spark job have both sent a heartbeat since this start."""
    from btc_assets.stream.health import PRODUCER_COMPONENT, newest_time
    from btc_localstack.streams import start_live, stream_services

    stack.apply_env()
    services = stream_services(stack.paths.state_dir)
    warmup_minutes = emulator_warmup(stack, services, warmup_minutes)
    reader = _reader(stack)
    warmup = f", opening {warmup_minutes:.0f} minutes in the past" if warmup_minutes else ""
    progress("demo", f"live: Binance emulator (300 trades/s{warmup}) -> producer -> Kafka -> Spark -> InfluxDB …")
    started = time.time()
    start_live(services, emulator_rate=300.0, warmup_minutes=warmup_minutes)

    def beating(component: str) -> bool:
        """A heartbeat written since this start: the data of a stream that ran before does not count."""
        newest = newest_time(reader, schema.HEALTH_MEASUREMENT, "-10m", component=component)
        return newest is not None and newest >= started

    def count(measurement: str) -> int:
        rows = reader.query(f'from(bucket: "{reader.bucket}") |> range(start: -15m)\n'
                            f'  |> filter(fn: (r) => r._measurement == "{measurement}"'
                            f' and (r._field == "trades" or r._field == "trade_id"))\n'
                            f'  |> group() |> count()')
        return rows[0]["_value"] if rows else 0

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            trades, bars = count(schema.TRADES_MEASUREMENT), count(schema.BARS_MEASUREMENT)
            if trades and bars and beating(PRODUCER_COMPONENT) and beating("spark"):
                progress("demo", f"    live: {trades:,} trades and {bars} minute bars in InfluxDB (last 15 min); "
                                 "the stream keeps running (`btc-pipeline stream stop`)")
                return 0
            time.sleep(3)
    finally:
        reader.close()
    logs = ", ".join(facts["log"] for facts in services.status().values())
    progress("demo", f"FAILED: no live trades and bars in InfluxDB after {timeout_s:.0f}s; logs: {logs}")
    return 1


def emulator_warmup(stack, services, minutes: float) -> float:
    """The warm-up for an emulator about to start, shortened so that it never trades in minutes the stream
    already has: before the newest trade in Kafka (the stream's event-time watermark would drop such trades
    from the bars) or the newest bar in InfluxDB. A stream that ran recently left those bars, and with them
    the history predictions need. 0 when the emulator already runs (its market is not started again)."""
    if not minutes or services.processes["binance-emulator"].is_running():
        return 0.0
    reader = _reader(stack)
    try:
        return _minutes_before_newest_trade(reader, minutes)
    finally:
        reader.close()


def _minutes_before_newest_trade(reader, minutes: float) -> float:
    from btc_assets.stream.producer import last_events_in_kafka

    rows = reader.query(f'from(bucket: "{reader.bucket}") |> range(start: -{int(minutes) + 1}m)\n'
                        f'  |> filter(fn: (r) => r._measurement == "{schema.BARS_MEASUREMENT}" and r._field == "close")\n'
                        f'  |> group() |> last()')
    newest = [rows[0]["_time"].timestamp() + 60] if rows else []
    topics = {symbol: schema.trade_topic(symbol, config.get("BTC_KAFKA_TOPIC_TEMPLATE")) for symbol in config.symbols()}
    events = last_events_in_kafka(config.get("BTC_KAFKA_BOOTSTRAP_SERVERS"), topics)
    newest += [int(event[schema.EVENT_TRADE_TIME]) / 1000 for event in events.values()]
    if not newest:
        return minutes
    since = (time.time() - max(newest)) / 60 - 1  # a minute's margin
    return max(0.0, min(minutes, float(int(since))))


def wait_for_live_bars(stack) -> int:
    """Wait until every symbol has the complete live bars one scored prediction needs (features + the next bar);
    a minute brings one more, so the wait is bounded by the bars still missing."""
    from btc_assets.ml import features, predictions

    needed = features.LOOKBACK_BARS + 1
    reader = _reader(stack)
    deadline, told = None, 0.0
    counts: dict[str, int] = {}
    try:
        while deadline is None or time.monotonic() < deadline:
            bars = predictions.read_live_bars(reader, config.symbols(), predictions.history_minutes(60))
            counts = predictions.bars_per_symbol(predictions.complete_bars(bars, time.time()))
            missing = max(needed - counts.get(symbol, 0) for symbol in config.symbols())
            if missing <= 0:
                progress("demo", f"    live: complete minute bars {counts}: enough to predict from")
                return 0
            if deadline is None:
                deadline = time.monotonic() + (missing + 3) * 60.0
            if time.monotonic() - told >= 60:
                progress("demo", f"    live: complete minute bars {counts or 'none yet'}; a prediction needs {needed} "
                                 f"(about {missing} more minutes) …")
                told = time.monotonic()
            time.sleep(5)
    finally:
        reader.close()
    progress("demo", f"FAILED: fewer than {needed} complete live minute bars in time: {counts}; "
                     "is the stream running? (`btc-pipeline stream status`)")
    return 1


def wait_for_stream_predictions(stack, timeout_s: float = 240.0) -> int:
    """Wait until the Spark job's live scorer has predicted the minute trading now for every symbol with every
    model (it loads the models just trained at its next completed minute), and show the forecasts."""
    from btc_assets.ml import predictions

    reader = _reader(stack)
    deadline = time.monotonic() + timeout_s
    found: dict[str, dict[str, float]] = {}
    try:
        while time.monotonic() < deadline:
            now_minute = int(time.time() // 60)
            found = {}
            for symbol in config.symbols():
                for model in schema.MODELS:
                    rows = [row for row in reader.query(predictions.predictions_flux(reader.bucket, symbol, model, 2))
                            if int(row["_time"].timestamp()) // 60 >= now_minute]
                    if rows:
                        found.setdefault(symbol, {})[model] = rows[-1]["predicted_price"]
            if all(len(found.get(symbol, {})) == len(schema.MODELS) for symbol in config.symbols()):
                minute = time.strftime("%H:%M", time.gmtime(now_minute * 60))
                for symbol, prices in found.items():
                    shown = ", ".join(f"{model} {price:,.2f}" for model, price in prices.items())
                    progress("demo", f"    live predictions in the stream: {symbol} for {minute} UTC: {shown}")
                return 0
            time.sleep(3)
    finally:
        reader.close()
    progress("demo", f"FAILED: the stream predicted no current minute for every symbol and model in {timeout_s:.0f}s "
                     f"(found {found}); see `btc-pipeline stream status` and the spark-job log")
    return 1


def ensure_chromium(stack) -> None:
    """The UI tests drive Debian's Chromium: install it when missing (as root), or say exactly what to install."""
    chromium = os.environ.get("BTC_CHROMIUM", "/usr/bin/chromium")
    if Path(chromium).exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"the UI tests need Chromium at {chromium}: as root run `apt-get update && apt-get install -y "
                         "chromium`, or set BTC_CHROMIUM to a Chromium binary")
    progress("test", "installing Debian's chromium for the UI tests (apt-get, first run only)…")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = stack.paths.cache_dir / "apt-chromium.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            if subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise StackError(f"`{' '.join(command)}` failed; see {log}")


def cmd_test(args) -> int:
    stack = _stack()
    stack.provision()
    ensure_chromium(stack)
    command = [sys.executable, "-m", "pytest", *forwarded(args.pytest_args)]
    progress("test", " ".join(command))
    return subprocess.run(command, cwd=REPO_ROOT).returncode


def cmd_stream(args) -> int:
    from btc_localstack.streams import start_live, stream_services

    stack = _stack()
    stack.apply_env()
    services = stream_services(stack.paths.state_dir)
    if args.action == "start":
        stack.up()
        if args.source == "emulator":
            warmup = emulator_warmup(stack, services, args.warmup_minutes)
            if args.warmup_minutes:
                progress("stream", f"emulator warm-up: {warmup:.0f} of the {args.warmup_minutes:.0f} minutes asked "
                                   "(never before the newest trade the stream already has)")
            start_live(services, emulator_rate=args.rate, warmup_minutes=warmup)
        else:
            start_live(services)
    elif args.action == "stop":
        services.stop_all()
    for name, facts in services.status().items():
        print(f"{'up  ' if facts['running'] else 'down'} {name:<17} pid={facts['pid']}  log={facts['log']}")
    return 0


def cmd_produce(args) -> int:
    from btc_assets.stream import producer

    _stack().apply_env()
    config.load_profile_env()
    return producer.main(forwarded(args.producer_args))


def cmd_ui(args) -> int:
    """Where the Dagster UI of the local stack is, and whether it answers."""
    stack = _stack()
    dagster = stack.services["dagster"]
    print(dagster.url)
    if not dagster.is_running():
        progress("ui", "the webserver is not running: `btc-pipeline stack up` starts it (with postgres and the daemon)")
        return 3
    if args.supervise is not None:
        from btc_localstack.dagster import switch

        for kind, name in SUPERVISION:
            progress("ui", f"{name}: {switch(dagster.url, name, on=args.supervise == 'on', kind=kind)}")
    return 0


# What `btc-pipeline ui --supervise on` switches on: the live stream's health sensor and the live predictions.
SUPERVISION = (("sensor", "stream_health_sensor"), ("schedule", "price_predictions_schedule"))


def cmd_dashboards(args) -> int:
    from btc_assets import dashboards

    for path in dashboards.write_all():
        print(path)
    return 0


def cmd_config(args) -> int:
    if args.markdown:
        print(config.markdown_table())
    else:
        sys.stdout.write(config.env_example())
    return 0


def add_source_options(parser, default: str) -> None:
    parser.add_argument("--source", choices=["emulator", "binance"], default=default,
                        help="where trades come from: the project's emulator, or the real Binance "
                             "endpoints (BTC_BINANCE_*_URL)")
    parser.add_argument("--trades-per-day", type=int, default=0,
                        help="emulator only: trades per generated day (default: realistic, millions)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="btc-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="manage the local engines")
    stack.add_argument("action", choices=["up", "down", "status", "logs", "reset", "provision"])
    stack.add_argument("services", nargs="*", help="hadoop, kafka, influxdb, spark, postgres, dagster; with "
                       "--topology cluster: hadoop, kafka, influxdb, spark, spark-standalone (default: all)")
    stack.add_argument("--topology", choices=["local", "cluster"], default="local",
                       help="local: one node of each engine (.local-stack); cluster: 3 Kafka nodes, HDFS with 3 "
                            "DataNodes, YARN with 2 NodeManagers, Spark standalone with 2 workers "
                            "(.local-stack-cluster, its own ports; `set -a; . .local-stack-cluster/stack.env` "
                            "points the pipeline at it)")
    stack.add_argument("--kill", action="store_true", help="down: SIGKILL instead of a clean stop")
    stack.add_argument("--json", action="store_true", help="status: machine-readable")
    stack.add_argument("-v", "--verbose", action="store_true", help="status: every detail (pids, data dirs, logs)")
    stack.add_argument("-n", "--lines", type=int, default=40, help="logs: lines per file")
    stack.set_defaults(func=cmd_stack)

    demo = sub.add_parser("demo", help="the main job end to end on the local stack")
    demo.add_argument("--start", default="2025-04-01", help="first history day (UTC)")
    demo.add_argument("--days", type=int, default=3, help="consecutive history days to process")
    add_source_options(demo, default="emulator")
    demo.add_argument("--no-stream", action="store_true", help="skip the live part (emulator -> ... -> InfluxDB)")
    demo.add_argument("--no-models", action="store_true", help="skip training and live predictions")
    demo.set_defaults(func=cmd_demo)

    backfill = sub.add_parser("backfill", help="a Dagster backfill of the history assets over a range of days")
    backfill.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    backfill.add_argument("--end", required=True, help="last day, YYYY-MM-DD (inclusive)")
    backfill.add_argument("--no-wait", action="store_true", help="submit and print the backfill id, do not wait")
    backfill.set_defaults(func=cmd_backfill)

    replay = sub.add_parser("replay", help="replay a stored day as the live stream (a run of replay_job)")
    replay.add_argument("--symbol", default="", help="the symbol (default: the first of BTC_SYMBOLS)")
    replay.add_argument("--date", required=True, help="the day, YYYY-MM-DD (raw_trades of it must be stored)")
    replay.add_argument("--speed", type=float, default=60.0, help="times real time (default 60: a day in 24 min)")
    replay.add_argument("--no-wait", action="store_true", help="start the run and print its id, do not follow it")
    replay.set_defaults(func=cmd_replay)
    test = sub.add_parser("test", help="provision the engines and run the test suite")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    test.set_defaults(func=cmd_test)

    stream = sub.add_parser("stream", help="the live path: (emulator,) producer and Spark job as background services")
    stream.add_argument("action", choices=["start", "stop", "status"])
    stream.add_argument("--source", choices=["emulator", "binance"], default="emulator",
                        help="start: the project's Binance emulator, or the real Binance (BTC_BINANCE_*_URL)")
    stream.add_argument("--rate", type=float, default=300.0, help="start, emulator: trades per second")
    stream.add_argument("--warmup-minutes", type=float, default=0.0,
                        help="start, emulator: open the market this many minutes in the past (bars at once)")
    stream.set_defaults(func=cmd_stream)

    produce = sub.add_parser("produce", help="the WebSocket -> Kafka producer in the foreground", add_help=False)
    produce.add_argument("producer_args", nargs=argparse.REMAINDER, help="see `btc-pipeline produce --help`")
    produce.set_defaults(func=cmd_produce)

    ui = sub.add_parser("ui", help="print the Dagster UI's URL (the stack's webserver)")
    ui.add_argument("--supervise", choices=("on", "off"),
                    help="switch stream_health_sensor and price_predictions_schedule on or off (as the UI's toggles)")
    ui.set_defaults(func=cmd_ui)

    boards = sub.add_parser("dashboards", help="regenerate grafana/dashboards/*.json from btc_assets/dashboards.py")
    boards.set_defaults(func=cmd_dashboards)

    cfg = sub.add_parser("config", help="print the documented settings")
    shown = cfg.add_mutually_exclusive_group()
    shown.add_argument("--env-example", action="store_true", help="the text of .env.example (the default)")
    shown.add_argument("--markdown", action="store_true", help="the README table instead of .env.example")
    cfg.set_defaults(func=cmd_config)
    return parser


def forwarded(rest: list[str]) -> list[str]:
    """The arguments `produce` and `test` pass on, as typed (without the ``--`` that ``parse`` put in front)."""
    return rest[1:] if rest[:1] == ["--"] else rest


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    if argv[:1] in (["produce"], ["test"]):  # the rest passed on untouched (argparse REMAINDER refuses a leading option)
        return parser.parse_args([argv[0], "--", *argv[1:]])
    # Options may stand anywhere (`stack down --kill kafka` as well as `stack down kafka --kill`).
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices
    if not argv or argv[0] not in commands:
        return parser.parse_args(argv)
    return commands[argv[0]].parse_intermixed_args(argv[1:])


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (ProcessError, JavaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

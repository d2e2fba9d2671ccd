"""`btc-pipeline`: the local stack, the end-to-end demo and the test run.

    btc-pipeline stack up|down|status|logs|reset|provision   the local engines (Kafka, HDFS, Spark, InfluxDB)
    btc-pipeline demo                                        stack up, status, materialize the assets
    btc-pipeline test [pytest args]                          provision the engines, run the test suite
    btc-pipeline config --env-example | --markdown           the documented settings
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from btc_assets.lib import config
from btc_assets.lib.stack.base import REPO_ROOT, StackError, progress


def _stack():
    from btc_assets.lib.stack.manager import LocalStack

    return LocalStack()


def print_status(stack) -> bool:
    status = stack.status()
    width = max(len(name) for name in status)
    for name, facts in status.items():
        running = facts.get("running")
        mark = "up  " if running is True else ("    " if isinstance(running, str) else "DOWN")
        details = ", ".join(f"{key}={value}" for key, value in facts.items() if key != "running")
        print(f"{mark} {name:<{width}}  {running if isinstance(running, str) else ''} {details}".rstrip())
    print(f"env file: {stack.env_file}")
    return all(facts.get("running") is not False for facts in status.values())


def cmd_stack(args) -> int:
    stack = _stack()
    names = args.services or None
    if args.action == "provision":
        stack.provision(names)
    elif args.action == "up":
        stack.up(names)
        print_status(stack)
    elif args.action == "down":
        stack.down(names, kill=args.kill)
    elif args.action == "status":
        if args.json:
            print(json.dumps(stack.status(), indent=2, default=str))
            return 0 if stack.is_up() else 3
        return 0 if print_status(stack) else 3
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
    env = dict(os.environ)
    env.update(stack.env())
    home = stack.paths.state_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    env.setdefault("DAGSTER_HOME", str(home))
    return env


def cmd_demo(args) -> int:
    """The main job end to end on the local stack."""
    started = time.monotonic()
    stack = _stack()
    stack.up()
    print_status(stack)
    env = dagster_env(stack)
    from btc_assets.demo import demo_steps

    with contextlib.ExitStack() as emulators:
        if args.source == "emulator":
            from btc_assets.lib import history_emulator

            archive = emulators.enter_context(history_emulator.serve(
                cache_dir=stack.paths.cache_dir / "history-emulator", symbols=tuple(config.symbols()),
                trades_per_day=args.trades_per_day or None))
            env["BTC_BINANCE_HISTORY_URL"] = archive.base_url
            progress("demo", f"Binance history emulator on {archive.base_url}")
        for title, command in demo_steps(args):
            progress("demo", title)
            result = subprocess.run(command, env=env, cwd=REPO_ROOT)
            if result.returncode != 0:
                progress("demo", f"FAILED: {' '.join(command)} (exit {result.returncode})")
                return result.returncode
    progress("demo", f"done in {time.monotonic() - started:.0f}s; the stack keeps running "
                     "(`btc-pipeline stack down` stops it; `dagster dev` shows the runs)")
    return 0


def cmd_test(args) -> int:
    stack = _stack()
    stack.provision()
    command = [sys.executable, "-m", "pytest", *args.pytest_args]
    progress("test", " ".join(command))
    return subprocess.run(command, cwd=REPO_ROOT).returncode


def cmd_config(args) -> int:
    if args.markdown:
        print(config.markdown_table())
    else:
        sys.stdout.write(config.env_example())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="btc-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="manage the local engines")
    stack.add_argument("action", choices=["up", "down", "status", "logs", "reset", "provision"])
    stack.add_argument("services", nargs="*", help="hadoop, kafka, influxdb, spark (default: all)")
    stack.add_argument("--kill", action="store_true", help="down: SIGKILL instead of a clean stop")
    stack.add_argument("--json", action="store_true", help="status: machine-readable")
    stack.add_argument("-n", "--lines", type=int, default=40, help="logs: lines per file")
    stack.set_defaults(func=cmd_stack)

    demo = sub.add_parser("demo", help="the main job end to end on the local stack")
    demo.add_argument("--start", default="2025-04-01", help="first history day (UTC)")
    demo.add_argument("--days", type=int, default=3, help="consecutive history days to process")
    demo.add_argument("--trades-per-day", type=int, default=0,
                      help="emulator only: trades per generated day (default: realistic, millions)")
    demo.add_argument("--source", choices=["emulator", "binance"], default="emulator",
                      help="where history and live trades come from (binance: the real endpoints)")
    demo.set_defaults(func=cmd_demo)

    test = sub.add_parser("test", help="provision the engines and run the test suite")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    test.set_defaults(func=cmd_test)

    cfg = sub.add_parser("config", help="print the documented settings")
    cfg.add_argument("--markdown", action="store_true", help="the README table instead of .env.example")
    cfg.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

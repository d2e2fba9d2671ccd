"""A cancelled minute_bars run: its MapReduce JVM is killed and nothing lands at the day's bars path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import psutil

from btc_assets.clients.storage import Storage
from btc_assets_tests.processes import descendants
from btc_assets_tests.stream.helpers import wait_for
from btc_localstack.base import REPO_ROOT
from btc_testkit import history_emulator

DAY = "2025-02-11"


def _streaming_jvms(root: psutil.Process) -> list[psutil.Process]:
    return [child for child, argv in descendants(root)
            if "org.apache.hadoop.streaming.HadoopStreaming" in argv and DAY in " ".join(argv)]


def test_cancelling_a_running_minute_bars_run_kills_the_job_and_writes_nothing(stack, tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    fs = Storage.for_url(env["BTC_HDFS_URL"], "/btc", webhdfs_url=env["BTC_WEBHDFS_URL"]).fs
    bars_dir = f"/btc/agg/minute/symbol=BTCUSDT/date={DAY}"
    fs.delete(bars_dir, recursive=True)
    fs.delete(bars_dir + "._tmp", recursive=True)
    with history_emulator.serve(cache_dir=stack.paths.cache_dir / "history-emulator-cancel", symbols=("BTCUSDT",),
                                trades_per_day=3_000_000) as archive:
        env["BTC_BINANCE_HISTORY_URL"] = archive.base_url
        ingest = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "btc_assets.definitions",
                                 "--select", "raw_trades", "--partition", DAY],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert ingest.returncode == 0, ingest.stderr[-3000:]

    run = subprocess.Popen([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "btc_assets.definitions",
                            "--select", "minute_bars", "--partition", DAY],
                           cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = psutil.Process(run.pid)
    deadline = time.monotonic() + 180
    jvms: list[psutil.Process] = []
    while time.monotonic() < deadline and not jvms:
        jvms = _streaming_jvms(worker)
        time.sleep(0.2)
    assert jvms, "the MapReduce JVM never started"
    # Let the job get going: its staging output exists once the job is set up and its map tasks start.
    wait_for(lambda: fs.exists(bars_dir + "._tmp"), 120, "the job's staging output begun", interval=0.05)
    # The whole day takes the job ~3 s, so a cancel sent now could arrive after it finished. Freeze the JVM
    # (not its mapper processes) so the job is still running, however slowly the cancel travels; the runner's
    # SIGKILL ends a stopped JVM as it ends a running one.
    for jvm in jvms:
        jvm.suspend()
    wait_for(lambda: all(jvm.status() == psutil.STATUS_STOPPED for jvm in jvms), 10,
             "the MapReduce JVM frozen (not finished before it)", interval=0.05)
    assert run.poll() is None and not fs.exists(bars_dir), "the job finished before it could be cancelled"
    # Cancel as Dagster does: an interrupt.
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=120)

    gone, alive = psutil.wait_procs(jvms, timeout=30)
    assert not alive, f"MapReduce JVM(s) left running: {[process.pid for process in alive]}"
    assert run.returncode != 0, output[-3000:]
    assert "RUN_SUCCESS" not in output
    assert not fs.exists(bars_dir), f"{bars_dir} exists after a cancelled run"
    assert not fs.exists(bars_dir + "._tmp"), "the cancelled job's staging output was left behind"

    instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
    assert instance.get_latest_materialization_event(dg.AssetKey("minute_bars")) is None

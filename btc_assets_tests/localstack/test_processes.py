"""Managed processes are known by pid and start time: a reused pid is never taken for ours, nor signalled."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

from btc_assets.processes import ManagedProcess


def test_a_started_process_is_ours_until_it_stops(tmp_path):
    managed = ManagedProcess("sleeper", tmp_path)
    pid = managed.start([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert managed.is_running() and managed.pid() == pid
        record = json.loads(managed.pid_file.read_text())
        assert record["pid"] == pid and abs(record["started"] - psutil.Process(pid).create_time()) < 0.01
    finally:
        managed.stop(timeout=10)
    assert not managed.is_running() and not managed.pid_file.exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_pid_file_naming_another_program_is_left_alone(tmp_path):
    """After a reboot a stale pid file can name an unrelated process: it is not ours, and stop never kills it."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        managed = ManagedProcess("kafka", tmp_path)
        started = psutil.Process(stranger.pid).create_time()
        managed.pid_file.write_text(json.dumps({"pid": stranger.pid, "started": started - 3600.0}))
        assert not managed.is_running() and managed.pid() is None
        managed.stop(kill=True)
        assert stranger.poll() is None, "stop() signalled a process it did not start"
        # An old bare-pid file (no start time) is not trusted either.
        managed.pid_file.write_text(str(stranger.pid))
        assert not managed.is_running()
        managed.stop(kill=True)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_stream_service_restarted_elsewhere_keeps_its_launch_arguments(tmp_path):
    """The health sensor's restart run is another process: the service comes back with the arguments and
    environment it was first started with (a producer on an emulator's URLs stays on them)."""
    from btc_assets.stream.services import StreamServices

    sleeper = ["-c", "import sys, time; time.sleep(60)"]
    first = StreamServices(tmp_path, extra={"sleeper": sleeper})
    pid = first.start("sleeper", ["--marker", "one"], env={"BTC_BINANCE_WS_URL": "ws://127.0.0.1:1"})
    try:
        again = StreamServices(tmp_path, extra={"sleeper": sleeper})  # as a run in another process builds it
        new_pid = again.restart("sleeper")
        assert new_pid != pid
        process = psutil.Process(new_pid)
        assert process.cmdline()[-2:] == ["--marker", "one"]
        assert process.environ()["BTC_BINANCE_WS_URL"] == "ws://127.0.0.1:1"
        # Explicit arguments still win.
        newest = again.restart("sleeper", ["--marker", "two"], env={})
        assert psutil.Process(newest).cmdline()[-2:] == ["--marker", "two"]
        assert psutil.Process(newest).environ().get("BTC_BINANCE_WS_URL") != "ws://127.0.0.1:1"
    finally:
        StreamServices(tmp_path, extra={"sleeper": sleeper}).stop("sleeper", kill=True)

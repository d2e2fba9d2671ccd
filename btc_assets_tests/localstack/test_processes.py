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

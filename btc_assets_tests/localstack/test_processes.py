"""Managed processes are known by pid and start time: a reused pid is never taken for ours, nor signalled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil

from btc_assets.processes import ManagedProcess
from btc_assets_tests.stream.helpers import wait_for


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


def launched(pid: int) -> psutil.Process:
    """The process once its program is in place: for a moment after ``Popen`` returns, the kernel may still be
    setting up the new program, and ``/proc/<pid>/cmdline`` reads empty (seen on a loaded machine)."""
    process = psutil.Process(pid)
    wait_for(lambda: process.cmdline(), 10, f"pid {pid}'s command line")
    return process


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
        process = launched(new_pid)
        assert process.cmdline()[-2:] == ["--marker", "one"]
        assert process.environ()["BTC_BINANCE_WS_URL"] == "ws://127.0.0.1:1"
        # Explicit arguments still win.
        newest = again.restart("sleeper", ["--marker", "two"], env={})
        assert launched(newest).cmdline()[-2:] == ["--marker", "two"]
        assert psutil.Process(newest).environ().get("BTC_BINANCE_WS_URL") != "ws://127.0.0.1:1"
    finally:
        StreamServices(tmp_path, extra={"sleeper": sleeper}).stop("sleeper", kill=True)


def test_a_daemon_answers_sigterm_though_its_starter_ignores_it(tmp_path):
    """A shell without job control starts background commands with SIGINT ignored; Dagster's capture_interrupts
    then copies that onto SIGTERM, and ignored dispositions pass through fork and exec. A daemon started from
    such a process still gets SIGTERM's default, so a stop ends it instead of waiting out its timeout."""
    from dagster._utils.interrupts import capture_interrupts

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    managed = ManagedProcess("sleeper", tmp_path)
    program = ("import signal, time; print('SIGTERM', signal.getsignal(signal.SIGTERM).name, flush=True); "
               "time.sleep(600)")
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with capture_interrupts():
            pass
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the inherited state this guards against
        pid = managed.start([sys.executable, "-c", program])

        def reported() -> list[str]:  # the program's own line, not the log's header naming its command
            return [line for line in managed.log_file.read_text().splitlines() if line.startswith("SIGTERM ")]

        assert wait_for(reported, 60, "the daemon's report of its SIGTERM handler") == ["SIGTERM SIG_DFL"]
        assert psutil.Process(pid).cmdline()[-2:] == ["-c", program]  # the same pid runs the program itself
        assert managed.signal(signal.SIGTERM)
        # A bound to fail on, far below the program's 600 s sleep.
        wait_for(lambda: not managed.is_running(), 60, "the daemon ended by SIGTERM", interval=0.1)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        managed.stop(kill=True)


def test_a_jvm_daemon_keeps_its_temporary_files_in_its_own_directory(tmp_path):
    """A JVM daemon's java.io.tmpdir is its own directory, not /tmp: what a killed one left there (Jetty's webapp
    directories, native libraries, Spark's scratch) goes when it starts again, and /tmp never collects it."""
    from btc_assets.clients.jvm import java_executable

    java = str(java_executable("the test's JVM", 17))
    managed = ManagedProcess("jvm", tmp_path)
    program = [java, "-XshowSettings:properties", "-version"]  # prints its system properties, then exits
    managed.start(program, java_tmp=True)
    wait_for(lambda: not managed.is_running(), 60, "the JVM's exit")
    assert f"java.io.tmpdir = {managed.tmp_dir}" in managed.log_file.read_text()
    left = managed.tmp_dir / "jetty-127_0_0_1-9870-hdfs_war-_-any-1"  # as a SIGKILLed NameNode leaves its webapp
    left.mkdir()
    managed.start(program, java_tmp=True)
    wait_for(lambda: not managed.is_running(), 60, "the second JVM's exit")
    assert managed.tmp_dir.is_dir() and not left.exists()
    # Given explicitly on the command line, the command line's wins.
    own = tmp_path / "chosen"
    managed.start([java, f"-Djava.io.tmpdir={own}", "-XshowSettings:properties", "-version"], java_tmp=True)
    wait_for(lambda: not managed.is_running(), 60, "the third JVM's exit")
    assert managed.log_file.read_text().rstrip().count(f"java.io.tmpdir = {own}") == 1

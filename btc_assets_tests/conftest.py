"""Session fixtures: the suite's own local stack (Kafka, HDFS, Spark, InfluxDB), started once per test run.

The suite never uses, stops or kills a stack a user is running: its stack has a state directory of
its own (``BTC_TEST_STACK_DIR``, default ``.local-stack-tests/`` in the checkout) and its own ports
(``TEST_PORTS``, each ``BTC_STACK_*_PORT`` can still be set by hand), fixed in ``pytest_configure``
before any test module reads them.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path

import pytest

from btc_assets import config
from btc_assets.processes import restore_termination_signals
from btc_assets_tests.generated_days import csv_2024, csv_2025, day_2024, day_2025  # noqa: F401 - shared fixtures

# The suite's engines listen here, never on the defaults a user's `btc-pipeline stack up` takes.
TEST_PORTS = {
    "BTC_STACK_KAFKA_PORT": 19092, "BTC_STACK_KAFKA_CONTROLLER_PORT": 19093,
    "BTC_STACK_HDFS_PORT": 18020, "BTC_STACK_HDFS_HTTP_PORT": 19870,
    "BTC_STACK_DATANODE_PORT": 19866, "BTC_STACK_DATANODE_HTTP_PORT": 19864, "BTC_STACK_DATANODE_IPC_PORT": 19867,
    "BTC_STACK_INFLUX_PORT": 18086, "BTC_STACK_BINANCE_EMULATOR_PORT": 28765,
    "BTC_STACK_POSTGRES_PORT": 15433, "BTC_STACK_DAGSTER_PORT": 13000,
}


# data.binance.vision's stand-in for the runs the stack's daemon launches (they read BTC_BINANCE_HISTORY_URL
# from the environment the daemon was started with): served for the whole session on this port.
TEST_HISTORY_PORT = int(os.environ.get("BTC_TEST_HISTORY_PORT", "28766"))
TEST_HISTORY_SYMBOLS = ("BTCUSDT", "ETHUSDT")
TEST_HISTORY_TRADES_PER_DAY = 20_000


def test_stack_dir() -> str:
    root = config.checkout_root()
    return os.environ.get("BTC_TEST_STACK_DIR") or str((root or Path.cwd()) / ".local-stack-tests")


test_stack_dir.__test__ = False  # a helper, not a test

# `./pipeline test` runs the cluster and model tests in a second pytest session beside the rest (see README,
# "Two sessions"). That session joins the suite's stack the first one owns: it never starts, restarts or stops
# an engine of it, and holds a shared lock on this file for its whole life. The owner takes the lock exclusively
# before it stops the stack, and so does a test that takes down an engine the joined session uses (InfluxDB or
# HDFS: the `stack_outage` fixture): neither happens while a joined session runs. The joined session's tests
# use the suite's InfluxDB and HDFS only (the cluster tests run their own Kafka, HDFS, YARN and Spark), so the
# tests that kill the suite's broker need not wait for it.
JOINED = os.environ.get("BTC_TEST_JOIN") == "1"
JOIN_TIMEOUT_S = 900  # how long a joined session waits for the owner to bring the stack up
_joined_lock = None  # the joined session's open lock file: the shared lock lasts as long as the process


def sessions_lock_path() -> Path:
    path = Path(test_stack_dir()) / "sessions.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def exclusive_stack_lock(why: str):
    """The sessions lock taken exclusively: returns once no joined session runs (the open file holds the lock)."""
    handle = open(sessions_lock_path(), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"\n[tests] {why}: waiting for the joined test session to finish", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def pytest_configure(config):  # noqa: ARG001 - pytest's hook signature
    # Started in the background by a shell without job control (as CI may), the suite ignores SIGINT, and the
    # first in-process Dagster run would make it ignore SIGTERM too, and so every engine and script it starts.
    restored = restore_termination_signals()
    if restored:
        print(f"[tests] {', '.join(s.name for s in restored)} was ignored by the test process: default restored")
    if JOINED:
        global _joined_lock
        _joined_lock = open(sessions_lock_path(), "a")
        fcntl.flock(_joined_lock, fcntl.LOCK_SH)
    # Whatever stack.env a user's shell points at is not the suite's: the suite's own state dir and ports.
    os.environ["BTC_STACK_DIR"] = test_stack_dir()
    os.environ["BTC_PROFILE"] = "local"
    for name, port in TEST_PORTS.items():
        os.environ.setdefault(name, str(port))
    os.environ["BTC_BINANCE_HISTORY_URL"] = f"http://127.0.0.1:{TEST_HISTORY_PORT}"
    # The suite's daemon judges the live stream faster than the default 120 s (heartbeats come every 5 s), so a
    # killed component is restarted within the 3 minutes the supervision test allows.
    os.environ.setdefault("BTC_STREAM_STALL_SECONDS", "45")
    # raw_trades' step retries (2 more tries) stay on, a second apart instead of 30 s and 60 s.
    os.environ.setdefault("BTC_DOWNLOAD_RETRY_DELAY_SECONDS", "1")


def _ranges(ids: list[int]) -> str:
    """Sorted ids as runs: ``5..9, 12`` (the first 10 runs)."""
    runs: list[list[int]] = []
    for value in sorted(ids):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    text = ", ".join(f"{low}..{high}" if high > low else f"{low}" for low, high in runs[:10])
    return text + (f", ... ({len(runs)} runs)" if len(runs) > 10 else "")


def pytest_assertrepr_compare(op, left, right):
    """Long lists of ids (trade ids, offsets) compared: what is missing, extra, twice, out of order.

    pytest's own diff prints one line per element: thousands of lines that bury the other failures' output.
    """
    if op != "==" or not (isinstance(left, list) and isinstance(right, list)) or max(len(left), len(right)) <= 50:
        return None
    if not all(isinstance(value, int) for value in (*left[:50], *right[:50])):
        return None
    left_set, right_set = set(left), set(right)
    lines = [f"lists of {len(left):,} and {len(right):,} ids differ",
             f"missing on the left ({len(right_set - left_set):,}): {_ranges(list(right_set - left_set))}",
             f"extra on the left ({len(left_set - right_set):,}): {_ranges(list(left_set - right_set))}",
             f"twice on the left: {len(left) - len(left_set):,}; on the right: {len(right) - len(right_set):,}"]
    first = next((index for index, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right)))
    lines.append(f"first difference at index {first}: "
                 f"{left[first:first + 3]} vs {right[first:first + 3]}")
    return lines


@pytest.fixture(scope="session")
def history_service(tmp_path_factory):
    """The archive emulator the suite's Dagster instance downloads from (generated days, two symbols)."""
    from btc_testkit import history_emulator

    with history_emulator.serve(port=TEST_HISTORY_PORT, cache_dir=tmp_path_factory.mktemp("history-service"),
                                symbols=TEST_HISTORY_SYMBOLS, trades_per_day=TEST_HISTORY_TRADES_PER_DAY) as running:
        yield running


@pytest.fixture(scope="session")
def stack(request):
    """The suite's local stack, up for the whole session; stopped at the end only if this session started it.

    ``BTC_KEEP_STACK=1`` leaves it running for the next run (faster local iteration). A joined session
    (``BTC_TEST_JOIN=1``) waits for the owner to bring it up and leaves it alone.
    """
    from btc_localstack.manager import LocalStack

    local = LocalStack()
    assert str(local.paths.state_dir) == str(Path(test_stack_dir()).resolve())
    if JOINED:
        yield join_stack(local)
        return
    request.getfixturevalue("history_service")  # served before Dagster starts: its daemon's runs download from it
    # Stopped at the end (or when its start fails) only if this session started it.
    owned = not local.is_up() and os.environ.get("BTC_KEEP_STACK") != "1"
    # Dagster's processes carry the environment they were started with (the archive emulator's URL, ports):
    # a kept stack's webserver and daemon are started again with this session's.
    local.services["dagster"].stop()
    try:
        local.up()
    except BaseException:  # a failed start leaves nothing of this session's running (no teardown follows)
        if owned:
            local.down()
        raise
    local.apply_env()
    yield local
    if owned:
        from btc_localstack.streams import stream_services

        stream_services(local.paths.state_dir).stop_all()
        with exclusive_stack_lock("stopping the stack"):
            local.down()


def join_stack(local):
    """The owner session's stack once it is up, its settings applied to this process."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not local.is_up():
        if time.monotonic() > deadline:
            pytest.fail(f"joined test session: the suite's stack in {local.paths.state_dir} was not up after "
                        f"{JOIN_TIMEOUT_S} s (the owning session starts it; did it fail?)")
        time.sleep(1)
    local.apply_env()
    return local


@pytest.fixture
def stack_outage(stack):
    """For a test that stops an engine a joined session uses (InfluxDB, HDFS): it runs when none runs."""
    with exclusive_stack_lock("a test takes an engine of the stack down"):
        yield stack


@pytest.fixture(scope="session")
def resources(stack):
    """The code location's resources with their EnvVars resolved against the running stack."""
    from btc_assets.defs.resources import (InfluxResource, KafkaResource, MapReduceResource, MarketResource,
                                           SparkResource, StorageResource)

    env = os.environ
    return {
        "market": MarketResource(symbols=env["BTC_SYMBOLS"]),
        "storage": StorageResource(filesystem_url=env["BTC_HDFS_URL"], webhdfs_url=env["BTC_WEBHDFS_URL"],
                                   user=env.get("BTC_HDFS_USER", ""), root=env["BTC_STORAGE_ROOT"]),
        "kafka": KafkaResource(bootstrap_servers=env["BTC_KAFKA_BOOTSTRAP_SERVERS"],
                               topic_template=env["BTC_KAFKA_TOPIC_TEMPLATE"],
                               partitions=int(env["BTC_KAFKA_PARTITIONS"])),
        "spark": SparkResource(master=env["BTC_SPARK_MASTER"], driver_memory=env["BTC_SPARK_DRIVER_MEMORY"],
                               jars=env["BTC_SPARK_JARS"], packages=env.get("BTC_SPARK_PACKAGES", ""),
                               hdfs_url=env["BTC_HDFS_URL"]),
        "mapreduce": MapReduceResource(framework="local", hadoop_classpath=env["BTC_HADOOP_CLASSPATH"],
                                       streaming_jar=env["BTC_HADOOP_STREAMING_JAR"],
                                       conf_dir=env["HADOOP_CONF_DIR"], hdfs_url=env["BTC_HDFS_URL"],
                                       class_archive=env.get("BTC_HADOOP_CLASS_ARCHIVE", "")),
        "influx": InfluxResource(url=env["BTC_INFLUX_URL"], org=env["BTC_INFLUX_ORG"],
                                 bucket=env["BTC_INFLUX_BUCKET"], write_token=env["BTC_INFLUX_WRITE_TOKEN"],
                                 read_token=env["BTC_INFLUX_READ_TOKEN"], admin_token=env["BTC_INFLUX_TOKEN"]),
    }


@pytest.fixture(scope="session")
def spark(resources):
    """One Spark session for the whole run (a JVM start costs seconds)."""
    session = resources["spark"].session("btc-pipeline-tests")
    yield session
    session.stop()


@pytest.fixture
def unique():
    """A short unique suffix so tests never collide on topic, bucket or path names."""
    return uuid.uuid4().hex[:10]


CHROMIUM = os.environ.get("BTC_CHROMIUM", "/usr/bin/chromium")
# As the machine's probe runs it: no sandbox as root, and no background connections to hosts it cannot reach.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright: the real browser the UI tests use."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `./pipeline test` installs Debian's (as root: apt-get update && "
                    "apt-get install -y chromium), or set BTC_CHROMIUM to a Chromium binary")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()

"""Session fixtures: the suite's own local stack (Kafka, HDFS, Spark, InfluxDB), started once per test run.

The suite never uses, stops or kills a stack a user is running: its stack has a state directory of
its own (``BTC_TEST_STACK_DIR``, default ``.local-stack-tests/`` in the checkout) and its own ports
(``TEST_PORTS``, each ``BTC_STACK_*_PORT`` can still be set by hand), fixed in ``pytest_configure``
before any test module reads them.
"""

from __future__ import annotations

import os
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
    "BTC_STACK_POSTGRES_PORT": 15433, "BTC_STACK_DAGSTER_PORT": 13000, "BTC_STACK_DAGSTER_CODE_PORT": 14000,
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


def pytest_configure(config):  # noqa: ARG001 - pytest's hook signature
    # Started in the background by a shell without job control (as CI may), the suite ignores SIGINT, and the
    # first in-process Dagster run would make it ignore SIGTERM too, and so every engine and script it starts.
    restored = restore_termination_signals()
    if restored:
        print(f"[tests] {', '.join(s.name for s in restored)} was ignored by the test process: default restored")
    # Whatever stack.env a user's shell points at is not the suite's: the suite's own state dir and ports.
    os.environ["BTC_STACK_DIR"] = test_stack_dir()
    os.environ["BTC_PROFILE"] = "local"
    for name, port in TEST_PORTS.items():
        os.environ.setdefault(name, str(port))
    os.environ["BTC_BINANCE_HISTORY_URL"] = f"http://127.0.0.1:{TEST_HISTORY_PORT}"
    # The suite's daemon judges the live stream faster than the default 120 s: a component is stalled after 30 s
    # without a heartbeat (they come every 5 s, from a thread of their own: six missed), so a killed one is
    # restarted well within the 3 minutes the supervision test allows.
    os.environ.setdefault("BTC_STREAM_STALL_SECONDS", "30")
    # ... and every 15 s instead of every minute: a SIGKILLed component is restarted 30-45 s after its last
    # heartbeat instead of 30-90 s.
    os.environ.setdefault("BTC_STREAM_SENSOR_INTERVAL_SECONDS", "15")
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
def stack(history_service):
    """The suite's local stack, up for the whole session; stopped at the end only if this session started it.

    ``BTC_KEEP_STACK=1`` leaves it running for the next run (faster local iteration).
    """
    from btc_localstack.manager import LocalStack

    local = LocalStack()
    assert str(local.paths.state_dir) == str(Path(test_stack_dir()).resolve())
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
        local.down()


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

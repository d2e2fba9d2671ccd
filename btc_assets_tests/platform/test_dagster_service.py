"""Dagster as deployed: a code server, the webserver and the daemon on PostgreSQL, two symbols, bad settings.

The five-day backfill under the MapReduce pool is in ``test_main_job.py``: it runs inside the supervision
test's five healthy minutes, with the live stream.
"""

from __future__ import annotations

import os
from unittest import mock

import dagster as dg
import pytest

from btc_assets.defs.history.assets import minute_bars, raw_trades
from btc_assets.defs.history.checks import minute_bar_checks
from btc_assets.defs.resources import BinanceHistoryResource, MarketResource
from btc_assets.processes import free_port
from btc_assets_tests.conftest import TEST_HISTORY_SYMBOLS, TEST_HISTORY_TRADES_PER_DAY
from btc_assets_tests.platform.test_definitions import EVERY_ASSET
from btc_assets_tests.processes import descendants
from btc_localstack.base import StackError, StackPaths
from btc_localstack.dagster import CODE_SERVER_SHUTDOWN_GRACE_S, DagsterService, graphql

pytestmark = pytest.mark.beside_the_live_stream  # run in the supervision test's healthy window: conftest.py

LATEST_METADATA = """
query($path: [String!]!, $partition: String!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(partitions: [$partition], limit: 1) {
      runId partition metadataEntries { label ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } }
    } }
  }
}"""


def instance(stack) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(stack.services["dagster"].home))


def test_the_webserver_serves_the_code_location_from_postgres_with_healthy_daemons(stack):
    dagster = stack.services["dagster"]
    data = graphql(dagster.url, "{ assetNodes { assetKey { path } } instance { info } }")
    assert {"/".join(node["assetKey"]["path"]) for node in data["assetNodes"]} == EVERY_ASSET
    assert "PostgresRunStorage" in data["instance"]["info"] and "PostgresEventLogStorage" in data["instance"]["info"]
    statuses = dagster.daemon_statuses()
    assert {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR", "BACKFILL"} <= set(statuses)
    assert all(statuses.values()), statuses


WORKSPACE = """{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus displayMetadata { key value } locationOrLoadError { __typename } } } } }"""


def test_the_webserver_and_the_daemon_load_the_code_location_from_the_stacks_code_server(stack):
    """One code server serves the location, as compose's dagster-code container does: the webserver's entry is a
    gRPC location at its port, and neither the webserver nor the daemon runs a code server of its own (the daemon
    replaced its every minute)."""
    dagster = stack.services["dagster"]
    (entry,) = graphql(dagster.url, WORKSPACE)["workspaceOrError"]["locationEntries"]
    shown = {item["key"]: item["value"] for item in entry["displayMetadata"]}
    assert (entry["name"], entry["loadStatus"], entry["locationOrLoadError"]["__typename"]) == \
        ("btc_assets", "LOADED", "RepositoryLocation"), entry
    assert (shown.get("host"), shown.get("port")) == ("127.0.0.1", str(dagster.code_port)), shown
    for process in (dagster.webserver, dagster.daemon):
        spawned = [" ".join(argv) for _, argv in descendants(process.process())]
        assert not [command for command in spawned if "api grpc" in command], (process.name, spawned)
    served = [" ".join(argv) for _, argv in descendants(dagster.code_server.process())]
    assert any("api grpc" in command for command in served), served  # the code server's own, loading the code


def test_a_stopping_code_server_ends_the_calls_left_open_instead_of_waiting_for_them(stack, tmp_path):
    """A code server of its own (another port and directory; the stack's is untouched) stopped while a call to it
    is still streaming: it ends the call after the stack's grace and exits by itself, its child with it. With
    Dagster's 60 s grace the stop waited out its 30 s and SIGKILLed the server, whose cleanup had failed waiting for
    the child (a TimeoutExpired in the log, and no "interrupted")."""
    from dagster._grpc.client import DagsterGrpcClient

    with mock.patch.dict(os.environ, {"BTC_STACK_DAGSTER_CODE_PORT": str(free_port())}):
        own = DagsterService(StackPaths(cache_dir=stack.paths.cache_dir, state_dir=tmp_path), stack.env)
    own.write_instance()
    call = None
    try:
        own.start_code_server(own.environment())
        (child,) = [process for process, argv in descendants(own.code_server.process()) if "api grpc" in " ".join(argv)]
        # A call left open: a long ping stream read once (the server then waits on the stream's flow control).
        call = DagsterGrpcClient(port=own.code_port, host="127.0.0.1").streaming_ping(10_000_000, "x" * 100_000)
        next(call)
        began = own.code_server.log_file.stat().st_size
        own.code_server.stop()
        with own.code_server.log_file.open() as log:
            log.seek(began)
            stopping = log.read()
        assert f"terminate or {CODE_SERVER_SHUTDOWN_GRACE_S} seconds pass" in stopping, stopping
        assert "Code proxy server was interrupted" in stopping and "Traceback" not in stopping, stopping
        assert not child.is_running(), "the code server's child outlived it"
    finally:
        if call is not None:
            call.close()
        own.code_server.stop(kill=True)


def test_bad_postgres_settings_fail_with_one_error_naming_the_setting(stack):
    dagster = stack.services["dagster"]
    env = dagster.environment()
    dagster.check_storage(env)  # the right settings pass
    with pytest.raises(StackError, match="DAGSTER_POSTGRES_PASSWORD is wrong"):
        dagster.check_storage({**env, "DAGSTER_POSTGRES_PASSWORD": "not-the-password"})
    with pytest.raises(StackError, match="no PostgreSQL answers at DAGSTER_POSTGRES_HOST:DAGSTER_POSTGRES_PORT"):
        dagster.check_storage({**env, "DAGSTER_POSTGRES_PORT": "1"})
    with pytest.raises(StackError, match="DAGSTER_POSTGRES_PORT='x' is not a port number"):
        dagster.check_storage({**env, "DAGSTER_POSTGRES_PORT": "x"})


def test_two_symbols_each_show_their_own_figures_in_the_ui(stack, history_service):
    """Both symbols' bars are materialized into the stack's instance; the UI's API shows each one's numbers."""
    day = "2024-08-10"  # days no other test uses: the history tests own 2025's
    resources = {**_resources_of(stack), "market": MarketResource(symbols=",".join(TEST_HISTORY_SYMBOLS)),
                 "binance_history": BinanceHistoryResource(base_url=history_service.base_url)}
    result = dg.materialize([raw_trades, minute_bars, minute_bar_checks], partition_key=day, resources=resources,
                            instance=instance(stack))
    assert result.success
    dagster = stack.services["dagster"]
    for asset, figure in (("raw_trades", "rows"), ("minute_bars", "trades")):
        materialization = graphql(dagster.url, LATEST_METADATA, {"path": [asset], "partition": day})[
            "assetOrError"]["assetMaterializations"][0]
        values = {entry["label"]: entry.get("intValue", entry.get("floatValue")) for entry in materialization["metadataEntries"]}
        for symbol in TEST_HISTORY_SYMBOLS:
            assert values[f"{symbol}_{figure}"] == TEST_HISTORY_TRADES_PER_DAY, (asset, symbol, values)
        assert "per_symbol" in values


def _resources_of(stack) -> dict:
    """The code location's own resources, their EnvVars resolved from the stack's settings (the fixture applied them)."""
    from btc_assets.defs.resources import build_resources

    assert os.environ["BTC_HDFS_URL"] == stack.env()["BTC_HDFS_URL"]
    return build_resources()

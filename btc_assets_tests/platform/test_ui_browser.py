"""The Dagster UI in a real browser (Debian's Chromium driven by Playwright): graph, asset, a launched partition, its metadata."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from btc_assets.defs.history.assets import exchange_klines, raw_trades
from btc_assets.defs.resources import build_resources
from btc_localstack.dagster import graphql

pytestmark = pytest.mark.beside_the_live_stream  # run in the supervision test's healthy window: conftest.py

DAY = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 5 * 86_400))  # inside the UI's default 90-day window

NEWEST_RUN = """
query($partition: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $partition}]}, limit: 5) {
    ... on Runs { results { runId status assetSelection { path } } }
  }
}"""


def _dismiss_welcome(page) -> None:
    """The first visit shows a newsletter dialog: skip it when it is there."""
    page.wait_for_timeout(1500)
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.click()


def test_materialize_a_partition_from_the_ui_and_find_its_metadata(stack, browser):
    dagster = stack.services["dagster"]
    shots = stack.paths.state_dir / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    # The upstream day first (raw trades and klines from the suite's archive emulator: minute_bars' checks read
    # both), into the same instance the UI shows.
    result = dg.materialize([raw_trades, exchange_klines], partition_key=DAY, resources=build_resources(),
                            instance=dg.DagsterInstance.from_config(str(dagster.home)))
    assert result.success

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{dagster.url}/asset-groups", wait_until="networkidle")
    _dismiss_welcome(page)
    for group in ("platform", "history", "stream", "ml"):
        page.get_by_text(group, exact=True).first.wait_for(timeout=30_000)
    page.screenshot(path=str(shots / "01-asset-graph.png"))

    page.goto(f"{dagster.url}/assets/minute_bars", wait_until="networkidle")
    _dismiss_welcome(page)
    page.get_by_text("One-minute bars of the day").first.wait_for(timeout=30_000)  # its docstring
    page.screenshot(path=str(shots / "02-minute-bars.png"))
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for(timeout=30_000)
    partitions = dialog.get_by_placeholder("No matching partitions")
    if not partitions.count():
        partitions = dialog.locator("input[type=text]").first
    partitions.fill(DAY)
    partitions.press("Enter")
    launch = dialog.get_by_role("button", name="Launch 1 run")
    launch.wait_for(timeout=30_000)
    page.screenshot(path=str(shots / "03-launch-one-partition.png"))
    launch.click()

    # The run the UI launched: queued, then run by the daemon; the browser shows it succeed.
    deadline, run = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        runs = graphql(dagster.url, NEWEST_RUN, {"partition": DAY})["runsOrError"]["results"]
        mine = [item for item in runs if {"/".join(key["path"]) for key in item["assetSelection"] or []} == {"minute_bars"}]
        if mine and mine[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            run = mine[0]
            break
        time.sleep(3)
    assert run is not None, "the run launched from the UI did not finish in 10 minutes"
    page.goto(f"{dagster.url}/runs/{run['runId']}", wait_until="networkidle")
    page.get_by_text("Success", exact=True).first.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "04-run-succeeded.png"))
    assert run["status"] == "SUCCESS"

    page.goto(f"{dagster.url}/assets/minute_bars?view=partitions&partition={DAY}", wait_until="networkidle")
    for label in ("trades_per_second", "missing_minutes", "BTCUSDT_trades"):
        page.get_by_text(label, exact=True).first.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "05-partition-metadata.png"), full_page=True)
    page.close()

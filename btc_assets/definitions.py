"""The one Definitions object of the `btc_assets` code location.

Everything under ``btc_assets/defs`` (assets, checks, jobs, schedules, sensors of each stage, and the
resources of ``defs/resources.py``) is loaded from the defs folder, as `btc_assets/dg.toml` declares.
Loading touches no engine and changes no environment variable: resources connect lazily, and their
settings are ``EnvVar``s resolved when a run starts (the local stack's ``stack.env``, or the cluster's
environment). Two settings are read at load: the run executor (``BTC_DAGSTER_EXECUTOR``) and how often the
stream health sensor ticks (``BTC_STREAM_SENSOR_INTERVAL_SECONDS``, when its module is first imported).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from btc_assets import config

EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}


def run_executor() -> dg.ExecutorDefinition:
    """The executor ``BTC_DAGSTER_EXECUTOR`` names, checked when the code location loads."""
    name = config.get("BTC_DAGSTER_EXECUTOR")
    if name not in EXECUTORS:
        raise ValueError(f"BTC_DAGSTER_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {name!r}")
    return EXECUTORS[name]


@dg.definitions
def defs() -> dg.Definitions:
    loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return dg.Definitions.merge(loaded, dg.Definitions(executor=run_executor()))

"""The one Definitions object of the `btc_assets` code location.

Everything under ``btc_assets/defs`` (assets, checks, jobs, schedules, sensors of each stage, and the
resources of ``defs/resources.py``) is loaded from the defs folder, as `btc_assets/dg.toml` declares.
Loading touches no engine and changes no environment variable: resources connect lazily, and their
settings are ``EnvVar``s resolved when a run starts (the local stack's ``stack.env``, or the cluster's
environment).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)

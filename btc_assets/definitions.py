"""The one Definitions object of the `btc_assets` code location.

Everything under ``btc_assets/defs`` (assets, checks, jobs, schedules, sensors of each stage) is
collected from the package, with the resources of ``defs/resources.py``. Loading touches no engine
and changes no environment variable: resources connect lazily, and their settings are ``EnvVar``s
resolved when a run starts (the local stack's ``stack.env``, or the cluster's environment).
"""

from __future__ import annotations

import dagster as dg

from btc_assets import defs as defs_package
from btc_assets.defs.resources import build_resources


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_definitions_from_package_module(defs_package, resources=build_resources())

"""The platform tests that run beside the live stream.

``test_main_job.py``'s supervision test needs 5 healthy minutes of the live stream the demo leaves running, with the
daemon's health sensor and prediction schedule ticking; the second demo run and the five-day backfill fill part of
them. Tests marked ``beside_the_live_stream`` (of this package, which neither stop an engine nor touch the stream's
topics, bucket or checkpoints) run in the rest, right before the supervision test, instead of after it: the window
is spent on them, and the supervision test's "no restart" covers them too. The demo fixture is package-scoped so that
tests of other modules can run between this module's without it being torn down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

BESIDE = "beside_the_live_stream"
SUPERVISION = "test_main_job.py::test_daemon_supervises_the_live_stream"


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest's hook signature
    """Moves the selected ``beside_the_live_stream`` tests (in their order) right before the supervision test, when
    it is selected too."""
    supervision = next((item for item in items if item.nodeid.endswith(SUPERVISION)), None)
    if supervision is None:
        return
    beside = [item for item in items if item.get_closest_marker(BESIDE)]
    outside = [item.nodeid for item in beside if item.path.parent != Path(__file__).parent]
    if outside:
        # Another package's test would tear this package's demo fixture (and the live stream) down.
        raise pytest.UsageError(f"{BESIDE} is for tests of {Path(__file__).parent.name}/ only: {outside}")
    moved = {id(item) for item in beside}
    rest = [item for item in items if id(item) not in moved]
    at = rest.index(supervision)
    items[:] = [*rest[:at], *beside, *rest[at:]]

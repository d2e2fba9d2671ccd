"""What every benchmark needs first: the running local stack's settings in the environment, and storage."""

from __future__ import annotations

import os
import sys

from btc_assets.defs.resources import StorageResource
from btc_assets import config
from btc_localstack.manager import LocalStack


def use_running_stack(*services: str) -> bool:
    """Load the local stack's endpoints into the environment; False (with a hint) if a service is down."""
    stack = LocalStack()
    down = [name for name in services or stack.services if not stack.services[name].is_running()]
    if down:
        print(f"the local stack is not running ({', '.join(down)}): ./pipeline stack up", file=sys.stderr)
        return False
    stack.apply_env()
    config.load_profile_env()
    return True


def bench_storage_resource(root: str) -> StorageResource:
    """The storage resource under a root of the benchmark's own, so its files never mix with the pipeline's."""
    env = os.environ
    return StorageResource(filesystem_url=env["BTC_HDFS_URL"], webhdfs_url=env["BTC_WEBHDFS_URL"],
                           user=env.get("BTC_HDFS_USER", ""), root=root)


def bench_storage(root: str):
    """Storage under a root of the benchmark's own (``bench_storage_resource``'s)."""
    return bench_storage_resource(root).storage

"""A user's stack in the checkout's default state directory is left alone by the suite's own stack."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from unittest import mock

from btc_assets.clients import kafka as kafka_client
from btc_assets.clients.storage import WebHDFS
from btc_localstack.base import REPO_ROOT, StackPaths
from btc_localstack.manager import LocalStack
from btc_localstack.streams import stream_services

USER_SERVICES = ["hadoop", "kafka", "influxdb"]


@contextlib.contextmanager
def users_environment(state_dir: Path):
    """The environment a user's shell has: default ports, the default state directory."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("BTC_STACK_")}
    clean["BTC_STACK_DIR"] = str(state_dir)
    with mock.patch.dict(os.environ, clean, clear=True):
        yield


def _identities(local: LocalStack) -> dict[str, tuple[int, float]]:
    found = {}
    for service in local.select(USER_SERVICES):
        for name, value in vars(service).items():
            for index, each in enumerate(value if isinstance(value, list) else [value]):  # e.g. HDFS's DataNodes
                process = getattr(each, "process", None)
                if callable(process) and (running := process()) is not None:
                    found[f"{service.name}.{name}.{index}"] = (running.pid, running.create_time())
    return found


def test_a_users_running_stack_is_untouched_by_the_suites_stack(stack, tmp_path):
    default_dir = REPO_ROOT / ".local-stack"
    with users_environment(default_dir):
        probe = LocalStack(StackPaths(cache_dir=stack.paths.cache_dir, state_dir=default_dir))
        running = all(service.is_running() for service in probe.select(USER_SERVICES))
    # A user's stack that is up is observed as it is; a stopped one with data is not ours to start: a stand-in
    # directory with the same default ports plays the user's then (on CI the default directory is empty).
    user_dir = default_dir if running or not default_dir.exists() else tmp_path / "users-stack"
    with users_environment(user_dir):
        user = LocalStack(StackPaths(cache_dir=stack.paths.cache_dir, state_dir=user_dir))
        started_here = not all(service.is_running() for service in user.select(USER_SERVICES))
        user.up(USER_SERVICES)
        user_env = user.env()
        before = _identities(user)
        marker_path = f"/tmp/users-marker-{secrets.token_hex(4)}"
        marker = secrets.token_bytes(64)
        hdfs = WebHDFS(user_env["BTC_WEBHDFS_URL"])
        hdfs.write(marker_path, marker)
        topic = f"USERS-TOPIC-{secrets.token_hex(4)}"
        assert kafka_client.ensure_topic(user_env["BTC_KAFKA_BOOTSTRAP_SERVERS"], topic, partitions=1)
    try:
        ours = stack.env()
        assert stack.paths.state_dir != user.paths.state_dir
        for name in ("BTC_KAFKA_BOOTSTRAP_SERVERS", "BTC_HDFS_URL", "BTC_WEBHDFS_URL", "BTC_INFLUX_URL"):
            assert ours[name] != user_env[name], f"{name}: the suite's stack uses the user's endpoint"
        assert len(before) == 4  # namenode, datanode, kafka, influxd

        # What the suite does to its own stack (a broker killed and restarted, the stream stopped) ...
        stack.down(["kafka"], kill=True)
        stack.up(["kafka"])
        stream_services(stack.paths.state_dir).stop_all()

        # ... leaves the user's processes and data as they were.
        with users_environment(user_dir):
            assert _identities(user) == before
            assert WebHDFS(user_env["BTC_WEBHDFS_URL"]).read(marker_path) == marker
            admin = kafka_client.admin(user_env["BTC_KAFKA_BOOTSTRAP_SERVERS"])
            try:
                assert topic in admin.list_topics()
            finally:
                admin.close()
    finally:
        with users_environment(user_dir):
            WebHDFS(user_env["BTC_WEBHDFS_URL"]).delete(marker_path)
            if started_here:
                user.down(USER_SERVICES)

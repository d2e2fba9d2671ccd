"""Fixtures for the live path: a real Kafka broker and a topic name per test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator
from unittest import mock

import pytest

from btc_assets.processes import free_port


@pytest.fixture(scope="session")
def kafka_bootstrap(request, tmp_path_factory) -> Iterator[str]:
    """A real Kafka broker's bootstrap servers.

    The session ``stack``'s Kafka (the suite's own stack); with BTC_TEST_KAFKA=own a KafkaService of its
    own on free ports instead (stream tests without the rest of the stack), never 9092/9093. BTC_TEST_KAFKA_STATE_DIR and BTC_TEST_KAFKA_PORT/_CONTROLLER_PORT pin that broker
    (reused if it is already running there, and then left running).
    """
    if os.environ.get("BTC_TEST_KAFKA", "stack") != "own":
        yield request.getfixturevalue("stack").services["kafka"].bootstrap_servers
        return

    from btc_localstack.base import StackPaths
    from btc_localstack.kafka import KafkaService

    state_dir = Path(os.environ.get("BTC_TEST_KAFKA_STATE_DIR") or tmp_path_factory.mktemp("stream-stack"))
    ports = {"BTC_STACK_KAFKA_PORT": os.environ.get("BTC_TEST_KAFKA_PORT") or str(free_port()),
             "BTC_STACK_KAFKA_CONTROLLER_PORT": os.environ.get("BTC_TEST_KAFKA_CONTROLLER_PORT") or str(free_port())}
    # KafkaService reads its ports once, here: the environment goes back as it was for the rest of the session.
    with mock.patch.dict(os.environ, ports):
        broker = KafkaService(StackPaths(cache_dir=StackPaths.from_env().cache_dir, state_dir=state_dir))
    started_here = not broker.is_running()
    broker.start()
    yield broker.bootstrap_servers
    if started_here:
        broker.stop()


@pytest.fixture
def topic_template(unique) -> str:
    """A trade topic template no other test uses: ``{symbol}-TRADES-<unique>``."""
    return "{symbol}-TRADES-" + unique


"""Kafka access for the pipeline: topics, a safe producer, consumers and end offsets.

The producer is idempotent with ``acks=all`` so a retried batch never duplicates a trade in the
raw log, and batches with a short linger for throughput.
"""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, UnknownError

log = logging.getLogger(__name__)


def admin(bootstrap_servers: str, **overrides) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="btc-pipeline-admin", **overrides)


def ensure_topics(bootstrap_servers: str, names, *, partitions: int, replication: int = 1,
                  config: dict[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet, with one admin connection; return the names created."""
    client = admin(bootstrap_servers)
    try:
        existing = set(client.list_topics())
        created = []
        for name in dict.fromkeys(names):
            if name in existing:
                continue
            try:
                client.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication,
                                               topic_configs=config or {})])
                created.append(name)
            except TopicAlreadyExistsError:  # created meanwhile by another component
                pass
        return created
    finally:
        client.close()


def ensure_topic(bootstrap_servers: str, name: str, *, partitions: int, replication: int = 1,
                 config: dict[str, str] | None = None) -> bool:
    """Create the topic if it does not exist; return True if it was created."""
    return bool(ensure_topics(bootstrap_servers, [name], partitions=partitions, replication=replication, config=config))


def delete_topics(bootstrap_servers: str, names, *, timeout_s: float = 60.0) -> list[str]:
    """Delete the topics that exist and wait until the broker no longer lists them; return the names deleted."""
    client = admin(bootstrap_servers)
    try:
        doomed = [name for name in dict.fromkeys(names) if name in set(client.list_topics())]
        if doomed:
            client.delete_topics(doomed, timeout_ms=int(timeout_s * 1000))
        deadline = time.monotonic() + timeout_s
        while doomed and set(doomed) & set(client.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka still lists {sorted(set(doomed) & set(client.list_topics()))} "
                                   f"{timeout_s:.0f}s after deleting them")
            time.sleep(0.5)
        return doomed
    finally:
        client.close()


def trade_topic_config(replication: int) -> dict[str, str]:
    """A replicated topic takes a write (acks=all) while one replica is down, never with only one left:
    ``min.insync.replicas`` = replication - 1 (2 of 3), 1 without replication."""
    return {"min.insync.replicas": str(max(1, replication - 1))}


def ensure_trade_topics(bootstrap_servers: str, topics, *, partitions: int, replication: int = 1,
                        wait_seconds: float = 0.0, should_stop=lambda: False, log=None) -> list[str]:
    """Every trade topic and its dead-letter topic (``schema.dlq_topic``), created if missing: the one place
    the pipeline creates topics (the producer, the Spark job and the ``trade_topics`` asset all call it).

    ``wait_seconds``: keep retrying this long while Kafka is not reachable yet (a service starting beside
    its broker). Returns the names of the topics created.
    """
    from btc_assets.contracts.schema import dlq_topic

    names = [name for topic in topics for name in (topic, dlq_topic(topic))]
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return ensure_topics(bootstrap_servers, names, partitions=partitions, replication=replication,
                                 config=trade_topic_config(replication))
        except KafkaError as error:
            if time.monotonic() >= deadline or should_stop():
                raise
            if log is not None:
                log(f"Kafka not ready for topic creation ({error}); retrying")
            time.sleep(2)


def partition_count(bootstrap_servers: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


PRODUCER_CLIENTS = ("kafka-python", "confluent-kafka")


def producer(bootstrap_servers: str, client: str = "kafka-python", **overrides) -> KafkaProducer | LibrdkafkaProducer:
    """The pipeline's safe producer (acks=all, idempotent, batched): kafka-python's, or librdkafka's through
    confluent-kafka (``client="confluent-kafka"``, the same guarantees, ~17x the writes a second on 2 cores)."""
    if client == "confluent-kafka":
        return LibrdkafkaProducer(bootstrap_servers, **overrides)
    if client != "kafka-python":
        raise ValueError(f"Kafka producer client {client!r}: expected one of {', '.join(PRODUCER_CLIENTS)}")
    settings = dict(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True,
                    linger_ms=20, batch_size=256 * 1024, retries=2**31 - 1,
                    max_in_flight_requests_per_connection=5, client_id="btc-pipeline-producer")
    settings.update(overrides)
    return _KafkaPythonProducer(**settings)


class _KafkaPythonProducer(KafkaProducer):
    """kafka-python's producer, its ``flush`` made to wait for the parts of a batch the broker refused as too large.

    kafka-python (3.0.12) splits such a batch in two and sends the halves again, but a ``flush`` already waiting
    on the old batch raises ``UnknownError('Future not done')`` (as Java's client once returned early, KAFKA-9312).
    Flushing again waits for the halves; each record then ends delivered or refused through its own future."""

    def flush(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return super().flush(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except UnknownError as error:
                if "Future not done" not in str(error):
                    raise
                log.info("a batch the broker found too large was split and is being sent again: flushing its parts")


def send_reported(producer, topic: str, key: bytes | None, value: bytes | None, headers: list | None,
                  on_refused) -> bool:
    """Send one record with either client; if it is refused (by the client's limits at once, or by Kafka after the
    client's retries, then on the client's I/O thread), ``on_refused(error, topic, value)`` is called. Raises
    ``KafkaTimeoutError`` if the client's buffer stays full. Returns False if it was refused at once, True if the
    client took it. librdkafka serves every record with one callback."""
    try:
        if isinstance(producer, LibrdkafkaProducer):
            producer.send_reported(topic, key, value, headers, on_refused)
        else:
            producer.send(topic, key=key, value=value, headers=headers).add_errback(_refused, on_refused, topic, value)
        return True
    except KafkaTimeoutError:  # the client's buffer stayed full: the caller decides to wait or to give up
        raise
    except KafkaError as error:  # refused at once (over the client's size limit, say)
        on_refused(error, topic, value)
        return False


def _refused(on_refused, topic: str, value: bytes | None, error: Exception) -> None:
    on_refused(error, topic, value)


def _librdkafka_error(error) -> KafkaError:
    """A librdkafka delivery error as kafka-python's ``KafkaError``, the one error type callers handle."""
    return KafkaError(f"{error.name()}: {error.str()}")


class _Delivery:
    """A record's delivery, as kafka-python's future is used here: ``add_errback(f, *args)`` calls
    ``f(*args, error)`` if the record is refused, whether that was reported before or after."""

    def __init__(self):
        self._lock = threading.Lock()
        self._error: Exception | None = None
        self._errbacks: list = []

    def add_errback(self, function, *args) -> _Delivery:
        with self._lock:
            error = self._error
            if error is None:
                self._errbacks.append((function, args))
        if error is not None:
            function(*args, error)
        return self

    def reported(self, error, _message) -> None:
        """librdkafka's delivery report for this record."""
        if error is not None:
            self.failed(_librdkafka_error(error))

    def failed(self, error: Exception) -> None:
        with self._lock:
            self._error, errbacks = error, self._errbacks
            self._errbacks = []
        for function, args in errbacks:
            function(*args, error)


class LibrdkafkaProducer:
    """confluent-kafka's Producer behind the part of kafka-python's interface the pipeline uses (``send``,
    ``flush``, ``close``), with the same guarantees: acks=all, idempotent (in order, no duplicate on a retry),
    retried until ``delivery_timeout_ms``. A thread serves delivery reports. ``send`` blocks while librdkafka's
    queue is full and raises kafka-python's ``KafkaTimeoutError`` after ``max_block_ms``, as kafka-python does."""

    def __init__(self, bootstrap_servers: str, *, linger_ms: int = 20, batch_size: int = 256 * 1024,
                 client_id: str = "btc-pipeline-producer", max_block_ms: int = 60_000,
                 delivery_timeout_ms: int = 120_000):
        import confluent_kafka  # a dependency, imported only by the processes that choose this client
        self._errors = (confluent_kafka.KafkaException,)
        self._producer = confluent_kafka.Producer({
            "bootstrap.servers": bootstrap_servers, "acks": "all", "enable.idempotence": True,
            "linger.ms": linger_ms, "batch.size": batch_size, "client.id": client_id,
            "delivery.timeout.ms": delivery_timeout_ms},
            logger=logging.getLogger("librdkafka"))  # its messages into logging (served by the report thread)
        self._max_block_s = max_block_ms / 1000
        self._shared = (None, None)  # (on_refused, the delivery callback made for it): the last one asked for
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve_reports, name="librdkafka-reports", daemon=True)
        self._poller.start()

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
             headers: list | None = None) -> _Delivery:
        delivery = _Delivery()
        self._produce(topic, key, value, headers, delivery.reported)
        return delivery

    def send_reported(self, topic: str, key: bytes | None, value: bytes | None, headers: list | None,
                      on_refused) -> None:
        """``send`` without a handle per record: a refused record is reported as ``on_refused(error, topic, value)``
        by one delivery callback, made once for the same ``on_refused`` and shared by its records (the producer's
        hot path)."""
        known, callback = self._shared
        if on_refused != known:
            def callback(error, message, on_refused=on_refused):
                if error is not None:
                    on_refused(_librdkafka_error(error), message.topic(), message.value())
            self._shared = (on_refused, callback)
        self._produce(topic, key, value, headers, callback)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: list | None, on_delivery) -> None:
        deadline = None  # set when librdkafka's queue is first found full
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:  # librdkafka's queue is full: the report thread drains it, Kafka permitting
                now = time.monotonic()
                deadline = deadline or now + self._max_block_s
                if now >= deadline:
                    raise KafkaTimeoutError(f"librdkafka's queue stayed full for {self._max_block_s:.0f}s") from None
                time.sleep(0.005)
            except self._errors as error:
                raise KafkaError(str(error)) from None

    def flush(self, timeout: float | None = None) -> None:
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaTimeoutError(f"{left} records not delivered within {timeout}s")

    def close(self, timeout: float | None = None) -> None:
        try:
            self._producer.flush(-1 if timeout is None else timeout)
        finally:
            self._closed.set()
            self._poller.join(5)


def consumer(bootstrap_servers: str, *topics: str, **overrides) -> KafkaConsumer:
    settings = dict(bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest",
                    enable_auto_commit=False, consumer_timeout_ms=10_000)
    settings.update(overrides)
    return KafkaConsumer(*topics, **settings)


def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """Log-end offset of each partition of ``topic`` (the number of records ever written to it)."""
    client = KafkaConsumer(bootstrap_servers=bootstrap_servers)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(client.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in client.end_offsets(partitions).items()}
    finally:
        client.close()

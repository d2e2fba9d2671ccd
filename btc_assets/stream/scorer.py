"""Live predictions in the stream: each minute bar, once complete, scored by the newest saved models.

The Spark job's bars query tells the scorer which minutes each micro-batch wrote (``bars_written``). A minute
is complete once a bar of a later minute has been written: the trades of the next minute have reached the
stream, so the minute's own are all in (the producer sends each symbol's trades in order). A thread on the
driver then scores what has completed since its last round, on the job's own SparkSession, with the code of
the ``price_predictions`` asset:

    bars = predictions.read_live_bars(reader, symbols, minutes, through_minute=complete)   # bars_1m, Flux
    frame = predictions.predict_live(spark, fitted, bars, minutes)    # the training set's features, every model
    sink.write(predictions.prediction_lines(frame, names))           # price_predictions (CONTRACTS.md section 5)

Each round scores the newest ``rescore_minutes`` complete bars again, so the bar completed just now gets its
forecast (for the minute trading now) and the one before gets the actual price and error of the minute it
predicted, which has just completed. A point rewritten is the same point (predictions are a function of the
bars and the model), so the asset, which backfills and scores any range, and the stream never disagree.

Models are loaded once from ``/btc/models/<model>/<version>``. Before each round the scorer looks up each
model's newest complete version (the one with ``metrics.json``) and loads a new one; the one it has serves
until then. With no saved model it waits (``models: 0`` in its health) and looks again every round.

A version that does not load is counted and logged, and the model's previous version serves on. A round that
fails (InfluxDB or HDFS away) is counted in ``errors`` and the next round covers its minutes, up to
``MAX_CATCH_UP_MINUTES`` back. pipeline_health, component ``spark_predictions``:

    pipeline_health,component=spark_predictions rounds=41i,points=656i,models=4i,model_loads=4i,errors=0i,
        restarts=0i,minutes_scored=164i,latency_ms=812i,latency_p99_ms=1210i,scored_through=29011223i <now>

``latency_ms``: from the bars write that completed a minute to its predictions written (queryable).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import numpy as np

from btc_assets.contracts import schema
from btc_assets.ml import features, models, predictions

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import SparkSession

    from btc_assets.clients.influx import Influx
    from btc_assets.clients.storage import Storage

log = logging.getLogger("btc_assets.stream.scorer")

COMPONENT = "spark_predictions"  # the pipeline_health component tag
POOL = "predictions"  # its FAIR scheduler pool, beside the queries' own
MAX_CATCH_UP_MINUTES = 60  # after an outage, minutes scored at once; older ones are the asset's to backfill
RETRY_SECONDS = 5.0  # a failed round is tried again this soon, even without a new bar
MODEL_POLL_SECONDS = 30.0  # with no saved model, how often to look for one


@dataclass
class ScorerStats:
    """The scorer's counters (pipeline_health fields)."""

    rounds: int = 0
    points: int = 0
    minutes_scored: int = 0
    model_loads: int = 0
    errors: int = 0
    last_error: str = ""
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=240))  # the last rounds' latencies
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class LiveScorer:
    """Scores completed minutes in a thread of the Spark job's driver (``start``, ``bars_written``, ``stop``)."""

    def __init__(self, spark: SparkSession, storage: Storage, reader: Influx, write, symbols: Iterable[str],
                 model_names: Iterable[str] = schema.MODELS, rescore_minutes: int = 3,
                 catch_up_minutes: int = MAX_CATCH_UP_MINUTES):
        unknown = sorted(set(model_names) - set(schema.MODELS))
        if unknown:
            raise ValueError(f"unknown models {unknown}: choose from {list(schema.MODELS)}")
        if rescore_minutes < 2:
            raise ValueError("rescore_minutes must be at least 2: the minute completed and the one it scores")
        self.spark, self.storage, self.reader, self.write = spark, storage, reader, write
        self.symbols = tuple(symbols)
        self.model_names = [name for name in schema.MODELS if name in set(model_names)]
        self.rescore_minutes = rescore_minutes
        self.catch_up_minutes = catch_up_minutes  # a replay scores every minute, however far behind
        self.fitted: dict[str, PipelineModel] = {}
        self.versions: dict[str, str] = {}
        self._unloadable: dict[str, str] = {}  # model -> a newest version that failed to load (not retried)
        self.stats = ScorerStats()
        self.scored_through: int | None = None  # the newest minute (since the epoch) scored
        self._newest_written: int | None = None  # the newest minute a bars batch wrote
        self._first_complete: int | None = None  # the oldest minute this scorer learnt complete (its first round's)
        self._completed_at: dict[int, float] = {}  # minute -> when the scorer learnt it was complete
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the bars query's side -------------------------------------------------------------------
    def bars_written(self, minutes: Iterable[int]) -> None:
        """Called after a bars micro-batch is in InfluxDB with the minutes (since the epoch) it wrote."""
        newest = max(minutes, default=None)
        if newest is None:
            return
        with self._wake:
            if self._newest_written is None or newest > self._newest_written:
                now = time.time()
                # The first batch completes every minute it wrote but its newest (a replay's may write hundreds).
                first = min(minutes) if self._newest_written is None else self._newest_written
                first = max(first, newest - self.catch_up_minutes)
                for minute in range(first, newest):
                    self._completed_at.setdefault(minute, now)
                if self._first_complete is None and first < newest:
                    self._first_complete = first
                self._newest_written = newest
                self._wake.notify()

    @property
    def complete_through(self) -> int | None:
        """The newest complete minute: the one before the newest minute written."""
        with self._wake:
            return None if self._newest_written is None else self._newest_written - 1

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> LiveScorer:
        self._thread = threading.Thread(target=self._run, name="live-scorer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        self.spark.sparkContext.setLocalProperty("spark.scheduler.pool", POOL)
        while not self._stop.is_set():
            with self._wake:
                while not self._stop.is_set() and not self._due():
                    self._wake.wait()
            if self._stop.is_set():
                return
            try:
                self.score_round()
                if not self.fitted:  # nothing saved yet: look again in a while, not at every bar
                    self._stop.wait(MODEL_POLL_SECONDS)
            except Exception as error:  # noqa: BLE001 - InfluxDB or HDFS away: the next round covers these minutes
                self._failed(error)
                log.warning("live predictions: round failed (%s); retrying in %.0fs", self.stats.last_error,
                            RETRY_SECONDS)
                self._stop.wait(RETRY_SECONDS)

    def _due(self) -> bool:
        newest = self.complete_through
        return newest is not None and (self.scored_through is None or newest > self.scored_through)

    def _failed(self, error: BaseException) -> None:
        with self.stats.lock:
            self.stats.errors += 1
            self.stats.last_error = (str(error).strip().splitlines() or [repr(error)])[0][:300]

    # -- one round ----------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        """Load each model's newest complete version if it is not the one loaded."""
        for name in self.model_names:
            newest = models.newest_version(self.storage, name)
            if newest is None or newest in (self.versions.get(name), self._unloadable.get(name)):
                continue
            try:
                self.fitted[name], _ = models.load_model(self.storage, name, newest)
            except Exception as error:  # noqa: BLE001 - a broken version: the others (and this one's last) serve on
                self._failed(error)
                self._unloadable[name] = newest
                log.error("live predictions: %s version %s does not load (%s); %s", name, newest,
                          self.stats.last_error, f"version {self.versions[name]} serves on" if name in self.versions
                          else "no version of it serves")
                continue
            self.versions[name] = newest
            with self.stats.lock:
                self.stats.model_loads += 1
            log.info("live predictions: %s version %s loaded", name, newest)

    def score_round(self) -> int:
        """Score the minutes completed since the last round; the number of points written."""
        complete = self.complete_through
        if complete is None or (self.scored_through is not None and complete <= self.scored_through):
            return 0
        self.refresh_models()
        if not self.fitted:
            return 0
        # The first round scores every minute completed since the stream started, not only the newest: the models
        # may have loaded long after the first bars (a replay under load, a model saved after the stream started).
        since = self.scored_through if self.scored_through is not None else (self._first_complete or complete) - 1
        new = complete - since
        minutes = min(new, self.catch_up_minutes) + self.rescore_minutes - 1
        bars = predictions.read_live_bars(self.reader, self.symbols, predictions.history_minutes(minutes),
                                          through_minute=complete)
        frame = predictions.predict_live(self.spark, self.fitted, bars, minutes)
        names = [name for name in self.model_names if name in self.fitted]
        lines = predictions.prediction_lines(frame, names) if len(frame) else []
        if lines:
            self.write(lines)
        done = time.time()
        with self._wake:
            completed = [self._completed_at.pop(minute) for minute in sorted(self._completed_at)
                         if minute <= complete]
        with self.stats.lock:
            self.stats.rounds += 1
            self.stats.points += len(lines)
            self.stats.minutes_scored += int(frame[features.MINUTE_INDEX].nunique()) if len(frame) else 0
            self.stats.latencies_ms.extend(int((done - at) * 1000) for at in completed)
        self.scored_through = complete
        return len(lines)

    def health_fields(self) -> dict[str, object]:
        with self.stats.lock:
            latencies = list(self.stats.latencies_ms)
            return {
                "rounds": self.stats.rounds, "points": self.stats.points, "minutes_scored": self.stats.minutes_scored,
                "models": len(self.fitted), "model_loads": self.stats.model_loads, "errors": self.stats.errors,
                "restarts": 0,
                "latency_ms": latencies[-1] if latencies else None,
                "latency_p99_ms": int(np.percentile(latencies, 99)) if latencies else None,
                "scored_through": self.scored_through,
            }

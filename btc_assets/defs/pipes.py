"""A Dagster Pipes message reader that hands on whole lines only.

``PipesSubprocessClient``'s default reader tails the child's messages file with ``readline()``. A read that
lands while the child is still writing a message returns the line without its end: ``json.loads`` fails,
the reader thread dies, and every later message of the run is lost (seen in a backfill: a MapReduce job
completed, and its step failed because the counters after the torn line never arrived). Dagster 1.13's
``dagster._utils.tail_file`` has this race.

``WholeLinesMessageReader`` keeps the bytes after the last newline until the rest arrives, so a message is
parsed only once it is whole. A whole line that is not a message (not JSON, or JSON without a Pipes method: a
child's bug) is reported on the run as a Pipes framework event, counted, and skipped; the messages after it still
arrive.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import dagster as dg
from dagster_pipes import PipesDefaultMessageWriter

POLL_S = 0.01


def whole_lines(path: str, should_stop: Callable[[], bool], poll_s: float = POLL_S) -> Iterator[bytes]:
    """The lines appended to ``path`` (without their ``\\n``), each only once whole, until ``should_stop()``
    holds and everything written before it has been read. Bytes after the last newline at that point (a
    writer killed mid-line) come last, as they are."""
    pending = b""
    with open(path, "rb") as stream:
        while True:
            # Decide to stop before the read: whatever was written before the stop is read by it.
            stopping = should_stop()
            chunk = stream.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line for line in lines if line.strip())
            elif stopping:
                break
            else:
                time.sleep(poll_s)
    if pending.strip():
        yield pending


class WholeLinesMessageReader(dg.PipesMessageReader):
    """Pipes messages from a temporary file, parsed one whole line at a time (see the module's text)."""

    def __init__(self) -> None:
        self.skipped = 0

    @contextmanager
    def read_messages(self, handler) -> Iterator[dict]:
        with tempfile.TemporaryDirectory(prefix="btc-pipes-") as directory:
            path = os.path.join(directory, "messages")
            open(path, "wb").close()
            done = threading.Event()
            thread = threading.Thread(target=self._read, args=(path, handler, done), daemon=True,
                                      name="pipes-whole-lines")
            thread.start()
            try:
                yield {PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                       PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False}
            finally:
                done.set()
                thread.join()

    def _read(self, path: str, handler, done: threading.Event) -> None:
        try:
            for line in whole_lines(path, done.is_set):
                try:
                    handler.handle_message(json.loads(line))
                except Exception:  # noqa: BLE001 - not JSON, or JSON that is not a message: this line only
                    self.skipped += 1
                    handler.report_pipes_framework_exception(
                        f"{type(self).__name__}: line skipped, not a Pipes message: {line[:200]!r}", sys.exc_info())
        except Exception:  # noqa: BLE001 - reported on the run, as Dagster's own readers do
            handler.report_pipes_framework_exception(f"{type(self).__name__} reader thread", sys.exc_info())

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a local temporary file, one whole line at a time."

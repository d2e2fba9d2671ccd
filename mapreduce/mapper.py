"""Hadoop Streaming mapper: history trade CSV lines on stdin -> one partial minute aggregate per minute on stdout.

    cat BTCUSDT-trades-2025-04-01.csv | python mapper.py | LC_ALL=C sort | python reducer.py

gives the minute bars of CONTRACTS.md section 4, exactly as a cluster run does:

    hadoop jar hadoop-streaming.jar \\
        -files mapreduce/mapper.py,mapreduce/reducer.py,btc_assets/contracts/bars.py,btc_assets/contracts/schema.py \\
        -mapper "python3 mapper.py" -reducer "python3 reducer.py" -input <raw trades> -output <bars dir>

In-mapper combining: the mapper keeps one ``bars.MinutePartial`` per minute in memory and writes
them once at the end, ``<YYYY-MM-DD HH:MM>\\t<partial fields>``, so a day of millions of trades
leaves the mapper as about 1,440 lines and the shuffle carries next to nothing.

Speed: stdin is read in blocks of whole lines (4 MiB) that pyarrow parses in C++ threads and
numpy groups by minute. A block that pyarrow rejects (a header, a short line, a word where a
number belongs) is cut into pieces, recursively, until a piece is small enough (16 KiB) to be
parsed line by line in Python: a bad line is skipped and counted, every good line around it is
kept, and it costs about one extra parse of its block. Without pyarrow/numpy on a node,
everything takes the line-by-line path (the same bars, several times slower).

Counters, written once at the end on stderr as Hadoop Streaming reads them
(``reporter:counter:btc,<name>,<n>``): ``trades`` kept, each reason a line was skipped
(schema.MALFORMED_REASONS) and their total ``malformed_lines``.

One definition of the bar maths: this script imports ``bars`` and ``schema`` from
btc_assets/contracts, shipped beside it with ``-files`` on a cluster (then they are top-level modules
next to the script), or from the checkout when run in place; nothing is copied into mapreduce/.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from collections import Counter

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(_HERE, "bars.py")):  # shipped with -files, as symlinks in the task's folder
    # Python puts the *resolved* script folder on sys.path; the shipped modules are beside the link.
    sys.path.insert(0, _HERE)
    import bars
    import schema
else:  # run from a checkout, where mapreduce/ sits beside btc_assets/
    sys.path.insert(0, os.path.dirname(_HERE))
    from btc_assets.contracts import bars, schema

try:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
except ImportError:  # the line-by-line path still gives the same bars, only slower
    pa = None

BLOCK_BYTES = 4 << 20
# A block pyarrow rejects is cut into PIECES, and so on, until a piece is this small and is read
# line by line: a bad line costs about one more parse of its block, plus a few hundred lines in Python.
PIECES = 16
LINE_BY_LINE_BYTES = 16 << 10
# pyarrow ends a line at LF, CRLF or a lone CR; the line-by-line path must cut lines the same way.
_LINE_END = re.compile(r"\r\n|\n|\r")


class MinuteBook:
    """The mapper's state: partial aggregates by minute, and the counters."""

    def __init__(self) -> None:
        self.partials: dict[int, bars.MinutePartial] = {}
        self.counters: Counter[str] = Counter()

    def fold(self, partials: dict[int, bars.MinutePartial]) -> None:
        for minute, partial in partials.items():
            existing = self.partials.get(minute)
            self.partials[minute] = partial if existing is None else existing.merge(partial)

    def add_lines(self, block: bytes | memoryview) -> None:
        """The slow, forgiving path: one line at a time, malformed lines counted by reason."""
        partials: dict[int, bars.MinutePartial] = {}
        for line in _LINE_END.split(bytes(block).decode("utf-8", errors="replace")):
            if not line:  # blank lines (e.g. the one after the last newline) are not trades
                continue
            try:
                trade = schema.parse_history_line(line)
            except schema.MalformedTrade as malformed:
                self.counters[malformed.reason] += 1
                continue
            bars.add_trade(partials, trade)
            self.counters[schema.TRADES_COUNTER] += 1
        self.fold(partials)

    def write(self, out, err) -> None:
        for minute in sorted(self.partials):
            fields = self.partials[minute].to_fields()
            out.write(bars.minute_label(minute) + "\t" + "\t".join(fields) + "\n")
        self.counters[schema.MALFORMED_COUNTER] = sum(self.counters[reason] for reason in schema.MALFORMED_REASONS)
        for name in (schema.TRADES_COUNTER, *schema.MALFORMED_REASONS, schema.MALFORMED_COUNTER):
            err.write(schema.counter_line(name, self.counters[name]))


class ArrowBlockParser:
    """The fast path: a block of whole CSV lines -> partials, via pyarrow.csv and numpy."""

    def __init__(self) -> None:
        self.read_options = pacsv.ReadOptions(column_names=list(schema.HISTORY_COLUMNS), use_threads=True)
        # No quoting and no null spellings: a field is a number, a boolean or a malformed line.
        self.parse_options = pacsv.ParseOptions(
            quote_char=False, double_quote=False, escape_char=False, invalid_row_handler=self._skip_row
        )
        # Lines with a wrong column count that pyarrow skipped while parsing the current block,
        # by reason; they count only if the block as a whole parses (else its pieces count them).
        self._skipped: Counter[str] = Counter()
        self._skipped_lock = threading.Lock()  # pyarrow calls the handler from its parser threads
        integer, decimal, boolean = pa.int64(), pa.float64(), pa.bool_()
        self.convert_options = pacsv.ConvertOptions(
            column_types={
                schema.TRADE_ID: integer,
                schema.PRICE: decimal,
                schema.QTY: decimal,
                schema.QUOTE_QTY: decimal,
                schema.TIME: integer,
                schema.IS_BUYER_MAKER: boolean,
                schema.IS_BEST_MATCH: boolean,
            },
            true_values=list(schema.TRUE_VALUES),
            false_values=list(schema.FALSE_VALUES),
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )

    def _skip_row(self, row) -> str:
        # A short or long line: the line-by-line parser names the reason (a 6-column futures
        # header is a header, not a wrong column count), so both paths count it the same.
        try:
            schema.parse_history_line(row.text)
        except schema.MalformedTrade as malformed:
            with self._skipped_lock:
                self._skipped[malformed.reason] += 1
        return "skip"

    def add_block(self, book: MinuteBook, block: memoryview) -> bool:
        """Parse ``block`` into ``book``, or return False (and add nothing) if pyarrow rejects it."""
        self._skipped.clear()
        try:
            table = pacsv.read_csv(
                pa.py_buffer(block), self.read_options, self.parse_options, self.convert_options
            )
        except pa.ArrowException:
            return False
        book.counters.update(self._skipped)
        self._add_table(book, table)
        return True

    def add_block_or_pieces(self, book: MinuteBook, block: memoryview) -> None:
        """Parse ``block`` into ``book``; if some line in it is not a trade, still keep every good line.

        pyarrow does not say which line it rejected, so the block is cut into pieces, each parsed
        again, recursively, until a piece is small enough to read line by line: the good pieces
        around a bad line keep the fast path. Where most pieces fail too, bad lines are dense and
        smaller pieces would fail as well, so those go line by line at once.
        """
        if not self.add_block(book, block):
            self._add_rejected(book, block)

    def _add_rejected(self, book: MinuteBook, block: memoryview) -> None:
        if len(block) <= LINE_BY_LINE_BYTES:
            book.add_lines(block)
            return
        failed = [piece for piece in _pieces(bytes(block), PIECES) if not self.add_block(book, piece)]
        dense = len(failed) > PIECES // 2
        for piece in failed:
            if dense:
                book.add_lines(piece)
            else:
                self._add_rejected(book, piece)

    def _add_table(self, book: MinuteBook, table) -> None:
        trade_id = table.column(schema.TRADE_ID).to_numpy()
        trade_time = table.column(schema.TIME).to_numpy()
        is_buyer_maker = table.column(schema.IS_BUYER_MAKER).to_numpy()
        price, qty, quote = (
            np.rint(table.column(name).to_numpy() * bars.UNITS) for name in (schema.PRICE, schema.QTY, schema.QUOTE_QTY)
        )
        # The same rules as schema.check_trade_values, on whole columns (NaN fails every comparison).
        valid = (
            (price > 0) & (price < schema.MAX_UNITS)
            & (qty > 0) & (qty < schema.MAX_UNITS)
            & (quote >= 0) & (quote < schema.MAX_UNITS)
            & (trade_id >= 0) & (trade_time > 0)
        )  # fmt: skip
        kept = int(np.count_nonzero(valid))
        if kept < len(valid):
            trade_id, trade_time, is_buyer_maker, price, qty, quote = (
                column[valid] for column in (trade_id, trade_time, is_buyer_maker, price, qty, quote)
            )
            book.counters[schema.BAD_VALUE] += len(valid) - kept
        time_ms = np.where(trade_time < schema.MICROSECONDS_FROM, trade_time, trade_time // 1000)
        book.fold(
            bars.partials_from_columns(
                trade_id,
                price.astype(np.int64),
                qty.astype(np.int64),
                quote.astype(np.int64),
                time_ms,
                is_buyer_maker,
            )
        )
        book.counters[schema.TRADES_COUNTER] += kept


def _pieces(block: bytes, count: int) -> list[memoryview]:
    """``block`` cut at line ends into about ``count`` pieces of similar size."""
    view, pieces, start = memoryview(block), [], 0
    step = max(1, len(block) // count)
    while start < len(block):
        newline = block.find(b"\n", start + step - 1)
        end = len(block) if newline == -1 else newline + 1
        pieces.append(view[start:end])
        start = end
    return pieces


def blocks_of_lines(stream, block_bytes: int):
    """Whole lines from a binary stream, as memoryviews of about ``block_bytes`` each.

    Each read is cut at its first and last line end: the body in between is passed on without a
    copy, and the line broken across two reads is put together and passed on by itself.
    """
    carry = b""
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            if carry:
                yield memoryview(carry)
            return
        first, last = chunk.find(b"\n") + 1, chunk.rfind(b"\n") + 1
        if first == 0:  # no line end at all: a line longer than a block, keep reading
            carry += chunk
            continue
        yield memoryview(carry + chunk[:first])
        body = memoryview(chunk)[first:last]
        if body:
            yield body
        carry = chunk[last:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-bytes", type=int, default=BLOCK_BYTES, help="bytes of CSV parsed at once")
    parser.add_argument("--line-by-line", action="store_true", help="skip pyarrow: the slow reference path")
    args = parser.parse_args(argv)

    book = MinuteBook()
    arrow = ArrowBlockParser() if pa is not None and not args.line_by_line else None
    for block in blocks_of_lines(sys.stdin.buffer, args.block_bytes):
        if arrow is None:
            book.add_lines(block)
        else:
            arrow.add_block_or_pieces(book, block)
    book.write(sys.stdout, sys.stderr)
    return 0


if __name__ == "__main__":
    status = main()
    # pyarrow's C++ thread pool can abort the interpreter's shutdown ("terminate called without an
    # active exception", exit 134) when the machine is loaded, which Hadoop counts as a failed task
    # although every bar was written. Everything is flushed by now: leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

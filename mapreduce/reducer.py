"""Hadoop Streaming reducer: the mapper's partial aggregates, sorted by minute -> the final minute bars.

    cat BTCUSDT-trades-2025-04-01.csv | python mapper.py | LC_ALL=C sort | python reducer.py

Input lines are ``<YYYY-MM-DD HH:MM>\\t<partial fields>`` with equal minutes next to each other, as
Hadoop (or ``sort``) delivers them; the partials of one minute are merged (in any order: the
merge is associative and commutative) and written as one bar line of CONTRACTS.md section 4:
the 16 fields of schema.BAR_FIELDS, tab-separated, no header.

Counters on stderr at the end: ``minute_bars`` written and ``bad_partials`` (lines that did not
parse, skipped). The bar maths come from btc_assets/contracts/bars.py, found as mapper.py finds it.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(_HERE, "bars.py")):  # shipped with -files, as symlinks in the task's folder
    # Python puts the *resolved* script folder on sys.path; the shipped modules are beside the link.
    sys.path.insert(0, _HERE)
    import bars
    import schema
else:  # run from a checkout, where mapreduce/ sits beside btc_assets/
    sys.path.insert(0, os.path.dirname(_HERE))
    from btc_assets.contracts import bars, schema


def main() -> int:
    minute_bars = bad_partials = 0
    current_key: str | None = None
    current: bars.MinutePartial | None = None
    current_minute = 0
    out = sys.stdout
    for line in sys.stdin:
        key, _, rest = line.rstrip("\r\n").partition("\t")
        try:
            partial = bars.MinutePartial.from_fields(rest.split("\t"))
            minute = current_minute if key == current_key else bars.minute_from_label(key)
        except ValueError:
            bad_partials += 1
            continue
        if key == current_key:
            current.merge(partial)
            continue
        if current is not None:
            out.write(bars.bar_line(current_minute, current) + "\n")
            minute_bars += 1
        current_key, current, current_minute = key, partial, minute
    if current is not None:
        out.write(bars.bar_line(current_minute, current) + "\n")
        minute_bars += 1
    sys.stderr.write(schema.counter_line(schema.MINUTE_BARS_COUNTER, minute_bars))
    sys.stderr.write(schema.counter_line(schema.BAD_PARTIALS_COUNTER, bad_partials))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pipes messages from a child reach the run whole, even when the reader catches one half written.

The child writes to the messages file the way ``dagster_pipes`` does (one JSON line per message), and tears one
message on purpose: its first half, a pause, then the rest. Dagster's own file reader parses the half, fails and
drops every later message; ``WholeLinesMessageReader`` must deliver them all, in order.
"""

from __future__ import annotations

import sys
import textwrap

import dagster as dg
import pytest

from btc_assets.defs.pipes import WholeLinesMessageReader

pytestmark = pytest.mark.beside_the_live_stream  # no engine: a child process and an ephemeral instance

MESSAGES = 200

CHILD = textwrap.dedent("""
    import json, sys, time
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    def line(payload):
        return json.dumps({"__dagster_pipes_version": "0.1", "method": "report_custom_message",
                           "params": {"payload": payload}}) + "\\n"

    with open_dagster_pipes() as pipes:
        path = PipesEnvVarParamsLoader().load_messages_params()["path"]
        garbage = pipes.get_extra("garbage")
        for number in range(int(sys.argv[1])):
            text = line({"number": number, "padding": "x" * 500})
            with open(path, "a", encoding="utf-8") as messages:
                if number == 7:  # torn: the reader sees the first half alone for a while
                    messages.write(text[:300])
                    messages.flush()
                    time.sleep(0.5)
                    text = text[300:]
                messages.write(text)
                if garbage and number == 50:
                    messages.write("this is not a Pipes message\\n")
                if garbage and number == 120:
                    messages.write(json.dumps({"json": "but no Pipes method"}) + "\\n")
        pipes.report_custom_message({"done": True})
""")


def _run(tmp_path, garbage: bool):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    reader = WholeLinesMessageReader()
    received = []

    @dg.asset
    def piped(context):
        invocation = dg.PipesSubprocessClient(message_reader=reader).run(
            context=context, command=[sys.executable, str(script), str(MESSAGES)], extras={"garbage": garbage})
        received.extend(invocation.get_custom_messages())
        return dg.MaterializeResult(metadata={"messages": len(received)})

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([piped], instance=instance)
    return result, reader, received, [entry.message for entry in instance.all_logs(result.run_id)]


def _assert_every_message_arrived(result, received) -> None:
    """The run succeeded, and the child's messages all arrived, in order, the torn one whole, then the final one."""
    assert result.success
    assert [message["number"] for message in received[:-1]] == list(range(MESSAGES))
    assert received[-1] == {"done": True}


def test_a_message_caught_half_written_arrives_whole_and_none_after_it_is_lost(tmp_path):
    result, reader, received, _ = _run(tmp_path, garbage=False)
    _assert_every_message_arrived(result, received)
    assert reader.skipped == 0


def test_lines_that_are_not_messages_are_counted_reported_and_skipped(tmp_path):
    result, reader, received, logged = _run(tmp_path, garbage=True)
    _assert_every_message_arrived(result, received)
    assert reader.skipped == 2
    reported = [message for message in logged if "line skipped" in message]
    assert len(reported) == 2, reported
    assert "this is not a Pipes message" in reported[0] and "but no Pipes method" in reported[1], reported

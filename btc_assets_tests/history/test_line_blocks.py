"""The minute_bars job's block reader (mapreduce/LineBlockInputFormat.java) in real Hadoop Streaming jobs: the same
bars and counters as Hadoop's TextInputFormat whatever the splits and blocks, with a split starting exactly on a
line, a split starting inside a line longer than a block, malformed lines, a CRLF line and no final newline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from btc_assets import config
from btc_assets.clients.hadoop_streaming import (LINE_BLOCKS_CLASS, StreamingJob, line_blocks_jar, run_job,
                                                 streaming_command)
from btc_assets.contracts import bars, schema
from btc_assets.defs.resources import MapReduceResource
from btc_localstack.hadoop import LOG4J_PROPERTIES

BLOCK_BYTES = 1024  # the reader's smallest block: hundreds of blocks per split


def streaming_run(tmp_path: Path, name: str, source: Path, split_bytes: int, blocks: bool):
    """The minute-bars job over ``source`` on the local file system: (the bars file's bytes, its counters)."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)
    classpath = os.environ["BTC_HADOOP_CLASSPATH"]
    scripts = config.mapreduce_dir()
    job = StreamingJob(
        mapper=str(scripts / "mapper.py"), reducer=str(scripts / "reducer.py"), files=bars.streaming_support_files(),
        inputs=[source.as_uri()], output=(tmp_path / name).as_uri(),
        input_format=LINE_BLOCKS_CLASS if blocks else "", libjars=[str(line_blocks_jar(classpath))] if blocks else (),
        conf={"hadoop.tmp.dir": str(tmp_path / "hadoop-tmp"), "mapreduce.job.reduces": "1",
              "mapreduce.local.map.tasks.maximum": "2",
              # Splits of exactly split_bytes: the local file system's block size, which caps a split.
              "fs.local.block.size": str(split_bytes),
              **({"stream.map.input.ignoreKey": "true", "btc.lineblock.bytes": str(BLOCK_BYTES)} if blocks else {})})
    counters = run_job(streaming_command(job, framework="local", hdfs_url="file:///", classpath=classpath,
                                         conf_dir=str(conf_dir)))
    output = b"".join(part.read_bytes() for part in sorted((tmp_path / name).glob("part-*")))
    return output, counters


def btc_counters(counters: dict[str, int]) -> dict[str, int]:
    return {name: value for name, value in counters.items() if name.startswith(f"{schema.COUNTER_GROUP}.")}


@pytest.fixture(scope="module")
def awkward_day(csv_2024, tmp_path_factory):
    """The 60k-trade day with a header, malformed lines (one longer than a block), a CRLF line and no final
    newline; and the split size that makes the 2nd split start exactly on a line and the 3rd inside the long one."""
    lines = csv_2024.read_bytes().splitlines(keepends=True)
    long_line = b"1," + b"9" * (3 * BLOCK_BYTES) + b",1,1,1,True,True\n"  # a value too large: bad_value
    lines[1000] = lines[1000].replace(b"\n", b"\r\n")
    lines[20_000:20_000] = [b"not,a,trade\n"]
    lines[40_000:40_000] = [long_line]
    lines.insert(0, b"id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n")
    lines[-1] = lines[-1].rstrip(b"\n")
    data = b"".join(lines)
    long_start = data.index(long_line)
    # The 2nd split starts on the line after the middle of what comes before the long line; so the 3rd starts
    # inside the long line.
    split_bytes = data.index(b"\n", long_start // 2) + 1
    assert data[split_bytes - 1:split_bytes] == b"\n" and long_start < 2 * split_bytes < long_start + len(long_line)
    path = tmp_path_factory.mktemp("line-blocks") / "BTCUSDT-trades-2024-06-15.csv"
    path.write_bytes(data)
    return path, split_bytes, len(lines) - 3


def test_blocks_give_the_same_bars_and_counters_as_lines(stack, awkward_day, tmp_path):
    source, split_bytes, trades = awkward_day
    as_lines, line_counters = streaming_run(tmp_path, "lines", source, split_bytes, blocks=False)
    as_blocks, block_counters = streaming_run(tmp_path, "blocks", source, split_bytes, blocks=True)
    assert as_blocks == as_lines and len(as_blocks.splitlines()) == 1440
    assert btc_counters(block_counters) == btc_counters(line_counters)
    assert block_counters[f"{schema.COUNTER_GROUP}.{schema.TRADES_COUNTER}"] == trades
    assert {reason: block_counters[f"{schema.COUNTER_GROUP}.{reason}"] for reason in schema.MALFORMED_REASONS
            if block_counters[f"{schema.COUNTER_GROUP}.{reason}"]} == {
        schema.HEADER_LINE: 1, schema.WRONG_COLUMN_COUNT: 1, schema.BAD_VALUE: 1}
    # The mappers were handed blocks, not lines: a few thousand records for 60k lines, more than one per split.
    records = "Map-Reduce Framework.Map input records"
    assert line_counters[records] == trades + 3
    assert 5 * 3 < block_counters[records] < trades // 10


def test_the_resource_chooses_blocks_unless_told_lines_and_refuses_a_wrong_value(stack):
    resource = MapReduceResource(framework="local", hadoop_classpath=os.environ["BTC_HADOOP_CLASSPATH"])
    fields, reason = resource.line_input()
    assert fields["input_format"] == LINE_BLOCKS_CLASS and Path(fields["libjars"][0]).is_file() and reason == ""
    assert fields["conf"] == {"stream.map.input.ignoreKey": "true"}
    assert resource.model_copy(update={"input": "lines"}).line_input() == ({}, "BTC_MAPREDUCE_INPUT=lines")
    with pytest.raises(ValueError, match="BTC_MAPREDUCE_INPUT='block'"):
        resource.model_copy(update={"input": "block"}).line_input()

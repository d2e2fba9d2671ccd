"""The MapReduce job's JVM maps the Hadoop classes from the local stack's class-data archive, and runs without one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from btc_assets.clients.hadoop_streaming import STREAMING_CLASS, class_archive_opts, hadoop_java_command


def test_the_streaming_jvm_maps_its_classes_from_the_stacks_archive(stack, tmp_path):
    archive = os.environ["BTC_HADOOP_CLASS_ARCHIVE"]
    assert archive and Path(archive).is_file(), "the stack's provisioning dumps one into its cache"
    # -Xshare:on: the JVM refuses to start unless it can map the archive with the job's own classpath (the jars,
    # then the conf dir), so a classpath the archive does not fit fails here instead of silently costing time.
    command = hadoop_java_command(STREAMING_CLASS, ["-info"], os.environ["BTC_HADOOP_CLASSPATH"],
                                  os.environ["HADOOP_CONF_DIR"],
                                  java_opts=[*class_archive_opts(archive), "-Xshare:on", "-Xlog:class+load=info:stdout"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    (loaded,) = [line for line in result.stdout.splitlines() if f"{STREAMING_CLASS} source:" in line]
    assert "shared objects file" in loaded, loaded
    # No archive, or one that is not there: the plain command, classes from the jars.
    assert class_archive_opts("") == [] and class_archive_opts(tmp_path / "missing.jsa") == []

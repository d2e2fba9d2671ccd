"""Every setting of the pipeline: one table of environment variables, read in one place.

The README's configuration table and `.env.example` are generated from ``SETTINGS`` (and a test
checks they agree), so a variable is documented exactly where it is defined, with its one default.
The Dagster resources (``EnvVar``), the producer and the Spark job all read their values through
this module. The ``local`` profile fills the endpoints and credentials in from the env file the
local stack writes (``$BTC_STACK_DIR/stack.env``); the ``cluster`` profile takes them from the
environment alone. Nothing here changes ``os.environ`` at import.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROFILES = ("local", "cluster")
DISTRIBUTION = "btc-trades-pipeline"


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    meaning: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("BTC_PROFILE", "local", "`local`: the stack `btc-pipeline stack up` starts on this machine; "
            "`cluster`: external services (docker compose in `infra/` or your own clusters)"),
    Setting("BTC_STACK_DIR", "<repo>/.local-stack", "local stack: data, logs, pids and the generated `stack.env`"),
    Setting("BTC_CACHE_DIR", "<~/.cache/btc-pipeline>", "downloaded jars and the built InfluxDB, shared by all checkouts"),
    Setting("BTC_DATA_DIR", "<the checkout, else <prefix>/share/btc-trades-pipeline>",
            "the folder holding `mapreduce/` (the Hadoop Streaming scripts) and `grafana/` (dashboards); "
            "a non-editable install (the Docker image) carries them under `<prefix>/share/btc-trades-pipeline`"),
    Setting("BTC_SYMBOLS", "BTCUSDT", "comma-separated symbols the pipeline handles"),
    # Kafka
    Setting("BTC_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "Kafka bootstrap servers"),
    Setting("BTC_KAFKA_TOPIC_TEMPLATE", "{symbol}-TRADES", "trade topic name per symbol; dead letters go to `<topic>.dlq`"),
    Setting("BTC_KAFKA_PARTITIONS", "3", "partitions of each trade topic"),
    Setting("BTC_KAFKA_REPLICATION", "1", "replication factor of the topics (3 on a real cluster)"),
    Setting("BTC_KAFKA_PRODUCER_CLIENT", "confluent-kafka", "the producer's Kafka client: `confluent-kafka` "
            "(librdkafka: ~17x kafka-python's writes a second), or `kafka-python`; both acks=all and idempotent"),
    # Storage (HDFS)
    Setting("BTC_HDFS_URL", "hdfs://127.0.0.1:8020", "HDFS NameNode URL (Spark and MapReduce read and write here)"),
    Setting("BTC_WEBHDFS_URL", "http://127.0.0.1:9870", "NameNode WebHDFS endpoint (the Python storage client)"),
    Setting("BTC_HDFS_USER", "<login user>", "HDFS user name sent with WebHDFS requests"),
    Setting("BTC_STORAGE_ROOT", "/btc", "root of the storage layout (raw trades, minute bars, models, checkpoints)"),
    # MapReduce
    Setting("BTC_MAPREDUCE_FRAMEWORK", "local", "`local` (LocalJobRunner, the local profile) or `yarn` (a cluster)"),
    Setting("BTC_HADOOP_CLASSPATH", "<cache>/hadoop/<version>/lib/*", "classpath of the Hadoop jars (local profile)"),
    Setting("BTC_HADOOP_STREAMING_JAR", "<cache>/hadoop/<version>/lib/hadoop-streaming-*.jar",
            "the hadoop-streaming jar"),
    Setting("HADOOP_CONF_DIR", "$BTC_STACK_DIR/hadoop/conf", "Hadoop client configuration directory"),
    Setting("BTC_HADOOP_CLASS_ARCHIVE", "", "a JDK class-data sharing archive of the Hadoop jars (`-XX:SharedArchiveFile`) "
            "the MapReduce job's JVM starts from (2-10 % off a 4.7 M-trade job here); the local stack dumps one into its cache"),
    Setting("BTC_MAPREDUCE_INPUT", "blocks",
            "how the minute_bars job's map tasks read a day: `blocks` (mapreduce/LineBlockInputFormat.java, blocks of "
            "whole lines, compiled once with the JDK's javac into the cache; without javac the job falls back to "
            "`lines`, saying so) or `lines` (Hadoop's TextInputFormat, a line at a time: the same bars, ~1.5x slower)"),
    Setting("BTC_MAPREDUCE_CONCURRENCY", "1",
            "most MapReduce jobs (minute_bars runs) at once, e.g. in a UI backfill: the `mapreduce` pool's limit "
            "(1 fits 2 cores: each job runs one map task per core)"),
    # Dagster
    Setting("BTC_DAGSTER_URL", "http://127.0.0.1:3000", "the Dagster webserver (UI and GraphQL API)"),
    Setting("BTC_DAGSTER_MAX_CONCURRENT_RUNS", "4", "runs the queued run coordinator launches at once"),
    Setting("BTC_DAGSTER_EXECUTOR", "in_process",
            "how a run executes its steps: `in_process` (one after another in the run's process: the steps of a run "
            "share its Python imports and Spark session; a day's history run takes ~12 s instead of ~20 s) or "
            "`multiprocess` (a process per step, steps in parallel)"),
    Setting("DAGSTER_POSTGRES_HOST", "127.0.0.1", "PostgreSQL of Dagster's run, event-log and schedule storage"),
    Setting("DAGSTER_POSTGRES_PORT", "5432", "its port (the local stack's: 5433)"),
    Setting("DAGSTER_POSTGRES_USER", "dagster", "its user"),
    Setting("DAGSTER_POSTGRES_DB", "dagster", "its database"),
    Setting("DAGSTER_POSTGRES_PASSWORD", "(generated)", "its password (the local stack generates one)", secret=True),
    # Spark
    Setting("BTC_SPARK_MASTER", "local[2]", "Spark master URL (`spark://host:7077` on a cluster)"),
    Setting("BTC_SPARK_DRIVER_MEMORY", "2g", "Spark driver heap"),
    Setting("BTC_SPARK_DRIVER_HOST", "", "the address executors reach the driver at; empty: 127.0.0.1 in local "
            "mode, this host's address (its name resolved) with a cluster master"),
    Setting("BTC_SPARK_JARS", "<cache>/spark/<pyspark version>/lib/*.jar",
            "comma-separated local jars for Spark: the Kafka connector the local stack resolved"),
    Setting("BTC_SPARK_PACKAGES", "", "Maven coordinates Spark resolves itself at start (cluster profile), e.g. "
            "`org.apache.spark:spark-sql-kafka-0-10_2.13:4.3.0`"),
    Setting("BTC_SPARK_IVY_DIR", "<cache>/ivy", "where Spark caches the resolved packages"),
    Setting("BTC_SPARK_PYTHON", "", "the Python executors run Python tasks with (`spark.pyspark.python`; XGBoost "
            "training needs xgboost, numpy and pandas there); empty: this interpreter in local mode, the nodes' "
            "`python3` on a cluster"),
    Setting("BTC_SPARK_EXECUTOR_MEMORY", "1g", "executor heap on a cluster master"),
    Setting("BTC_SPARK_CORES_MAX", "", "most cores one application takes from a standalone master (empty: all "
            "it offers; the streaming job holds its cores for as long as it runs)"),
    Setting("BTC_SPARK_CLASS_ARCHIVE", "", "a JDK class-data sharing archive (`-XX:SharedArchiveFile`) of Spark's "
            "classes that every Spark driver JVM starts from (a session starts ~40 % sooner here: "
            "`bench/spark_start_bench.py`); the local stack dumps one into a Spark home in its cache (one per pyspark build), which drivers given the archive then run from unless `SPARK_HOME` is set"),
    Setting("BTC_SPARK_DRIVER_JAVA_OPTIONS", "none",
            "the batch Spark sessions' driver JVM options (training, predictions, the training set; "
            "`spark.driver.extraJavaOptions`, replacing spark-defaults.conf's; in local mode the driver runs the "
            "tasks too). 'none': the JVM's defaults. Not C1-only (`-XX:TieredStopAtLevel=1`): it overflows the "
            "stack of pyspark.ml's GBT (the seed replication) and slows 30 days of RF (README). The streaming job "
            "has its own"),
    # InfluxDB
    Setting("BTC_INFLUX_URL", "http://127.0.0.1:8086", "InfluxDB 2 URL"),
    Setting("BTC_INFLUX_ORG", "btc", "InfluxDB organisation"),
    Setting("BTC_INFLUX_BUCKET", "btc", "InfluxDB bucket"),
    Setting("BTC_INFLUX_TOKEN", "(generated)", "InfluxDB all-access token (setup, buckets)", secret=True),
    Setting("BTC_INFLUX_WRITE_TOKEN", "(generated)", "InfluxDB token that may only write the bucket", secret=True),
    Setting("BTC_INFLUX_READ_TOKEN", "(generated)", "InfluxDB token that may only read the bucket (Grafana)",
            secret=True),
    Setting("BTC_INFLUX_PASSWORD", "(generated)", "InfluxDB admin user's password (local stack only)", secret=True),
    Setting("GRAFANA_ADMIN_PASSWORD", "", "docker compose: Grafana's admin password (the local stack runs no Grafana)",
            secret=True),
    # Binance
    Setting("BTC_BINANCE_WS_URL", "wss://stream.binance.com:9443", "Binance WebSocket base URL"),
    Setting("BTC_BINANCE_REST_URL", "https://api.binance.com", "Binance REST base URL (gap backfill)"),
    Setting("BTC_BINANCE_HISTORY_URL", "https://data.binance.vision", "Binance public data (daily trade files)"),
    Setting("BTC_DOWNLOAD_RETRIES", "2",
            "raw_trades: how many more times a download that failed after the client's own retries is tried"),
    Setting("BTC_DOWNLOAD_RETRY_DELAY_SECONDS", "30",
            "raw_trades: wait before the first of those tries (doubling, with jitter, for the next)"),
)

# The Spark streaming job's own settings (btc_assets/stream/spark_job.py reads them).
STREAM_SETTINGS = (
    Setting("BTC_STREAM_TRIGGER", "0 seconds",
            "Spark streaming job: trigger of the trades query (0: each micro-batch right after the last)"),
    Setting("BTC_STREAM_BARS_TRIGGER", "10 seconds",
            "Spark streaming job: trigger of the minute-bars query (less often leaves the trades query room)"),
    Setting("BTC_STREAM_WATERMARK", "2 minutes",
            "Spark streaming job: how late a trade may arrive and still count in its minute bar"),
    Setting("BTC_STREAM_SHUFFLE_PARTITIONS", "2", "Spark streaming job: shuffle (state) partitions"),
    Setting("BTC_STREAM_MAX_OFFSETS_PER_TRIGGER", "200000",
            "Spark streaming job: most Kafka records one micro-batch reads"),
    Setting("BTC_STREAM_DRIVER_JAVA_OPTIONS", "-XX:+UseParallelGC",
            "Spark streaming job: its driver JVM's options when the job starts its own session (not under "
            "spark-submit; they replace spark-defaults.conf's spark.driver.extraJavaOptions); in local mode the "
            "driver runs the tasks too. 'none': the JVM's defaults (G1)"),
    Setting("BTC_STREAM_INFLUX_RETRY_SECONDS", "600",
            "Spark streaming job: how long a batch keeps retrying an unreachable InfluxDB before it fails"),
    Setting("BTC_STREAM_HEALTH_SECONDS", "5", "Spark streaming job and producer: pipeline_health heartbeat interval"),
    Setting("BTC_STREAM_PREDICTIONS_MODELS", "lr,rf,gbt,persistence",
            "Spark streaming job: the saved models that score each completed minute bar into price_predictions "
            "('none': no live predictions)"),
    Setting("BTC_STREAM_STALL_SECONDS", "120",
            "stream_health_sensor: a heartbeat (or the newest trade) older than this means the component is down"),
    Setting("BTC_STREAM_RESTART_COOLDOWN_SECONDS", "600",
            "stream_health_sensor: at most one restart request per component in this many seconds"),
    Setting("BTC_STREAM_SENSOR_INTERVAL_SECONDS", "60",
            "stream_health_sensor: seconds between its evaluations (read when the code location loads: restart "
            "the daemon after a change); a stalled component is restarted within `BTC_STREAM_STALL_SECONDS` + this"),
)
SETTINGS += STREAM_SETTINGS
SETTINGS += (
    Setting("BTC_REPLAY_BUCKET", "btc_replay",
            "replay (`btc-pipeline replay`, `replay_job`): the InfluxDB bucket a replayed day goes to, apart from the "
            "live one (created with BTC_INFLUX_TOKEN if missing)"),
    Setting("BTC_REPLAY_TOPIC_TEMPLATE", "{symbol}-REPLAY-TRADES",
            "replay: its trade topic per symbol (deleted and created anew by each replay)"),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def checkout_root() -> Path | None:
    """The source checkout this package runs from (editable install or ``PYTHONPATH``), or None when installed."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "mapreduce" / "mapper.py").is_file() and (root / "pyproject.toml").is_file() else None


def data_dir() -> Path:
    """Where ``mapreduce/`` and ``grafana/`` are: ``BTC_DATA_DIR``, else the checkout, else the installed copy."""
    configured = os.environ.get("BTC_DATA_DIR")
    if configured:
        path = Path(configured).expanduser()
    else:
        path = checkout_root() or Path(sys.prefix) / "share" / DISTRIBUTION
    if not (path / "mapreduce" / "mapper.py").is_file():
        raise FileNotFoundError(f"BTC_DATA_DIR={path} has no mapreduce/mapper.py: point BTC_DATA_DIR at the folder "
                                f"holding mapreduce/ and grafana/ (the checkout, or <prefix>/share/{DISTRIBUTION})")
    return path


def cache_dir() -> Path:
    """``BTC_CACHE_DIR``: downloaded and built engines and tools, outside any checkout (an empty value counts as unset)."""
    return Path(os.environ.get("BTC_CACHE_DIR") or Path.home() / ".cache" / "btc-pipeline").expanduser().resolve()


def mapreduce_dir() -> Path:
    return data_dir() / "mapreduce"


def grafana_dir() -> Path:
    return data_dir() / "grafana"


def profile() -> str:
    name = os.environ.get("BTC_PROFILE") or "local"
    if name not in PROFILES:
        raise ValueError(f"BTC_PROFILE must be one of {', '.join(PROFILES)}, got {name!r}")
    return name


def stack_env_file() -> Path:
    """The env file the local stack writes its endpoints and generated credentials to."""
    state = os.environ.get("BTC_STACK_DIR") or (checkout_root() or Path.cwd()) / ".local-stack"
    return Path(state).expanduser() / "stack.env"


def parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{number}: expected NAME=value, got {line!r}")
        name, value = line.split("=", 1)
        values[name.strip()] = value.strip().strip('"').strip("'")
    return values


@lru_cache(maxsize=8)
def _env_file_values(path: Path, mtime_ns: int) -> dict[str, str]:
    return parse_env_file(path)


def defaults() -> dict[str, str]:
    """Every non-secret setting's default; placeholders (``<…>``) describe values only the stack knows: empty."""
    return {setting.name: "" if setting.default.startswith("<") else setting.default
            for setting in SETTINGS if not setting.secret}


def profile_env() -> dict[str, str]:
    """The values the profile adds below the environment: the local stack's env file (local profile) over the
    defaults. Secrets get no default: a missing one fails the run that needs it, by name."""
    values = defaults()
    if profile() == "local":
        env_file = stack_env_file()
        if env_file.exists():
            values.update(_env_file_values(env_file, env_file.stat().st_mtime_ns))
    return values


def load_profile_env() -> str:
    """For a standalone entry point's ``main()`` (the producer, the Spark job): fill this process's
    environment from the profile, so child processes see the same values. Variables already set win."""
    for name, value in profile_env().items():
        os.environ.setdefault(name, value)
    return profile()


def get(name: str) -> str:
    """The value of a setting: the environment, then the profile (stack env file), then its default."""
    setting = _BY_NAME[name]
    value = os.environ.get(name) or profile_env().get(name)
    if value:
        return value
    if setting.default.startswith(("<", "(")):
        raise KeyError(f"{name} is not set: {setting.meaning}. Start the local stack "
                       f"(`btc-pipeline stack up`) or set it in the environment")
    return setting.default


def get_optional(name: str) -> str:
    """Like ``get``, but an unset setting without a real default (a token, a jar list) is ``""``."""
    try:
        return get(name)
    except KeyError:
        return ""


def default(name: str) -> str:
    """A setting's one default, for a resource field (placeholders ``<…>`` and secrets give ``""``)."""
    value = _BY_NAME[name].default
    return "" if value.startswith(("<", "(")) else value


def get_int(name: str) -> int:
    raw = get(name)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None


def kafka_settings() -> dict[str, object]:
    """The Kafka settings every component that writes or reads the trade topics shares."""
    return {"bootstrap_servers": get("BTC_KAFKA_BOOTSTRAP_SERVERS"), "topic_template": get("BTC_KAFKA_TOPIC_TEMPLATE"),
            "partitions": get_int("BTC_KAFKA_PARTITIONS"), "replication": get_int("BTC_KAFKA_REPLICATION")}


def parse_symbols(raw: str) -> list[str]:
    """``BTC_SYMBOLS``'s value as symbols: comma-separated, upper-cased; none at all is an error."""
    found = [symbol.strip().upper() for symbol in raw.split(",") if symbol.strip()]
    if not found:
        raise ValueError(f"BTC_SYMBOLS={raw!r} names no symbol: set it to e.g. BTCUSDT or BTCUSDT,ETHUSDT")
    return found


def symbols() -> list[str]:
    return parse_symbols(get("BTC_SYMBOLS"))


def model_list(raw: str) -> tuple[str, ...]:
    """A comma-separated list of model names (``none`` or empty: no model); unknown names are the caller's to
    reject, since the models are named in the contracts."""
    if raw.strip().lower() in ("", "none"):
        return ()
    return tuple(dict.fromkeys(name.strip().lower() for name in raw.split(",") if name.strip()))


def env_example() -> str:
    """The text of `.env.example`: every setting with its default, secrets left empty."""
    lines = ["# Generated from btc_assets/config.py (btc-pipeline config --env-example).",
             "# The local stack writes the real values to $BTC_STACK_DIR/stack.env itself;",
             "# for the cluster profile copy this file to .env and fill it in. Never commit secrets.", ""]
    for setting in SETTINGS:
        lines.append(f"# {setting.meaning}")
        if setting.secret:
            lines.append(f"{setting.name}=")
        elif setting.default.startswith(("<", "(")):
            lines.append(f"# {setting.name}={setting.default}")
        else:
            lines.append(f"{setting.name}={setting.default}")
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        rows.append(f"| `{setting.name}` | `{setting.default}` | {setting.meaning} |")
    return "\n".join(rows)

"""Configuration and cluster files: README and .env.example document every setting; docker compose parses and holds no secret."""

from __future__ import annotations

import re

import pytest
import yaml

from btc_assets import config
from btc_localstack.base import REPO_ROOT

SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)


def test_readme_documents_every_setting():
    readme = (REPO_ROOT / "README.md").read_text()
    assert config.markdown_table() in readme, "regenerate the table: btc-pipeline config --markdown"


def test_env_example_is_generated_from_settings():
    assert (REPO_ROOT / ".env.example").read_text() == config.env_example()
    for setting in config.SETTINGS:
        if setting.secret:
            assert f"\n{setting.name}=\n" in config.env_example()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO_ROOT / "README.md").read_text()
    head = readme[:1500]
    assert "./pipeline demo" in head and "./pipeline test" in head
    assert "./pipeline test" in (REPO_ROOT / ".ci" / "run").read_text()


INFRA = REPO_ROOT / "infra"
# The services that run the project's code (the btc-pipeline image): they need every setting.
CODE_SERVICES = ("influx-init", "producer", "stream-job", "dagster-code", "dagster-webserver", "dagster-daemon")
# Settings only the local stack uses (its own directories, the password of the InfluxDB it set up).
LOCAL_ONLY = {"BTC_STACK_DIR", "BTC_CACHE_DIR", "BTC_INFLUX_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
# Variables the code reads that are not settings of the pipeline: the local stack's ports and test knobs.
NOT_SETTINGS = re.compile(r"BTC_STACK_\w+_PORT|BTC_TEST_\w+|BTC_KEEP_STACK|BTC_CHROMIUM")
READ = re.compile(r"""(?:config\.get(?:_int|_optional)?|EnvVar(?:\.int)?|\benv(?:\.int)?|os\.environ\.get|os\.getenv)"""
                  r"""\(\s*["']((?:BTC|DAGSTER|HADOOP)_[A-Z0-9_]+)["']|os\.environ\[["']((?:BTC|DAGSTER|HADOOP)_[A-Z0-9_]+)["']\]""")


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def env_example_defined() -> set[str]:
    """The settings .env.example gives a value line to (commented ``# NAME=<placeholder>`` lines are not set)."""
    return {line.split("=", 1)[0] for line in (REPO_ROOT / ".env.example").read_text().splitlines()
            if re.match(r"[A-Z][A-Z0-9_]*=", line)}


def test_every_variable_the_code_reads_is_a_documented_setting():
    names = {setting.name for setting in config.SETTINGS}
    read = {}
    for path in (REPO_ROOT / "btc_assets").rglob("*.py"):
        for match in READ.finditer(path.read_text()):
            read.setdefault(match.group(1) or match.group(2), path.relative_to(REPO_ROOT))
    assert len(read) > 30, read  # the pattern finds the reads at all
    missing = {name: str(where) for name, where in read.items() if name not in names and not NOT_SETTINGS.fullmatch(name)}
    assert not missing, f"read by the code but not in btc_assets/config.py SETTINGS: {missing}"


def test_compose_gives_every_setting_to_every_service_running_the_code():
    services = compose()["services"]
    example = env_example_defined()
    dockerfile_env = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", (INFRA / "Dockerfile").read_text()))
    for name in CODE_SERVICES:
        service = services[name]
        assert service.get("env_file") == ".env", f"{name}: no env_file .env (the settings from .env.example)"
        assert service["image"] == "btc-pipeline:latest", name
    for setting in config.SETTINGS:
        assert setting.name in (REPO_ROOT / ".env.example").read_text(), setting.name
    # What the daemon's DockerRunLauncher passes to each run must be set in the daemon (else every launch
    # fails), and every setting the runs read must be passed.
    daemon_env = example | set(services["dagster-daemon"]["environment"]) | dockerfile_env
    forwarded = set(yaml.safe_load((INFRA / "dagster.yaml").read_text())["run_launcher"]["config"]["env_vars"])
    assert not forwarded - daemon_env, f"forwarded but not set in the daemon: {sorted(forwarded - daemon_env)}"
    expected = {s.name for s in config.SETTINGS if s.name not in LOCAL_ONLY | {"BTC_DATA_DIR"}}
    assert not expected - forwarded, f"not forwarded to the runs: {sorted(expected - forwarded)}"
    placeholders = {s.name for s in config.SETTINGS} - daemon_env - LOCAL_ONLY
    # Left unset in the cluster, it falls back to what the image provides.
    assert placeholders == {"BTC_DATA_DIR"}, placeholders  # the image's installed copy (config.data_dir)
    for name in ("GRAFANA_ADMIN_PASSWORD", "DAGSTER_POSTGRES_PASSWORD", "BTC_INFLUX_TOKEN", "BTC_INFLUX_PASSWORD"):
        assert f"\n{name}=\n" in (REPO_ROOT / ".env.example").read_text(), name


def test_compose_topology_is_the_clusters():
    services = compose()["services"]
    brokers = [s for s in services.values() if str(s.get("image", "")).startswith("apache/kafka")]
    assert len(brokers) == 3
    assert {b["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for b in brokers} == \
        {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert sorted(b["environment"]["KAFKA_NODE_ID"] for b in brokers) == [1, 2, 3]
    assert services["producer"]["environment"]["BTC_KAFKA_REPLICATION"] == "3"
    datanodes = [s for s in services.values() if s.get("command") == ["hdfs", "datanode"]]
    volumes = [tuple(d["volumes"]) for d in datanodes]
    assert len(datanodes) == 3 and len(set(volumes)) == 3, "each DataNode needs a storage volume of its own"
    assert len([s for s in services.values() if s.get("command") == ["yarn", "nodemanager"]]) == 2
    assert len([s for s in services.values() if "org.apache.spark.deploy.worker.Worker" in s.get("command", [])]) == 2
    # Tokens: created by influx-init, read by every InfluxDB client through the shared volume.
    assert services["influx-init"]["command"][:4] == ["python", "-m", "btc_assets.clients.influx", "tokens"]
    for name in ("producer", "stream-job", "dagster-code", "dagster-daemon", "grafana"):
        assert any(str(v).startswith("secrets:/secrets") for v in services[name]["volumes"]), name
    assert services["grafana"]["depends_on"]["influx-init"]["condition"] == "service_completed_successfully"
    assert (INFRA / "with-influx-tokens.sh").stat().st_mode & 0o111
    assert services["stream-job"]["command"] == ["python", "-m", "btc_assets.stream.spark_job"]
    assert services["stream-job"]["environment"]["BTC_SPARK_DRIVER_HOST"] == "stream-job"


@pytest.mark.parametrize("source", ["infra", "local stack"])
def test_the_instance_configs_validate(source, monkeypatch, tmp_path):
    """infra/dagster.yaml and the local stack's, as Dagster reads them: dagster-postgres (and for the cluster
    dagster-docker) importable, the schema valid, queued runs started within a second of room for them."""
    from dagster._core.instance.config import dagster_instance_config

    from btc_localstack.dagster import instance_yaml

    text = (INFRA / "dagster.yaml").read_text() if source == "infra" else instance_yaml(max_runs=4, mapreduce_limit=1)
    (tmp_path / "dagster.yaml").write_text(text)
    for name in ("DAGSTER_POSTGRES_USER", "DAGSTER_POSTGRES_PASSWORD", "DAGSTER_POSTGRES_HOST", "DAGSTER_POSTGRES_DB"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("DAGSTER_POSTGRES_PORT", "5432")
    validated, _ = dagster_instance_config(str(tmp_path))
    assert validated["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    coordinator = validated["run_coordinator"]
    assert (coordinator["class"], coordinator["config"]["dequeue_interval_seconds"]) == ("QueuedRunCoordinator", 1)
    if source == "infra":
        assert validated["run_launcher"]["class"] == "DockerRunLauncher"
        import dagster_docker  # noqa: F401 - the launcher's module
    import dagster_postgres  # noqa: F401 - the storage's module


def test_compose_parses_and_holds_no_secret_literal():
    services = compose()["services"]
    for required in ("kafka-1", "namenode", "datanode-1", "resourcemanager", "nodemanager-1", "historyserver",
                     "spark-master", "spark-worker-1", "influxdb", "influx-init", "grafana", "postgres",
                     "producer", "stream-job", "dagster-webserver", "dagster-daemon"):
        assert required in services, required
    for name, service in services.items():
        assert "bitnami" not in str(service.get("image", "")), f"{name} uses a retired bitnami image"
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:[?-][^}]*)?\}", str(value)), f"{name}.{key} is a literal"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    dagster_yaml = yaml.safe_load((REPO_ROOT / "infra" / "dagster.yaml").read_text())
    assert dagster_yaml["run_launcher"]["class"] == "DockerRunLauncher"
    assert dagster_yaml["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_POSTGRES_PASSWORD"}


def test_grafana_datasource_uses_the_read_token_from_the_environment():
    datasource = yaml.safe_load(
        (REPO_ROOT / "grafana" / "provisioning" / "datasources" / "influxdb.yaml").read_text())["datasources"][0]
    assert datasource["jsonData"]["version"] == "Flux"
    assert datasource["secureJsonData"]["token"] == "${BTC_INFLUX_READ_TOKEN}"


@pytest.mark.parametrize("command", ["test", "produce"])
def test_test_and_produce_pass_their_options_on_untouched(command):
    """`./pipeline test -k producer --durations=0` reaches pytest as typed (argparse refused a leading option)."""
    from btc_localstack import cli

    for typed in (["-k", "producer", "--durations=0"], ["--help"], ["btc_assets_tests/cluster", "-x"], []):
        args = cli.parse([command, *typed])
        assert cli.forwarded(args.pytest_args if command == "test" else args.producer_args) == typed

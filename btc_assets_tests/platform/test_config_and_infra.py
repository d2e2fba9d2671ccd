"""Configuration and cluster files: README and .env.example document every setting; docker compose parses and holds no secret."""

from __future__ import annotations

import re

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


def test_compose_parses_and_holds_no_secret_literal():
    compose = yaml.safe_load((REPO_ROOT / "infra" / "docker-compose.yml").read_text())
    services = compose["services"]
    for required in ("kafka", "namenode", "datanode", "resourcemanager", "nodemanager", "historyserver",
                     "spark-master", "spark-worker", "influxdb", "grafana", "postgres",
                     "dagster-webserver", "dagster-daemon"):
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

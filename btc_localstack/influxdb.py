"""InfluxDB 2 for the local stack: built once from the Go module proxy (Flux from crates.io), run on 127.0.0.1.

The build is `infra/local/build_influxdb.sh` (cached under ``$BTC_CACHE_DIR/influxdb``). On first start
the server is set up (org, bucket, admin user) with a freshly generated admin token, and two more
tokens are created: one that may only write the bucket (the pipeline) and one that may only read it
(Grafana, queries). All three land in the stack's env file, never in the repo.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import requests

from btc_assets.clients.influx import InfluxWriteRefused, create_scoped_token

from .base import REPO_ROOT, ManagedProcess, Service, StackError, ensure_port_free, env_port, progress

BUILD_SCRIPT = REPO_ROOT / "infra" / "local" / "build_influxdb.sh"
DEFAULT_VERSION = "2.7.12"  # keep in step with infra/local/build_influxdb.sh
DEFAULT_ORG = "btc"
DEFAULT_BUCKET = "btc"


class InfluxDBService(Service):
    name = "influxdb"

    def __init__(self, paths, default_port: int = 8086):
        super().__init__(paths)
        self.port = env_port("BTC_STACK_INFLUX_PORT", default_port, component="influxdb")
        self.version = os.environ.get("INFLUXDB_VERSION", DEFAULT_VERSION).lstrip("v")
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess("influxd", self.state)
        self.credentials_file = self.state / "credentials.json"

    # -- provisioning -------------------------------------------------------------------------
    def binary(self) -> Path:
        """``BTC_STACK_INFLUXD`` (an influxd you already have) or the cached build."""
        configured = os.environ.get("BTC_STACK_INFLUXD")
        if configured:
            path = Path(configured).expanduser()
            if not path.exists():
                raise StackError(f"influxdb: BTC_STACK_INFLUXD={path} does not exist")
            return path
        return self.cache / self.version / "influxd"

    def provision(self) -> None:
        if self.binary().exists():
            return
        progress(self.name, "building InfluxDB 2 from the Go module proxy and crates.io "
                            "(first run only, about 4-6 minutes on 2 cores)…")
        env = dict(os.environ, BTC_CACHE_DIR=str(self.paths.cache_dir), INFLUXDB_VERSION=self.version)
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, stdout=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise StackError(f"influxdb: the build failed (exit {result.returncode}); its log is under "
                             f"{self.cache}/<version>/build.log. Alternatively point BTC_STACK_INFLUXD at an "
                             "influxd 2.x binary, or use an InfluxDB you run yourself (cluster profile).")
        if not self.binary().exists():
            raise StackError(f"influxdb: the build finished but no influxd was found under {self.cache}")

    # -- lifecycle ----------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.process.is_running()

    def _healthy(self) -> bool:
        return requests.get(f"{self.url}/health", timeout=2).json().get("status") == "pass"

    def start(self) -> None:
        if self.is_running():
            return
        ensure_port_free("127.0.0.1", self.port, component=self.name, variable="BTC_STACK_INFLUX_PORT")
        data = self.state / "data"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.binary()),
               "--http-bind-address", f"127.0.0.1:{self.port}",
               "--bolt-path", str(data / "influxd.bolt"),
               "--engine-path", str(data / "engine"),
               "--sqlite-path", str(data / "influxd.sqlite"),
               "--reporting-disabled", "--ui-disabled", "--pprof-disabled",
               "--log-level", "warn",
               # Small caches: the machine also runs Kafka, HDFS and Spark.
               "--storage-cache-max-memory-size", str(256 * 1024 * 1024),
               "--query-concurrency", "8", "--query-queue-size", "32"]
        progress(self.name, f"starting influxd on {self.url}")
        self.process.start(cmd)
        self.process.wait_until(self._healthy, component=self.name, what="influxd", timeout=90)
        self._ensure_setup()

    def stop(self, *, kill: bool = False) -> None:
        self.process.stop(kill=kill)

    # -- setup and tokens ---------------------------------------------------------------------
    def credentials(self) -> dict[str, str]:
        if self.credentials_file.exists():
            return json.loads(self.credentials_file.read_text())
        return {}

    def _ensure_setup(self) -> None:
        creds = self.credentials()
        allowed = requests.get(f"{self.url}/api/v2/setup", timeout=5).json().get("allowed", False)
        if allowed:
            creds = {"org": DEFAULT_ORG, "bucket": DEFAULT_BUCKET, "username": "admin",
                     "password": secrets.token_urlsafe(18), "token": secrets.token_urlsafe(32)}
            response = requests.post(f"{self.url}/api/v2/setup", timeout=30, json={
                "username": creds["username"], "password": creds["password"], "org": creds["org"],
                "bucket": creds["bucket"], "token": creds["token"], "retentionPeriodSeconds": 0})
            _raise_for(response, "initial setup")
            body = response.json()
            creds["org_id"] = body["org"]["id"]
            creds["bucket_id"] = body["bucket"]["id"]
            self._save(creds)
        elif not creds.get("token"):
            raise StackError(f"influxdb: the server in {self.state / 'data'} was set up before but its "
                             f"credentials file {self.credentials_file} is gone; run "
                             "`btc-pipeline stack reset influxdb` to start it afresh")
        if not creds.get("write_token") or not creds.get("read_token"):
            creds["write_token"] = self._create_token(creds, "write", "btc-pipeline writer")
            creds["read_token"] = self._create_token(creds, "read", "btc-pipeline reader (Grafana)")
            self._save(creds)

    def _create_token(self, creds: dict[str, str], action: str, description: str) -> str:
        try:
            return create_scoped_token(self.url, creds["token"], creds["org_id"], action, description)
        except InfluxWriteRefused as error:
            raise StackError(f"influxdb: {error}") from None

    def _save(self, creds: dict[str, str]) -> None:
        tmp = self.credentials_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(creds, indent=2))
        os.chmod(tmp, 0o600)
        tmp.rename(self.credentials_file)

    # -- reporting ----------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        return {"running": self.is_running(), "url": self.url, "pid": self.process.pid(),
                "data": str(self.state / "data"), "binary": str(self.binary())}

    def env(self) -> dict[str, str]:
        creds = self.credentials()
        return {"BTC_INFLUX_URL": self.url,
                "BTC_INFLUX_ORG": creds.get("org", DEFAULT_ORG),
                "BTC_INFLUX_BUCKET": creds.get("bucket", DEFAULT_BUCKET),
                "BTC_INFLUX_TOKEN": creds.get("token", ""),
                "BTC_INFLUX_WRITE_TOKEN": creds.get("write_token", ""),
                "BTC_INFLUX_READ_TOKEN": creds.get("read_token", ""),
                "BTC_INFLUX_PASSWORD": creds.get("password", "")}


def _raise_for(response: requests.Response, what: str) -> None:
    if response.status_code >= 300:
        raise StackError(f"influxdb: {what} failed: HTTP {response.status_code} {response.text[:300]}")

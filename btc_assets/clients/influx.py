"""InfluxDB 2 access for the pipeline: batched line-protocol writes and Flux queries.

Writes go out in batches of thousands of points per HTTP request (the original project sent one
request per row). Each instance holds exactly one token, so a reader built with the read-only
token cannot write: the server refuses it, as the platform tests check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

from influxdb_client import InfluxDBClient
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS

DEFAULT_BATCH = 5000


class InfluxWriteRefused(RuntimeError):
    """The server refused a write (bad token, no permission, bad line protocol)."""


@dataclass
class Influx:
    url: str
    org: str
    bucket: str
    token: str
    timeout_ms: int = 30_000

    def __post_init__(self):
        self._client: InfluxDBClient | None = None

    @property
    def client(self) -> InfluxDBClient:
        if self._client is None:
            self._client = InfluxDBClient(url=self.url, token=self.token, org=self.org, timeout=self.timeout_ms)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def ping(self) -> bool:
        return self.client.ping()

    def write_lines(self, lines: Iterable[str], *, batch_size: int = DEFAULT_BATCH,
                    bucket: str | None = None, precision: str = "ns") -> int:
        """Write line-protocol records in batches; return how many were written."""
        api = self.client.write_api(write_options=SYNCHRONOUS)
        written = 0
        for batch in _batches(lines, batch_size):
            try:
                api.write(bucket=bucket or self.bucket, org=self.org, record=batch, write_precision=precision)
            except InfluxDBError as exc:
                status = getattr(exc.response, "status", "?")
                raise InfluxWriteRefused(f"InfluxDB refused a write of {len(batch)} points to "
                                         f"{bucket or self.bucket}: HTTP {status} {exc.message}") from exc
            written += len(batch)
        return written

    def query(self, flux: str, params: dict | None = None) -> list[dict]:
        """Run a Flux query; one dict per record (``_time``, ``_value``, ``_field``, tags, …)."""
        tables = self.client.query_api().query(flux, org=self.org, params=params)
        return [record.values for table in tables for record in table.records]

    def delete(self, predicate: str, *, start: str = "1970-01-01T00:00:00Z", stop: str = "2100-01-01T00:00:00Z",
               bucket: str | None = None) -> None:
        """Delete the points matching ``predicate`` (InfluxDB's delete syntax, e.g. ``symbol="BTCUSDT"``) in
        [start, stop) of the bucket: a token allowed to write it may."""
        self.client.delete_api().delete(start, stop, predicate, bucket=bucket or self.bucket, org=self.org)

    def ensure_bucket(self, name: str, retention_seconds: int = 0) -> str:
        """Create a bucket if missing (needs a token allowed to); return its id."""
        api = self.client.buckets_api()
        found = api.find_bucket_by_name(name)
        if found is not None:
            return found.id
        org = self.client.organizations_api().find_organizations(org=self.org)[0]
        rules = [] if not retention_seconds else [{"type": "expire", "everySeconds": retention_seconds}]
        return api.create_bucket(bucket_name=name, org_id=org.id, retention_rules=rules).id


def _batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- Scoped tokens ----------------------------------------------------------------------------
# The pipeline writes with a token that may only write the org's buckets, Grafana reads with one that may
# only read them; the all-access token stays with the operator. The local stack creates both at setup,
# the cluster profile's `influx-init` service with `python -m btc_assets.clients.influx tokens --out DIR`.

TOKEN_FILES = {"write": "influx_write_token", "read": "influx_read_token"}


def create_scoped_token(url: str, admin_token: str, org_id: str, action: str, description: str) -> str:
    """A new token allowed only ``action`` ("read" or "write") on the org's buckets."""
    import requests

    response = requests.post(f"{url}/api/v2/authorizations", timeout=30,
                             headers={"Authorization": f"Token {admin_token}"},
                             json={"orgID": org_id, "description": description, "permissions": [
                                 {"action": action, "resource": {"type": "buckets", "orgID": org_id}}]})
    if response.status_code >= 300:
        raise InfluxWriteRefused(f"InfluxDB at {url} refused creating the {action} token: "
                                 f"HTTP {response.status_code} {response.text[:300]}")
    return response.json()["token"]


def write_token_files(url: str, admin_token: str, org: str, out: str, *, wait_seconds: float = 120.0) -> dict:
    """The write and read tokens as files in ``out`` (mode 600), created once: files already there are kept."""
    import time
    from pathlib import Path

    import requests

    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {action: directory / name for action, name in TOKEN_FILES.items()}
    if all(path.exists() and path.read_text().strip() for path in paths.values()):
        return {action: "kept" for action in paths}
    deadline = time.monotonic() + wait_seconds
    while True:  # the server may still be starting beside this one-shot service
        try:
            response = requests.get(f"{url}/api/v2/orgs", params={"org": org}, timeout=10,
                                    headers={"Authorization": f"Token {admin_token}"})
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    if response.status_code >= 300 or not response.json().get("orgs"):
        raise InfluxWriteRefused(f"InfluxDB at {url}: no org {org!r} visible to BTC_INFLUX_TOKEN "
                                 f"(HTTP {response.status_code} {response.text[:200]})")
    org_id = response.json()["orgs"][0]["id"]
    done = {}
    for action, path in paths.items():
        token = create_scoped_token(url, admin_token, org_id, action, f"btc-pipeline {action} ({path.name})")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(token + "\n")
        os.chmod(tmp, 0o600 if action == "write" else 0o644)  # Grafana's container runs as another user
        tmp.rename(path)
        done[action] = "created"
    return done


def main(argv: list[str] | None = None) -> int:
    import argparse

    from btc_assets import config

    parser = argparse.ArgumentParser(prog="python -m btc_assets.clients.influx",
                                     description="InfluxDB set-up for the cluster profile.")
    sub = parser.add_subparsers(dest="command", required=True)
    tokens = sub.add_parser("tokens", help="create the scoped write and read tokens as files (once)")
    tokens.add_argument("--out", required=True, help="directory for influx_write_token and influx_read_token")
    args = parser.parse_args(argv)
    if args.command == "tokens":
        admin = config.get("BTC_INFLUX_TOKEN")
        result = write_token_files(config.get("BTC_INFLUX_URL"), admin, config.get("BTC_INFLUX_ORG"), args.out)
        print(f"influx tokens in {args.out}: {result}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""InfluxDB 2 access for the pipeline: batched line-protocol writes and Flux queries.

Writes go out in batches of thousands of points per HTTP request (the original project sent one
request per row). Each instance holds exactly one token, so a reader built with the read-only
token cannot write: the server refuses it, as the platform tests check.
"""

from __future__ import annotations

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

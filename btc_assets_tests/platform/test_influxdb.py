"""InfluxDB on the local stack: 10,000 points with the write token, read back with the read token, which cannot write."""

from __future__ import annotations

import pytest

from btc_assets.clients.influx import Influx, InfluxWriteRefused

POINTS = 10_000


@pytest.fixture
def test_bucket(resources, unique):
    admin = resources["influx"].admin()
    name = f"platform-test-{unique}"
    bucket_id = admin.ensure_bucket(name)
    yield name
    admin.client.buckets_api().delete_bucket(bucket_id)
    admin.close()


def test_write_token_writes_read_token_reads_but_cannot_write(resources, test_bucket):
    influx = resources["influx"]
    base_ns = 1_743_465_600_000_000_000  # 2025-04-01T00:00:00Z
    lines = (f"platform_test,symbol=BTCUSDT price={80_000 + i * 0.01},trade_id={i}i {base_ns + i * 1_000_000}"
             for i in range(POINTS))
    writer = influx.writer()
    assert writer.write_lines(lines, bucket=test_bucket) == POINTS
    writer.close()

    reader = Influx(influx.url, influx.org, test_bucket, influx.read_token)
    rows = reader.query(f'''
        from(bucket: "{test_bucket}")
          |> range(start: 2025-04-01T00:00:00Z, stop: 2025-04-02T00:00:00Z)
          |> filter(fn: (r) => r._measurement == "platform_test" and r._field == "trade_id")
          |> group()
          |> sort(columns: ["_time"])''')
    assert [row["_value"] for row in rows] == list(range(POINTS))

    with pytest.raises(InfluxWriteRefused, match="HTTP (401|403)"):
        reader.write_lines(["platform_test,symbol=BTCUSDT price=1.0 1743465600000000000"])
    reader.close()

#!/bin/sh
# Entry point of every compose service that talks to InfluxDB: the scoped tokens influx-init created
# (in the shared `secrets` volume) become BTC_INFLUX_WRITE_TOKEN and BTC_INFLUX_READ_TOKEN, then the
# service's own command runs. A token already set in the environment (infra/.env) wins.
set -eu
dir="${BTC_SECRETS_DIR:-/secrets}"
if [ -z "${BTC_INFLUX_WRITE_TOKEN:-}" ] && [ -s "$dir/influx_write_token" ]; then
  BTC_INFLUX_WRITE_TOKEN="$(cat "$dir/influx_write_token")"; export BTC_INFLUX_WRITE_TOKEN
fi
if [ -z "${BTC_INFLUX_READ_TOKEN:-}" ] && [ -s "$dir/influx_read_token" ]; then
  BTC_INFLUX_READ_TOKEN="$(cat "$dir/influx_read_token")"; export BTC_INFLUX_READ_TOKEN
fi
exec "$@"

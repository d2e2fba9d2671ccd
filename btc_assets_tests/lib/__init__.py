"""Tests of btc_assets.lib: plain code, no Dagster."""

"""Tests of btc_assets, mirroring its layout."""

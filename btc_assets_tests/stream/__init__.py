"""Tests of the live path: the Binance WebSocket -> Kafka producer and the Binance emulator."""

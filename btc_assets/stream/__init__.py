"""The long-running live services: the Binance WebSocket -> Kafka producer and its Binance emulator."""

"""The live path as Dagster sees it: observed Kafka/Influx assets, a health sensor, a restart job."""

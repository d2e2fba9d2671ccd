"""The platform's own objects: the Kafka topics and the InfluxDB bucket every stage writes to."""

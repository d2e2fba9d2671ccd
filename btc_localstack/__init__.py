"""The local, Docker-free stack: real Kafka, HDFS + MapReduce, Spark and InfluxDB started from registries."""

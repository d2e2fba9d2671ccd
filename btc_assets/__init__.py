"""btc-trades-pipeline: Binance trades through Kafka, Spark, HDFS/MapReduce and InfluxDB, orchestrated by Dagster."""

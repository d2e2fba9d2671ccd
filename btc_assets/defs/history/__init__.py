"""The history path: daily trade files in HDFS, MapReduce minute bars, and the checks that gate them."""

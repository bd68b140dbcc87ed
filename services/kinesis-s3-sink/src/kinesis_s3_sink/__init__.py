"""kinesis-s3-sink: lands a stream of raw records (Kinesis or Kafka) in S3, exactly as the
worker's S3 sink would have written them (ingestion-contract.md §4)."""

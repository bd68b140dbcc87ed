"""Sink registry: a new sink is one module plus one line here."""

SINKS = {
    "s3": "ingest_worker.sinks.s3:S3Sink",
    "kafka": "ingest_worker.sinks.kafka:KafkaSink",
    "kinesis": "ingest_worker.sinks.kinesis:KinesisSink",
}


def load_sink_class(name: str):
    import importlib

    module_name, _, class_name = SINKS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)

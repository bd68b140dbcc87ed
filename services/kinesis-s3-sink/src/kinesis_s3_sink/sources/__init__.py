"""Stream sources: a new source is one module plus one line here."""

SOURCES = {
    "kafka": "kinesis_s3_sink.sources.kafka:KafkaSource",
    "kinesis": "kinesis_s3_sink.sources.kinesis:KinesisSource",
}


def load_source_class(name: str):
    import importlib

    module_name, _, class_name = SOURCES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)

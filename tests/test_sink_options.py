"""How the Kafka sink's settings become producer options (MSK TLS, SCRAM, IAM)."""

from __future__ import annotations

import base64

import pytest
from clickstream_core.settings import ConfigError, load
from ingest_worker.sinks.kafka import KafkaSinkConfig, MskIamTokenProvider, producer_options


def test_defaults_are_acks_all_plaintext():
    options = producer_options(load(KafkaSinkConfig, {"SINK_KAFKA_BROKERS": "b1:9092,b2:9092"}))
    assert options["bootstrap_servers"] == ["b1:9092", "b2:9092"]
    assert options["acks"] == "all"
    assert options["security_protocol"] == "PLAINTEXT"
    assert "sasl_mechanism" not in options


def test_scram_over_tls():
    config = load(
        KafkaSinkConfig,
        {
            "SINK_KAFKA_BROKERS": "b-1.msk:9096",
            "SINK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SINK_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "SINK_KAFKA_SASL_USERNAME": "ingest",
            "SINK_KAFKA_SASL_PASSWORD": "secret",
        },
    )
    options = producer_options(config)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["ssl_context"] is not None
    assert options["sasl_plain_username"] == "ingest"


async def test_msk_iam_signs_a_token_with_the_aws_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    config = load(
        KafkaSinkConfig,
        {
            "SINK_KAFKA_BROKERS": "b-1.msk:9098",
            "SINK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SINK_KAFKA_SASL_MECHANISM": "AWS_MSK_IAM",
        },
    )
    options = producer_options(config)
    assert options["sasl_mechanism"] == "OAUTHBEARER"
    provider = options["sasl_oauth_token_provider"]
    assert isinstance(provider, MskIamTokenProvider)
    token = await provider.token()
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    assert url.startswith("https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect")
    assert "X-Amz-Signature=" in url


def test_mistakes_are_reported_together():
    with pytest.raises(ConfigError) as error:
        load(KafkaSinkConfig, {"SINK_KAFKA_SASL_MECHANISM": "PLAIN", "SINK_KAFKA_ACKS": "0"})
    text = str(error.value)
    assert "SINK_KAFKA_ACKS='0'" in text
    assert "SINK_KAFKA_BROKERS is required" in text
    assert "needs SINK_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in text

"""Fixtures for a real Apache Kafka broker (filled in by the Kafka infrastructure work)."""

"""The proxy's Tally must publish exactly what direct Prometheus updates would have."""

from __future__ import annotations

import random

from ingest_proxy import metrics
from prometheus_client import CollectorRegistry, Histogram


def samples(registry_or_metric, name: str) -> dict:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry_or_metric.collect()
        for sample in family.samples
        if sample.name.startswith(name) and not sample.name.endswith("_created")
    }


def test_tally_flush_matches_direct_histogram_observations():
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "reference_seconds", "same buckets", buckets=metrics.LATENCY._upper_bounds[:-1], registry=reference_registry
    )
    before = samples(metrics.LATENCY, "proxy_collect_seconds")
    tally = metrics.Tally()
    values = [0.0, 0.0005, 0.001, 0.01, 10, 11] * 10  # on the bucket bounds: le is inclusive
    values += [random.uniform(0, 12) for _ in range(500)]
    for value in values:
        tally.observe_latency(value)
        reference.observe(value)
    tally.requests["collect", 200] += 3
    tally.rejections["too_large"] += 2
    tally.flush()
    after = samples(metrics.LATENCY, "proxy_collect_seconds")
    expected = samples(reference_registry, "reference_seconds")
    for (name, labels), value in expected.items():
        ours = name.replace("reference_seconds", "proxy_collect_seconds")
        delta = after[(ours, labels)] - before.get((ours, labels), 0.0)
        assert abs(delta - value) < 1e-6, (name, labels, delta, value)
    assert metrics.REJECTIONS.labels("too_large")._value.get() >= 2
    # A second flush with nothing new changes nothing.
    tally.flush()
    assert samples(metrics.LATENCY, "proxy_collect_seconds") == after

"""The deferred histograms of the hot path: a bulk flush gives prometheus_client exactly what observing the
values one by one gives (buckets, count and sum), including values on a bucket's bound and past the last."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from server.metrics import LATENCY_BUCKETS_S, _DeferredHistogram


def test_bulk_flush_equals_observing_one_by_one():
    rng = random.Random(0)
    values = [rng.expovariate(1 / 3e-3) for _ in range(5000)]
    values += [*LATENCY_BUCKETS_S, 0.0, 5.0, 1e-9]  # on the bounds, above the last, at zero
    exposition = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram(
            "latency_seconds", "test", ["protocol"], buckets=LATENCY_BUCKETS_S, registry=registry
        )
        child = histogram.labels("json")
        if bulk:
            deferred = _DeferredHistogram(child)
            assert deferred._bulk is not None  # this prometheus_client's layout is the one flush expects
            for value in values[:2000]:
                deferred.observe(value)
            deferred.flush()
            for value in values[2000:]:
                deferred.observe(value)
            deferred.flush()
            deferred.flush()  # nothing left: no change
        else:
            for value in values:
                child.observe(value)
        exposition.append(generate_latest(registry).decode())
    plain, bulk_text = exposition
    # The sums are added in a different order: equal to rounding, and every other line identical.
    plain_lines = [line for line in plain.splitlines() if "_sum" not in line]
    bulk_lines = [line for line in bulk_text.splitlines() if "_sum" not in line]
    assert plain_lines == bulk_lines
    sums = [
        float(next(line for line in text.splitlines() if line.startswith("latency_seconds_sum")).split()[-1])
        for text in (plain, bulk_text)
    ]
    assert abs(sums[0] - sums[1]) <= 1e-9 * abs(sums[0])
    assert 'latency_seconds_bucket{le="+Inf",protocol="json"} 5027.0' in bulk_text

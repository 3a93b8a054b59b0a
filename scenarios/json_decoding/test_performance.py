"""Speed: p50 latency per request in a closed loop (one in flight) vs the reference's constrained
decoding, with p90/p99, output tok/s, and the grammar's forced-token share and mask time. Every
measured run's documents are validated too: peers with their own grammar engines are judged by it
(their tokens are not the reference's)."""

import pytest


@pytest.mark.vibeserve_performance(metric="e2e_p50_ms")
def test_request_latency_vs_baseline(vibeserve_workload, vibeserve_perf, vibeserve_checks):
    record = vibeserve_perf.compare(
        vibeserve_workload, validate=vibeserve_checks.json_validity(vibeserve_workload)
    )
    vibeserve_perf.gate(record)

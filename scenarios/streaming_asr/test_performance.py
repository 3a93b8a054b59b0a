"""Speed: p50 latency from an audio chunk to its transcript, engine vs the naive reference per
chunk, measured alternately; p90/p99, the real-time factor and the real-time streams held are
reported beside it."""

import pytest


@pytest.mark.vibeserve_performance(metric="chunk_latency_ms_p50")
def test_chunk_latency_vs_baseline(vibeserve_workload, vibeserve_perf):
    record = vibeserve_perf.compare(vibeserve_workload)
    vibeserve_perf.gate(record)

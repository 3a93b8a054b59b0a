"""Speed: p50 latency of one image, engine vs the reference data flow, measured alternately; the
FLOP ceiling (exact minimal algorithm over the measured peak matmul rate) and the engines'
per-stage timings are reported beside it. Every measured run is audited: an engine that counted
fewer model forwards than its images claim (answers from a cache) fails."""

import pytest


@pytest.mark.vibeserve_performance(metric="image_latency_s_p50")
def test_image_latency_vs_baseline(vibeserve_workload, vibeserve_perf, vibeserve_checks):
    record = vibeserve_perf.compare(
        vibeserve_workload, audit=vibeserve_checks.image_work(vibeserve_workload)
    )
    vibeserve_perf.gate(record)

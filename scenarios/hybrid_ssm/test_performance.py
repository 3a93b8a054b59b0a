"""Speed: aggregate output tok/s of the engine vs plain greedy decoding, measured alternately."""

import pytest


@pytest.mark.vibeserve_performance(metric="output_tok_per_s")
def test_output_throughput_vs_baseline(vibeserve_workload, vibeserve_perf):
    record = vibeserve_perf.compare(vibeserve_workload)
    vibeserve_perf.gate(record)

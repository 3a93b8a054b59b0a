"""Speed: output tok/s under Poisson load (the headline) and batch-1 decode, vs the baseline."""

import pytest


@pytest.mark.vibeserve_performance(metric="output_tok_per_s")
def test_output_throughput_under_load(vibeserve_workload, vibeserve_perf):
    record = vibeserve_perf.compare(vibeserve_workload, label="load")
    vibeserve_perf.gate(record)


@pytest.mark.vibeserve_performance(metric="output_tok_per_s")
def test_batch1_decode_speed(batch1_workload, vibeserve_perf):
    vibeserve_perf.compare(batch1_workload, label="batch-1", headline=False)

"""Exactness: every request's greedy tokens equal the reference's, however the engine shares."""

import pytest


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_tokens_equal_reference(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.tokens(vibeserve_workload, vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="integrity")
def test_engine_runs_its_model(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.forward_counters(vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_requests_over_time_interleaving_prefixes(mixed_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.tokens(mixed_workload, vibeserve_run(mixed_workload))


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_prefix_twin_but_for_its_last_token(near_miss, vibeserve_run, vibeserve_checks):
    vibeserve_checks.tokens(near_miss, vibeserve_run(near_miss))

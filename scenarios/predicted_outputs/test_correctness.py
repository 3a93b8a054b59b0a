"""Exactness: an engine's greedy tokens equal the reference's, whatever the prediction says."""

import pytest


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_tokens_equal_reference(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.tokens(vibeserve_workload, vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="integrity")
def test_engine_runs_its_model(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.forward_counters(vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_wrong_prediction_is_verified_not_trusted(trap_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.tokens(trap_workload, vibeserve_run(trap_workload))


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_request_without_prediction(no_prediction_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.tokens(no_prediction_workload, vibeserve_run(no_prediction_workload))

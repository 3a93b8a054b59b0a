"""Exactness: greedy tokens (and top logprobs) equal the reference's, alone and under load."""

import pytest


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_raw_and_chat_prompts_equal_reference(prompt_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.tokens(prompt_workload, vibeserve_run(prompt_workload))


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_tokens_under_poisson_load_equal_reference(
    vibeserve_workload, vibeserve_run, vibeserve_checks
):
    vibeserve_checks.tokens(vibeserve_workload, vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="logprobs")
def test_top_logprobs_close_to_reference(logprob_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.logprobs(logprob_workload, vibeserve_run(logprob_workload))


@pytest.mark.vibeserve_correctness(checker="integrity")
def test_engine_runs_its_model(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.forward_counters(vibeserve_run(vibeserve_workload))

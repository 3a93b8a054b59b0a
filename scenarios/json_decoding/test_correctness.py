"""Exactness under constraint: the reference's documents are valid (the workload's quality), an
engine's are valid and echo their sentinels, and its tokens are the reference's constrained greedy
tokens (so a token the grammar does not force always comes from the model)."""

import pytest


def test_reference_documents_are_schema_valid(vibeserve_workload, vibeserve_checks):
    """At least [correctness] reference_min_valid_fraction of the reference's documents finish
    valid inside max_tokens: otherwise the schemas or prompts, not the engines, need work."""
    vibeserve_checks.json_documents(vibeserve_workload)


@pytest.mark.vibeserve_correctness(checker="json_schema")
def test_documents_are_schema_valid(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.json_documents(vibeserve_workload, vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_tokens_equal_constrained_reference(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.tokens(vibeserve_workload, vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="integrity")
def test_engine_runs_its_model(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.forward_counters(vibeserve_run(vibeserve_workload))

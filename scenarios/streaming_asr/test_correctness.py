"""Exactness: every partial transcript and every final one equal the reference's."""

import pytest


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_every_transcript_equals_reference(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.transcripts(vibeserve_workload, vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="tokens")
def test_streams_closed_by_an_empty_final_chunk(closing_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.transcripts(closing_workload, vibeserve_run(closing_workload))


@pytest.mark.vibeserve_correctness(checker="integrity")
def test_engine_runs_its_model(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.forward_counters(vibeserve_run(vibeserve_workload))

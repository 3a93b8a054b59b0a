"""Images within PSNR/SSIM of the fp32 reference's, on the full schedule with guidance."""

import pytest


@pytest.mark.vibeserve_correctness(checker="image")
def test_images_match_reference(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.generated_images(vibeserve_workload, vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="integrity")
def test_full_schedule_with_guidance(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.denoising(vibeserve_workload, vibeserve_run(vibeserve_workload))


@pytest.mark.vibeserve_correctness(checker="integrity")
def test_repeated_prompt_is_denoised_again(repeated_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.denoising(repeated_workload, vibeserve_run(repeated_workload))


@pytest.mark.vibeserve_correctness(checker="image")
def test_repeated_prompt_images_match_reference(repeated_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.generated_images(repeated_workload, vibeserve_run(repeated_workload))


@pytest.mark.vibeserve_correctness(checker="integrity")
def test_engine_runs_its_model(vibeserve_workload, vibeserve_run, vibeserve_checks):
    vibeserve_checks.forward_counters(vibeserve_run(vibeserve_workload))

"""Scenario unified_multimodal end to end at the tiny scale: the starter passes and is measured
against its FLOP ceiling; engines that cut steps, drop guidance or answer from a cache are
rejected with their reason (and lying about it does not help); a bf16 engine passes.

Each test runs the scenario's own test modules in a pytest subprocess (pytester), the way a user
or the synthesis loop's Judge runs them, and reads the JSON report the loop would read. At tiny
scale a ``-k correctness`` run takes 10-20 s once the shared cache holds the model and the
reference images (the first run builds both).

Which check fails where: ``test_images_match_reference`` (PSNR/SSIM) and
``test_full_schedule_with_guidance`` (denoising) run the main workload (4 distinct prompts);
``test_repeated_prompt_is_denoised_again`` and ``test_repeated_prompt_images_match_reference``
run one prompt four times (first; exactly again under a new id; the same noise with another
probe step; other noise) and check its denoising and its images apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCENARIO = HERE.parent / "scenarios" / "unified_multimodal"
ENGINES = HERE / "engines"
IMAGES, MAIN = "test_images_match_reference", "test_full_schedule_with_guidance"
REPEATED = "test_repeated_prompt_is_denoised_again"
REPEATED_IMAGES = "test_repeated_prompt_images_match_reference"


def run_scenario(pytester, cache, *args, engine=None):
    argv = [str(SCENARIO), "--vibeserve-scale", "tiny", "--vibeserve-cache", str(cache)]
    argv += ["--vibeserve-report", "report.json", "-p", "no:cacheprovider", *args]
    if engine is not None:
        argv += ["--vibeserve-engine", str(ENGINES / engine)]
    result = pytester.runpytest_subprocess(*argv, timeout=600)
    report_path = pytester.path / "report.json"
    return result, json.loads(report_path.read_text()) if report_path.exists() else None


def check(report, name, test):
    """The check ``name`` that test ``test`` recorded, or None if it recorded none."""
    found = [
        c
        for c in report["correctness"]["checks"]
        if c["name"] == name and c["nodeid"].endswith(f"::{test}")
    ]
    assert len(found) <= 1
    return found[0] if found else None


def reasons(result_check):
    return {f["data"]["reason"] for f in result_check["failures"]}


def outcomes(report):
    return {t["nodeid"].rsplit("::", 1)[1]: t["outcome"] for t in report["correctness"]["tests"]}


def test_starter_passes_every_check_and_is_measured(pytester, vibeserve_cache):
    result, report = run_scenario(pytester, vibeserve_cache)
    result.assert_outcomes(passed=6)
    assert report["scenario"] == "unified_multimodal"
    assert report["correctness"]["passed"] is True
    assert {c["name"] for c in report["correctness"]["checks"]} == {
        "image",
        "denoising",
        "integrity",
    }
    main = check(report, "denoising", MAIN)
    # 4 images of 19 model calls, every one counted by the engine
    assert main["stats"]["claimed_calls"] == main["stats"]["forward_calls"] == 4 * 19
    assert check(report, "denoising", REPEATED)["stats"]["claimed_calls"] == 4 * 19
    performance = report["performance"]
    assert performance["metric"] == "image_latency_s_p50"
    assert performance["higher_is_better"] is False
    assert performance["candidate"] > 0 and performance["baseline"] > 0
    stats = performance["workload_stats"]
    assert (stats["images"], stats["steps"], stats["guidance"]) == (4, 20, 5.0)
    run = next(row for row in performance["table"] if row["engine"] == "candidate")
    assert run["image_latency_s_p90"] >= run["image_latency_s_p50"] > 0
    assert set(run["image_stages_ms"]) == {"encode", "denoise", "decode"}
    image = report["roofline"]["image"]
    assert image["ceiling_fp32_s"] > 0
    assert 0 < image["minimal_gflop"] < image["reference_gflop"]
    assert image["minimal_gflop_by_stage"]["logits"] == 0
    # an honest engine is far from the ceiling of the minimal algorithm
    assert 0 < run["roofline_pct"] < 100
    result.stdout.fnmatch_lines(
        [
            "*ceiling: * GFLOP an image (exact minimal algorithm; the reference data flow runs *",
            "*image latency candidate: p50 * s, p90 * s = *% of the fp32 ceiling*",
        ]
    )


def test_the_gpu_scale_without_a_gpu_names_the_fix_and_builds_nothing(pytester, tmp_path):
    """The gpu scale (t2i-gpu, ~320M parameters, cuda) on a machine whose torch sees no CUDA
    device: every test errors naming the device and the options that fix it, before anything
    is built."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the gpu scale would run")
    cache = tmp_path / "cache"
    result, _ = run_scenario(pytester, cache, "--vibeserve-scale", "gpu", "-k", "correctness")
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        ["*at scale 'gpu' runs on cuda, but torch here sees no CUDA device*--vibeserve-scale*"]
    )
    built = list((cache / "models").glob("t2i-gpu-*")) if (cache / "models").exists() else []
    assert built == []


def test_cut_steps_are_rejected_by_their_model_calls(pytester, vibeserve_cache):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine="image_cut_steps"
    )
    result.assert_outcomes(passed=1, failed=4)  # the engine does run its model
    denoising = check(report, "denoising", MAIN)
    assert reasons(denoising) == {"model_calls"}
    assert len(denoising["failures"]) == 4
    assert {f["data"]["model_calls"] for f in denoising["failures"]} == {17}
    result.stdout.fnmatch_lines(
        ["*ran 17 model calls; a schedule of 20 points needs 19, one per Euler step*"]
    )
    # at tiny scale two steps fewer also moves every image below the PSNR gate (25-28 dB)
    images = check(report, "image", IMAGES)
    assert reasons(images) == {"too_different"}
    assert all(f["data"]["psnr"] < 35 for f in images["failures"])


def test_cut_steps_claiming_the_full_schedule_are_rejected_by_trajectory(pytester, vibeserve_cache):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine="image_cut_steps_lying"
    )
    result.assert_outcomes(passed=1, failed=4)
    denoising = check(report, "denoising", MAIN)
    assert len(denoising["failures"]) == 4
    # the claims hold up (model calls, unconditional calls, the trajectory's length and the
    # forward counter all say 19 an image): only the numbers give it away
    assert reasons(denoising) <= {"trajectory", "probe"}
    assert denoising["stats"]["forward_calls"] == denoising["stats"]["claimed_calls"] == 4 * 19
    errors = denoising["stats"]["trajectory_errors"]
    assert len(errors) == 4 and min(errors.values()) > 0.05
    result.stdout.fnmatch_lines(["*the latent after Euler step * is off the reference's by *"])


def test_dropped_guidance_is_named(pytester, vibeserve_cache):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine="image_no_guidance"
    )
    result.assert_outcomes(passed=1, failed=4)
    denoising = check(report, "denoising", MAIN)
    assert reasons(denoising) == {"guidance_dropped"}
    assert len(denoising["failures"]) == 4
    result.stdout.fnmatch_lines(
        ["*guidance dropped: none of the 19 model calls evaluated the unconditional branch*"]
    )


def test_dropped_guidance_claiming_cfg_fails_the_trajectory_and_the_image(
    pytester, vibeserve_cache
):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine="image_no_guidance_lying"
    )
    result.assert_outcomes(passed=1, failed=4)
    denoising = check(report, "denoising", MAIN)
    assert len(denoising["failures"]) == 4
    assert reasons(denoising) <= {"trajectory", "probe"}
    assert "guidance_dropped" not in reasons(denoising)
    images = check(report, "image", IMAGES)
    assert reasons(images) == {"too_different"}
    assert len(images["failures"]) == 4
    assert max(f["data"]["psnr"] for f in images["failures"]) < 30  # 21-25 dB at tiny scale


def test_a_cache_keyed_by_prompt_fails_the_repeated_prompt(pytester, vibeserve_cache):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine="image_cached_by_prompt"
    )
    result.assert_outcomes(passed=3, failed=2)  # the main workload repeats no prompt
    assert outcomes(report)[REPEATED] == outcomes(report)[REPEATED_IMAGES] == "failed"
    images = check(report, "image", REPEATED_IMAGES)
    # other noise answered with the first image: far off; the other answers have its pixels
    [failure] = images["failures"]
    assert failure["request_id"].endswith("-new-noise")
    assert failure["data"]["psnr"] < 25
    psnr = {rid: m["psnr"] for rid, m in images["stats"]["per_image"].items()}
    first = failure["request_id"].removesuffix("-new-noise")
    assert psnr[first] == psnr[f"{first}-again"] == psnr[f"{first}-exact"] == "inf"
    denoising = check(report, "denoising", REPEATED)
    by_request = {f["request_id"]: f["data"]["reason"] for f in denoising["failures"]}
    # the same noise with another probe step gets the first answer's probe latent
    assert by_request[f"{first}-again"] == "probe"
    # three answers replayed while claiming their calls: the forward counter falls short
    assert by_request[None] == "forwards_short"
    assert denoising["stats"]["forward_calls"] < denoising["stats"]["claimed_calls"]


def test_a_cache_keyed_by_prompt_and_seed_is_named_by_its_zero_model_calls(
    pytester, vibeserve_cache
):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine="image_cached_by_prompt_and_seed"
    )
    result.assert_outcomes(passed=4, failed=1)
    assert outcomes(report)[REPEATED] == "failed"
    assert check(report, "image", REPEATED_IMAGES)["passed"]  # the cached pixels are right
    denoising = check(report, "denoising", REPEATED)
    failures = {f["request_id"]: f for f in denoising["failures"]}
    assert {rid.rsplit("-", 1)[-1] for rid in failures} == {"exact", "again"}
    for failure in failures.values():
        assert failure["data"]["reason"] == "model_calls"
        assert failure["data"]["model_calls"] == 0
        assert "(an image answered without denoising: a cached output?)" in failure["message"]


def test_a_lying_cache_of_exact_requests_is_caught_by_the_forward_counter(
    pytester, vibeserve_cache
):
    """A cache keyed by everything that decides an answer (prompt, seed, probe step), replaying
    it while claiming the 19 model calls it did not run: the repeated workload asks one request
    exactly again under a new id, and the forward counter falls short of the calls claimed. The
    performance runs each start a fresh engine (``fresh_engine``), so no measured image is a
    cache hit, and every measured run is audited the same way."""
    result, report = run_scenario(pytester, vibeserve_cache, engine="image_cached_lying")
    result.assert_outcomes(passed=5, failed=1)
    assert outcomes(report)[REPEATED] == "failed"
    denoising = check(report, "denoising", REPEATED)
    assert reasons(denoising) == {"forwards_short"}
    stats = denoising["stats"]
    assert stats["claimed_calls"] - stats["forward_calls"] == 19  # the one exact repeat
    result.stdout.fnmatch_lines(["*counted * model forwards in this run, but its images claim*"])
    performance = report["performance"]
    assert performance["ratio"] < 20  # measured on fresh engines: no cache hits to time


def test_a_bf16_engine_passes_every_gate(pytester, vibeserve_cache):
    """Positive control: the loop's rendered engine in bfloat16 (the latent and the Euler update
    in fp32) is approximate, and at tiny scale well within every gate (PSNR ~49 dB, probe error
    < 0.01, trajectory error < 0.005 of the RMS)."""
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine="image_bf16"
    )
    result.assert_outcomes(passed=5)
    images = check(report, "image", IMAGES)
    assert 35 < images["stats"]["lowest_psnr"] < 80  # approximate, not exact
    denoising = check(report, "denoising", MAIN)
    assert 0 < max(denoising["stats"]["probe_errors"].values()) < 0.05
    assert 0 < max(denoising["stats"]["trajectory_errors"].values()) < 0.05
    integrity = check(report, "integrity", "test_engine_runs_its_model")
    assert integrity["stats"]["counters"]["weight_bits"] == 16

"""Denoising integrity: an exact copy passes; cut steps, dropped guidance, a changed trajectory or
probe latent, a missing answer and an engine counting fewer forwards than it claims each fail
with their own reason, found at the step where they happen."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vibeserve.checkers.denoising import check_denoising
from pytest_vibeserve.contract import ImageRequest, image_event
from pytest_vibeserve.reference import ReferenceImage

CHANNELS, SIDE, STEPS = 16, 8, 20
CALLS = STEPS - 1


def reference_image(seed: int = 0, calls: int = CALLS) -> ReferenceImage:
    rng = np.random.default_rng(seed)
    return ReferenceImage(
        pixels=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        probe_latent=rng.standard_normal((CHANNELS, SIDE, SIDE)).astype(np.float32),
        trajectory=rng.normal(0.0, 0.3, (calls, CHANNELS)).tolist(),
        trajectory_rms=rng.uniform(0.5, 2.0, calls).tolist(),
        seconds=0.1,
    )


def payload_of(reference: ReferenceImage, rid: str = "img", **changes) -> dict:
    """The payload an engine reproducing ``reference`` exactly sends; ``changes`` replace
    image_event's arguments (probe_latent, trajectory, model_calls, uncond_calls)."""
    fields = dict(
        probe_latent=reference.probe_latent,
        trajectory=reference.trajectory,
        model_calls=len(reference.trajectory),
        uncond_calls=len(reference.trajectory),
    )
    fields.update(changes)
    return image_event(rid, reference.pixels, **fields).payload


def request(rid: str = "img", **fields) -> ImageRequest:
    return ImageRequest(**{"request_id": rid, "prompt": "a fox", "seed": 1, "steps": STEPS,
                           "probe_step": 5, **fields})  # fmt: skip


def check(payloads, references=None, requests=None, **kwargs):
    """check_denoising of ``payloads`` against ``references`` (default: ``reference_image()``
    as "img"), one default request per reference unless ``requests`` are given."""
    references = references if references is not None else {"img": reference_image()}
    requests = requests or [request(rid) for rid in references]
    return check_denoising(requests, references, payloads, **kwargs)


def only_failure(result):
    assert not result.passed
    [failure] = result.failures
    return failure


def test_an_exact_copy_passes_with_zero_errors() -> None:
    references = {"a": reference_image(1), "b": reference_image(2)}
    payloads = {rid: payload_of(ref, rid) for rid, ref in references.items()}
    result = check(payloads, references, forward_calls=2 * CALLS)
    assert result.passed, result.summary
    assert result.failures == []
    assert result.stats["probe_errors"] == {"a": 0.0, "b": 0.0}
    assert result.stats["trajectory_errors"] == {"a": 0.0, "b": 0.0}
    assert result.stats["claimed_calls"] == result.stats["forward_calls"] == 2 * CALLS
    assert result.summary.startswith("denoising: 2/2 images denoised on the full schedule")
    assert "worst probe error 0.00e+00" in result.summary


def test_cut_steps_fail_on_model_calls_and_nothing_else() -> None:
    reference = reference_image()
    cut = payload_of(reference, model_calls=CALLS - 2, trajectory=reference.trajectory[:-2])
    failure = only_failure(check({"img": cut}))
    assert failure.request_id == "img"
    assert failure.data["reason"] == "model_calls"
    assert (failure.data["model_calls"], failure.data["expected_calls"]) == (CALLS - 2, CALLS)
    assert "ran 17 model calls; a schedule of 20 points needs 19" in failure.message
    assert "steps may not be cut" in failure.message
    assert "cached output" not in failure.message


def test_zero_model_calls_hint_at_a_cached_output() -> None:
    failure = only_failure(check({"img": payload_of(reference_image(), model_calls=0)}))
    assert failure.data["reason"] == "model_calls"
    assert "ran 0 model calls" in failure.message
    assert "(an image answered without denoising: a cached output?)" in failure.message


@pytest.mark.parametrize("uncond", [-1, CALLS + 1, None, "19"])
def test_uncond_calls_out_of_range_or_not_an_int_fail(uncond) -> None:
    payload = {**payload_of(reference_image()), "uncond_calls": uncond}
    failure = only_failure(check({"img": payload}))
    assert failure.data["reason"] == "uncond_calls"
    assert f"uncond_calls={uncond!r}, must be an int in 0..{CALLS}" in failure.message


def test_guidance_dropped_is_named_unless_guidance_is_one() -> None:
    reference = reference_image()
    honest_no_cfg = payload_of(reference, uncond_calls=0)
    failure = only_failure(check({"img": honest_no_cfg}))
    assert failure.data["reason"] == "guidance_dropped"
    assert "guidance dropped: none of the 19 model calls evaluated the unconditional" in (
        failure.message
    )
    assert "guidance 5 needs v = v_u + g (v_c - v_u)" in failure.message
    # guidance 1 needs no unconditional branch: v = v_c
    assert check({"img": honest_no_cfg}, requests=[request(guidance=1.0)]).passed
    # a CFG stride (the unconditional branch on some steps only) is for the numbers to judge
    assert check({"img": payload_of(reference, uncond_calls=5)}).passed


def test_a_trajectory_of_the_wrong_length_fails() -> None:
    reference = reference_image()
    short = payload_of(reference, trajectory=reference.trajectory[:-1])
    failure = only_failure(check({"img": short}))
    assert failure.data["reason"] == "trajectory_length"
    assert failure.data["steps"] == CALLS - 1
    assert "the trajectory has 18 steps; report the latent's channel means after each" in (
        failure.message
    )
    assert only_failure(check({"img": payload_of(reference, trajectory=[])})).data["steps"] == 0


def test_a_trajectory_step_off_by_a_tenth_of_the_rms_fails_at_that_step() -> None:
    reference = reference_image()
    trajectory = [list(means) for means in reference.trajectory]
    trajectory[7] = [x + 0.1 * reference.trajectory_rms[7] for x in trajectory[7]]
    result = check({"img": payload_of(reference, trajectory=trajectory)})
    failure = only_failure(result)
    assert (failure.data["reason"], failure.data["step"]) == ("trajectory", 7)
    assert failure.data["error"] == pytest.approx(0.1)
    assert "the latent after Euler step 7 is off the reference's by 0.1000 of its RMS" in (
        failure.message
    )
    assert "(> 0.05)" in failure.message
    assert result.stats["trajectory_errors"]["img"] == pytest.approx(0.1)
    assert result.stats["probe_errors"] == {}  # a failed trajectory stops that image's checks


@pytest.mark.parametrize(
    "bad_means",
    [[0.0] * (CHANNELS - 1), [math.nan] * CHANNELS],
    ids=["fewer-channels", "nan"],
)
def test_a_malformed_trajectory_step_is_infinitely_wrong(bad_means) -> None:
    reference = reference_image()
    trajectory = [list(means) for means in reference.trajectory]
    trajectory[3] = bad_means
    failure = only_failure(check({"img": payload_of(reference, trajectory=trajectory)}))
    assert (failure.data["reason"], failure.data["step"]) == ("trajectory", 3)
    assert failure.data["error"] == math.inf
    assert "the latent after Euler step 3 is off the reference's by inf of its RMS" in (
        failure.message
    )


def test_a_probe_latent_of_the_wrong_shape_fails() -> None:
    reference = reference_image()
    small = payload_of(reference, probe_latent=reference.probe_latent[:, :4, :4])
    failure = only_failure(check({"img": small}))
    assert failure.data["reason"] == "probe_shape"
    assert "probe latent of shape (16, 4, 4), expected (16, 8, 8)" in failure.message


def test_a_probe_latent_off_by_ten_percent_fails_with_its_error() -> None:
    reference = reference_image()
    scaled = payload_of(reference, probe_latent=reference.probe_latent * 1.1)
    result = check({"img": scaled})
    failure = only_failure(result)
    assert (failure.data["reason"], failure.data["step"]) == ("probe", 5)
    assert failure.data["error"] == pytest.approx(0.1, rel=1e-5)
    assert "the latent after Euler step 5 differs from the reference's by 0.1000 relative L2" in (
        failure.message
    )
    assert "(> 0.05)" in failure.message
    # within the tolerance given, the same probe passes
    assert check({"img": scaled}, max_probe_error=0.11).passed


def test_fewer_forwards_than_claimed_calls_fail_once_for_the_run() -> None:
    references = {"a": reference_image(1), "b": reference_image(2)}
    payloads = {rid: payload_of(ref, rid) for rid, ref in references.items()}
    result = check(payloads, references, forward_calls=CALLS)  # one image answered from a cache
    failure = only_failure(result)
    assert failure.request_id is None
    assert failure.data["reason"] == "forwards_short"
    assert (failure.data["forward_calls"], failure.data["claimed_calls"]) == (CALLS, 2 * CALLS)
    assert "the engine counted 19 model forwards in this run, but its images claim 38" in (
        failure.message
    )
    assert result.summary.startswith("denoising: 2/2 images")  # no image is to blame alone
    # more forwards than claimed (warm-ups, retries) is no problem; no counter is no check
    assert check(payloads, references, forward_calls=3 * CALLS).passed
    assert check(payloads, references, forward_calls=None).passed


def test_claimed_calls_count_failed_images_too() -> None:
    """The forward check sums every int model_calls claimed, even of images failing otherwise."""
    references = {"a": reference_image(1), "b": reference_image(2)}
    payloads = {"a": payload_of(references["a"], "a"), "b": payload_of(references["b"], "b")}
    payloads["b"] = {**payloads["b"], "uncond_calls": 0}  # fails guidance_dropped
    result = check(payloads, references, forward_calls=CALLS)
    assert {f.data["reason"] for f in result.failures} == {"guidance_dropped", "forwards_short"}
    assert result.stats["claimed_calls"] == 2 * CALLS


def test_a_missing_answer_fails_by_request() -> None:
    references = {"a": reference_image(1), "b": reference_image(2)}
    result = check({"a": payload_of(references["a"], "a")}, references)
    failure = only_failure(result)
    assert (failure.request_id, failure.data["reason"]) == ("b", "missing_request")
    assert failure.message == "image b: no answer"
    assert result.summary.startswith("denoising: 1/2 images denoised")


def test_each_failing_image_reports_its_first_problem_only() -> None:
    reference = reference_image()
    everything_wrong = payload_of(
        reference,
        model_calls=CALLS - 1,
        uncond_calls=0,
        trajectory=[],
        probe_latent=reference.probe_latent * 2,
    )
    assert only_failure(check({"img": everything_wrong})).data["reason"] == "model_calls"


@pytest.mark.parametrize("name", ["max_probe_error", "max_trajectory_error"])
@pytest.mark.parametrize("value", [0.0, -0.1, math.inf, math.nan])
def test_invalid_tolerances_raise(name, value) -> None:
    payloads = {"img": payload_of(reference_image())}
    with pytest.raises(ValueError, match=f"{name} must be a positive number"):
        check(payloads, **{name: value})


@settings(max_examples=150, deadline=None)
@given(
    step=st.integers(0, CALLS - 1),
    tolerance=st.floats(1e-3, 0.5),
    factor=st.one_of(st.floats(1.001, 20.0), st.floats(0.0, 0.5)),
    channel=st.one_of(st.none(), st.integers(0, CHANNELS - 1)),
    sign=st.sampled_from([-1.0, 1.0]),
)
def test_a_perturbation_is_found_at_its_step_exactly_when_over_tolerance(
    step, tolerance, factor, channel, sign
) -> None:
    """A perturbation of the channel means at one step of size e (the RMS over channels of the
    change, over the reference latent's RMS there) fails at that step when e > tolerance and
    passes when e < tolerance / 2, spread over every channel or all in one."""
    reference = reference_image()
    e = factor * tolerance
    trajectory = [list(means) for means in reference.trajectory]
    rms = reference.trajectory_rms[step]
    if channel is None:
        trajectory[step] = [x + sign * e * rms for x in trajectory[step]]
    else:
        trajectory[step][channel] += sign * e * rms * math.sqrt(CHANNELS)
    result = check(
        {"img": payload_of(reference, trajectory=trajectory)}, max_trajectory_error=tolerance
    )
    if factor > 1:
        failure = only_failure(result)
        assert (failure.data["reason"], failure.data["step"]) == ("trajectory", step)
        assert failure.data["error"] == pytest.approx(e, rel=1e-6)
    else:
        assert result.passed, result.summary
        assert result.stats["trajectory_errors"]["img"] == pytest.approx(e, rel=1e-6, abs=1e-12)


def test_forwards_problem_names_calls_claimed_but_never_run():
    """The audit of measured runs (Checks.image_work) and the denoising check share this rule."""
    from pytest_vibeserve.checkers.denoising import claimed_calls, forwards_problem

    payloads = {"a": {"model_calls": 19}, "b": {"model_calls": 19}, "c": {"type": "image"}}
    assert claimed_calls(payloads) == 38
    assert claimed_calls(list(payloads.values())) == 38
    assert forwards_problem(38, 38) is None
    assert forwards_problem(38, 40) is None  # warm-ups or retries may count more
    assert forwards_problem(38, None) is None  # an engine that counts nothing: nothing to audit
    problem = forwards_problem(38, 19)
    assert problem is not None
    assert "counted 19 model forwards" in problem and "claim 38 model calls" in problem
    assert "cached output" in problem

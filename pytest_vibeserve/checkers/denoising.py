"""Integrity of text-to-image denoising: the schedule, the guidance and the work were all there.

The image gate (PSNR/SSIM, ``images.py``) alone may let an engine cut steps (on a stand-in at
Show-o2's size 17 instead of 19 model calls passed it; on this repo's t2i models two fewer calls
fall to 25-28 dB, but a weaker guidance or a longer schedule would hide it). So every image's
answer also reports, and is checked on:

- ``model_calls``: velocity evaluations run for it; a schedule of N points needs N - 1;
- ``uncond_calls``: how many evaluated the unconditional branch afresh; with guidance != 1 at
  least one must (reusing it on some steps, CFG stride, is an approximation the gates judge);
- the trajectory: the latent's channel means after every Euler step, against the reference's
  (scaled by the reference latent's RMS at that step), so a changed schedule shows at the step
  where it changed;
- the probe: the whole latent after ``probe_step`` (drawn per request), relative L2 error;
- the run's forward counter: the engine must count at least the model calls its images claim,
  so an image answered from a cache (claiming calls it never ran) fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .result import CheckResult, Failure, build_result

NAME = "denoising"


def _failure(rid: str | None, reason: str, message: str, **data: Any) -> Failure:
    return Failure(rid, None, message, {"reason": reason, **data})


def check_denoising(
    requests: Sequence[Any],
    expected: Mapping[str, Any],
    payloads: Mapping[str, Mapping[str, Any]],
    *,
    forward_calls: int | None = None,
    max_probe_error: float = 0.05,
    max_trajectory_error: float = 0.05,
) -> CheckResult:
    """``requests``: the ``ImageRequest``s; ``expected``: request id -> ``ReferenceImage``;
    ``payloads``: request id -> the engine's image payload; ``forward_calls``: the engine's
    forward counter's growth over the run (None: not reported)."""
    from pytest_vibeserve.contract import decode_probe

    limits = (("max_probe_error", max_probe_error), ("max_trajectory_error", max_trajectory_error))
    for name, value in limits:
        if not value > 0 or math.isinf(value):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    failures: list[Failure] = []
    probe_errors: dict[str, float] = {}
    trajectory_errors: dict[str, float] = {}
    claimed = 0
    for request in requests:
        rid = request.request_id
        payload = payloads.get(rid)
        if payload is None:
            failures.append(_failure(rid, "missing_request", f"image {rid}: no answer"))
            continue
        reference = expected[rid]
        need = request.steps - 1
        calls, uncond = payload.get("model_calls"), payload.get("uncond_calls")
        claimed += calls if isinstance(calls, int) else 0
        if calls != need:
            hint = " (an image answered without denoising: a cached output?)" if calls == 0 else ""
            failures.append(
                _failure(
                    rid,
                    "model_calls",
                    f"image {rid}: ran {calls} model calls; a schedule of {request.steps} points "
                    f"needs {need}, one per Euler step: steps may not be cut{hint}",
                    model_calls=calls,
                    expected_calls=need,
                )
            )
            continue
        if not isinstance(uncond, int) or not 0 <= uncond <= need:
            failures.append(
                _failure(
                    rid,
                    "uncond_calls",
                    f"image {rid}: uncond_calls={uncond!r}, must be an int in 0..{need}",
                    uncond_calls=uncond,
                )
            )
            continue
        if request.guidance != 1.0 and uncond == 0:
            failures.append(
                _failure(
                    rid,
                    "guidance_dropped",
                    f"image {rid}: guidance dropped: none of the {need} model calls evaluated "
                    f"the unconditional branch, but guidance {request.guidance:g} needs "
                    "v = v_u + g (v_c - v_u)",
                    uncond_calls=uncond,
                )
            )
            continue
        trajectory = payload.get("trajectory") or []
        if len(trajectory) != need:
            failures.append(
                _failure(
                    rid,
                    "trajectory_length",
                    f"image {rid}: the trajectory has {len(trajectory)} steps; report the "
                    f"latent's channel means after each of the {need} Euler steps",
                    steps=len(trajectory),
                )
            )
            continue
        worst_step, worst = _trajectory_error(trajectory, reference)
        trajectory_errors[rid] = worst
        if not worst <= max_trajectory_error:
            failures.append(
                _failure(
                    rid,
                    "trajectory",
                    f"image {rid}: the latent after Euler step {worst_step} is off the "
                    f"reference's by {worst:.4f} of its RMS (> {max_trajectory_error:g}): the "
                    "schedule, the guidance or the numerics changed there",
                    step=worst_step,
                    error=worst,
                )
            )
            continue
        probe = decode_probe(payload)
        want = np.asarray(reference.probe_latent, dtype=np.float64)
        if probe.shape != want.shape:
            failures.append(
                _failure(
                    rid,
                    "probe_shape",
                    f"image {rid}: probe latent of shape {probe.shape}, expected {want.shape}",
                )
            )
            continue
        error = float(np.linalg.norm(probe - want) / max(np.linalg.norm(want), 1e-12))
        probe_errors[rid] = error
        if not error <= max_probe_error:
            failures.append(
                _failure(
                    rid,
                    "probe",
                    f"image {rid}: the latent after Euler step {request.probe_step} differs from "
                    f"the reference's by {error:.4f} relative L2 (> {max_probe_error:g}): the "
                    "schedule, the guidance or the numerics changed",
                    step=request.probe_step,
                    error=error,
                )
            )
    if (problem := forwards_problem(claimed, forward_calls)) is not None:
        failures.append(
            _failure(
                None,
                "forwards_short",
                problem,
                forward_calls=forward_calls,
                claimed_calls=claimed,
            )
        )
    checked = len(requests)
    failed = {f.request_id for f in failures if f.request_id is not None}
    head = f"{checked - len(failed)}/{checked} images denoised on the full schedule with guidance"
    if probe_errors:
        head += f", worst probe error {max(probe_errors.values()):.2e}"
    stats = {
        "images": checked,
        "probe_errors": probe_errors,
        "trajectory_errors": trajectory_errors,
        "max_probe_error": max_probe_error,
        "max_trajectory_error": max_trajectory_error,
        "forward_calls": forward_calls,
        "claimed_calls": claimed,
    }
    return build_result(NAME, head, failures, stats)


def claimed_calls(payloads: Mapping[str, Mapping[str, Any]] | Any) -> int:
    """The model calls a run's image payloads claim, all together."""
    values = payloads.values() if isinstance(payloads, Mapping) else payloads
    return sum(int(p.get("model_calls") or 0) for p in values if isinstance(p, Mapping))


def forwards_problem(claimed: int, forward_calls: int | None) -> str | None:
    """Why an engine that counted ``forward_calls`` model forwards in a run (None: it counts
    none) cannot have made images claiming ``claimed`` model calls, or None."""
    if forward_calls is None or forward_calls >= claimed:
        return None
    return (
        f"the engine counted {forward_calls} model forwards in this run, but its images claim "
        f"{claimed} model calls: some image was answered without running the model (a cached "
        "output?)"
    )


def _trajectory_error(trajectory: list[list[float]], reference: Any) -> tuple[int, float]:
    """The step whose channel means are furthest from the reference's, and that distance: the
    RMS over channels of the difference, over the reference latent's RMS at that step."""
    worst_step, worst = 0, 0.0
    for step, (got, want, rms) in enumerate(
        zip(trajectory, reference.trajectory, reference.trajectory_rms, strict=True)
    ):
        got_arr = np.asarray(got, dtype=np.float64)
        want_arr = np.asarray(want, dtype=np.float64)
        if got_arr.shape != want_arr.shape:
            return step, math.inf
        error = float(np.sqrt(np.mean((got_arr - want_arr) ** 2)) / max(rms, 1e-12))
        if math.isnan(error):
            return step, math.inf
        if error > worst:
            worst_step, worst = step, error
    return worst_step, worst

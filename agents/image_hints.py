"""The Evaluator's hints for text-to-image engines (scenario unified_multimodal).

They read what the engine reports of its work (token rows through the LM body, logit rows,
input-path rows, per-row modulation loops and masked padding keys per model call; VAE time taps
per image; weight bits; whether its step is compiled),
its own stage timings, and the FLOPs per stage of the reference data flow and of the exact
minimal algorithm (the report's roofline). Approximate techniques (bfloat16, a CFG stride) are
flagged so: the planner takes every exact one first, and the rounds show the exact fp32 gain
apart from the approximate one.
"""

from __future__ import annotations

import math
from typing import Any

from agents.evaluator import Hint, _number

# what one denoising call's FLOPs go to, by stage, when the report lacks a roofline
DENOISE_STAGES = ("input_path", "body", "logits", "head")
ROW_LOOP_GAIN = 1.03  # measured: per-row adaLN loops cost a few percent of a step at cpu scale
GUIDANCE_GAIN = 1.2  # a CFG stride of 2 skips every other unconditional row
PER_ROW_GAIN = 1.05  # measured: ~7% of an image at the cpu scale (masked SDPA ~1.9 ms a call,
# per-row unmasked ~1.3 ms for both rows)
COMPILE_GAIN = 1.12  # measured: 14% over the eager exact engine at the cpu scale (same process)
MAX_PRECISION_GAIN = 2.0


def image_hints(report: dict[str, Any], candidate: dict[str, Any]) -> list[Hint]:
    stats = report["performance"].get("workload_stats", {})
    image = (report.get("roofline") or {}).get("image") or {}
    reference = image.get("reference_gflop_by_stage") or {}
    denoise_gflop = sum(_number(reference.get(s)) for s in DENOISE_STAGES)

    def share(stage: str) -> float:
        value = _number(reference.get(stage)) / denoise_gflop if denoise_gflop > 0 else math.nan
        return 0.0 if math.isnan(value) else value

    stages = candidate.get("image_stages_ms") or {}
    total_ms = sum(_number(v) for v in stages.values())
    denoise = _number(stages.get("denoise")) / total_ms if total_ms > 0 else 0.85
    decode = _number(stages.get("decode")) / total_ms if total_ms > 0 else 0.15
    block = _number(stats.get("block_tokens"))
    seq_len = _number(stats.get("seq_len"))
    tokens = _number(candidate.get("body_tokens_per_call"))
    exact: list[Hint] = []

    def gain(fraction: float) -> float:
        return 1 / (1 - min(max(fraction, 0.0), 0.9))

    layers = share("body") + share("head")
    if tokens > 2.2 * block:
        saved = 1 - 2 * block / tokens
        exact.append(
            Hint(
                "text-prefix-recompute",
                gain(denoise * layers * saved),
                f"{tokens:.0f} token rows through the body per model call for a block of "
                f"{block:.0f} time + image tokens a row: the text prefix (and whatever follows "
                f"the image) is recomputed at every step; body + flow head are {layers:.0%} of "
                f"a call's FLOPs, denoising {denoise:.0%} of the latency",
            )
        )
    logits = _number(candidate.get("logit_rows_per_call"))
    # the whole padded sequence per row: the tokens after the longest row's image block (the
    # conditional one: [BOS] text [BOI] + block) feed nothing
    used = 2 + _number(stats.get("text_tokens_mean")) + block
    full = tokens >= 2 * seq_len * 0.98
    trailing = max(0.0, 1 - used / seq_len) if full and used == used else 0.0
    if logits > 0 or trailing > 0:
        dead = (share("logits") if logits > 0 else 0.0) + layers * trailing
        exact.append(
            Hint(
                "dead-compute",
                gain(denoise * dead),
                f"{logits:.0f} lm_head logit rows per model call (nothing reads them: "
                f"{share('logits'):.0%} of a call's FLOPs)"
                + (", and every call runs the whole padded sequence" if trailing > 0 else ""),
            )
        )
    rows = _number(candidate.get("input_rows_per_call"))
    if rows > 1.05:
        exact.append(
            Hint(
                "duplicate-input-path",
                gain(denoise * share("input_path") * (1 - 1 / rows)),
                f"{rows:.1f} input-path rows per model call: both guidance rows run SigLIP and "
                f"the patch projection on the same latent ({share('input_path'):.0%} of a "
                "call's FLOPs)",
            )
        )
    taps = _number(candidate.get("vae_taps_per_image"))
    if taps > 1.5:
        exact.append(
            Hint(
                "vae-3d-conv",
                gain(decode * (1 - 1 / taps)),
                f"the VAE runs {taps:.0f} time taps per kernel on a single frame (two see only "
                f"zero padding); decoding is {decode:.0%} of the latency",
            )
        )
    loops = _number(candidate.get("modulation_loops_per_call"))
    if loops > 0:
        exact.append(
            Hint(
                "row-loop-modulation",
                ROW_LOOP_GAIN,
                f"{loops:.0f} per-row adaLN loops per model call (Python, one row at a time)",
            )
        )
    padded = _number(candidate.get("padded_keys_per_call"))
    if padded > 0:
        exact.append(
            Hint(
                "padded-attention",
                PER_ROW_GAIN,
                f"{padded:.0f} masked padding keys attended per model call (the unconditional "
                "row's short prefix padded to the conditional one's): a masked kernel over both "
                "rows is slower than one unmasked call per row",
            )
        )
    if _number(candidate.get("compiled")) == 0 and not exact:
        # the data flow is already the exact minimal one: what is left is kernel overhead
        efficiency = _number((report.get("roofline") or {}).get("candidate_efficiency_pct"))
        exact.append(
            Hint(
                "compile-candidate",
                COMPILE_GAIN,
                "the step runs eager, many small kernels a layer (norms, modulation, residuals, "
                "activations) with nothing left to remove from the data flow"
                + (
                    f"; the engine is at {efficiency:.0f}% of the exact algorithm's ceiling"
                    if efficiency == efficiency and efficiency > 0
                    else ""
                ),
            )
        )
    approximate = []
    limits = report.get("roofline") or {}
    fp32, bf16 = _number(limits.get("matmul_gflops")), _number(limits.get("matmul_bf16_gflops"))
    if _number(candidate.get("weight_bits")) >= 32 and bf16 > 1.2 * fp32:
        approximate.append(
            Hint(
                "fp32-compute",
                min(math.sqrt(bf16 / fp32), MAX_PRECISION_GAIN),
                f"peak matmul is {bf16:.0f} GFLOP/s in bf16 against {fp32:.0f} in fp32",
                approximate=True,
            )
        )
    uncond = _number(candidate.get("uncond_per_call"))
    if not uncond < 0.99:  # every call evaluates it (or the engine does not say)
        approximate.append(
            Hint(
                "guidance-cost",
                GUIDANCE_GAIN,
                "every model call evaluates the unconditional row too",
                approximate=True,
            )
        )
    return exact + approximate

"""The Evaluator's text-to-image hints (agents/image_hints.py) on synthetic reports, their
exact/approximate flag through describe/parse_hint, and the planner's rule that every exact fix
goes before an approximate one (on the real unified_multimodal skills)."""

from __future__ import annotations

import math

import pytest

from agents.evaluator import Hint, derive_hints
from agents.image_hints import (
    COMPILE_GAIN,
    GUIDANCE_GAIN,
    PER_ROW_GAIN,
    ROW_LOOP_GAIN,
    image_hints,
)
from agents.loop import parse_hint
from agents.planner import Planner, PlannerState
from agents.skills import load_library
from pytest_vibeserve.roofline import MachineLimits, roofline_for
from reference_impls.showo2 import RECIPES, model_config
from reference_impls.showo2_flops import minimal_flops, reference_flops

CONFIG = model_config(RECIPES["t2i-cpu"])  # seq_len 392, 256 image tokens, 10 head layers
TEXT, STEPS = 40, 20
CALLS = STEPS - 1
EXACT_KEYWORDS = {
    "text-prefix-recompute",
    "dead-compute",
    "duplicate-input-path",
    "vae-3d-conv",
    "row-loop-modulation",
}
APPROXIMATE_KEYWORDS = {"fp32-compute", "guidance-cost"}


def roofline(fp32: float = 100.0, bf16: float = 300.0) -> dict:
    """The report's roofline section, as ``Roofline.to_dict`` writes it for an image model."""
    limits = MachineLimits("cpu", 2, 10.0, fp32, bf16)
    return roofline_for(
        limits,
        80 << 20,
        minimal_flops=minimal_flops(CONFIG, TEXT, STEPS),
        reference_flops=reference_flops(CONFIG, TEXT, STEPS),
    ).to_dict()


def row(**changes) -> dict:
    """A candidate row as the starter's counters make it: both rows over the whole padded
    sequence, every token's logits, two input-path rows, 3-D VAE taps, per-row adaLN loops."""
    base = {
        "engine": "candidate",
        "image_latency_s_p50": 3.0,
        "image_latency_s_p90": 3.2,
        "image_stages_ms": {"encode": 1.0, "denoise": 2500.0, "decode": 500.0},
        "body_tokens_per_call": 2.0 * CONFIG.seq_len,
        "logit_rows_per_call": 2.0 * CONFIG.seq_len,
        "input_rows_per_call": 2.0,
        "modulation_loops_per_call": 2.0 * (2 * CONFIG.head_layers + 1),
        "vae_taps_per_image": 3.0,
        "weight_bits": 32.0,
    }
    return {**base, **changes}


# the all-exact engine: time + image tokens of both rows per call plus the prefixes once per image
ALL_EXACT = {
    "body_tokens_per_call": 2.0 * (CONFIG.image_tokens + 1) + ((1 + TEXT + 1) + 2) / CALLS,
    "logit_rows_per_call": 0.0,
    "input_rows_per_call": 1.0,
    "modulation_loops_per_call": 0.0,
    "vae_taps_per_image": 1.0,
}


def report(candidate: dict, roof: dict | None = None) -> dict:
    stats = {
        "block_tokens": CONFIG.image_tokens + 1,
        "seq_len": CONFIG.seq_len,
        "images": 4,
        "steps": STEPS,
        "guidance": 5.0,
        "text_tokens_mean": float(TEXT),
        "text_tokens_max": TEXT,
    }
    table = [{**row(), "engine": "baseline"}, candidate]
    return {
        "performance": {"workload_stats": stats, "table": table},
        "roofline": roofline() if roof is None else roof,
    }


def by_keyword(hints: list[Hint]) -> dict[str, Hint]:
    keywords = [h.keyword for h in hints]
    assert len(set(keywords)) == len(keywords), keywords
    return {h.keyword: h for h in hints}


# --------------------------------------------------------------------------------------------------
# image_hints


def test_the_starter_gets_every_exact_hint_and_the_approximate_ones():
    candidate = row()
    hints = by_keyword(image_hints(report(candidate), candidate))
    assert set(hints) == EXACT_KEYWORDS | APPROXIMATE_KEYWORDS
    for keyword in EXACT_KEYWORDS:
        assert not hints[keyword].approximate, keyword
        assert hints[keyword].estimated_gain > 1, keyword
    for keyword in APPROXIMATE_KEYWORDS:
        assert hints[keyword].approximate, keyword
    assert hints["row-loop-modulation"].estimated_gain == ROW_LOOP_GAIN
    assert hints["guidance-cost"].estimated_gain == GUIDANCE_GAIN
    assert hints["fp32-compute"].estimated_gain == pytest.approx(math.sqrt(3.0))
    # the evidence carries the candidate's own numbers
    assert "784 token rows" in hints["text-prefix-recompute"].evidence
    assert "257 time + image tokens" in hints["text-prefix-recompute"].evidence
    assert "784 lm_head logit rows" in hints["dead-compute"].evidence
    assert "2.0 input-path rows" in hints["duplicate-input-path"].evidence
    assert "3 time taps" in hints["vae-3d-conv"].evidence
    assert "42 per-row adaLN loops" in hints["row-loop-modulation"].evidence
    assert "300 GFLOP/s in bf16 against 100 in fp32" in hints["fp32-compute"].evidence


def test_exact_gains_follow_the_reference_flops_and_the_stage_timings():
    """Recomputing the prefix saves 1 - 2 block / tokens of the body + head FLOPs (82% of a call
    at t2i-cpu) for the denoising share of the latency; the VAE's taps save 2/3 of decoding."""
    candidate = row()
    image = report(candidate)["roofline"]["image"]["reference_gflop_by_stage"]
    denoise_gflop = sum(image[s] for s in ("input_path", "body", "logits", "head"))
    layers = (image["body"] + image["head"]) / denoise_gflop
    denoise, decode = 2500.0 / 3001.0, 500.0 / 3001.0
    saved = 1 - 2 * (CONFIG.image_tokens + 1) / (2 * CONFIG.seq_len)
    hints = by_keyword(image_hints(report(candidate), candidate))
    assert hints["text-prefix-recompute"].estimated_gain == pytest.approx(
        1 / (1 - denoise * layers * saved)
    )
    assert hints["vae-3d-conv"].estimated_gain == pytest.approx(1 / (1 - decode * 2 / 3))
    # the logits, and the tokens after the conditional row's image block ([BOS] text [BOI] +
    # block are used of the padded sequence) through the body and head
    trailing = 1 - (2 + TEXT + CONFIG.image_tokens + 1) / CONFIG.seq_len
    assert hints["dead-compute"].estimated_gain == pytest.approx(
        1 / (1 - denoise * (image["logits"] / denoise_gflop + layers * trailing))
    )
    assert hints["duplicate-input-path"].estimated_gain == pytest.approx(
        1 / (1 - denoise * image["input_path"] / denoise_gflop / 2)
    )
    # a slower decode stage makes the VAE's hint worth more
    slow_vae = row(image_stages_ms={"encode": 1.0, "denoise": 1500.0, "decode": 1500.0})
    slow = by_keyword(image_hints(report(slow_vae), slow_vae))
    assert slow["vae-3d-conv"].estimated_gain > hints["vae-3d-conv"].estimated_gain


def test_dead_compute_names_the_trailing_tokens_of_the_full_sequence():
    """The starter runs every call over the whole padded sequence (EOI, EOS, pads after the
    image block, which nothing reads): the dead-compute hint says so, and costs it above the
    logits alone."""
    full = row()
    hints = by_keyword(image_hints(report(full), full))
    assert "every call runs the whole padded sequence" in hints["dead-compute"].evidence
    trimmed = row(body_tokens_per_call=2.0 * (TEXT + 2 + CONFIG.image_tokens + 1))
    trim = by_keyword(image_hints(report(trimmed), trimmed))
    assert hints["dead-compute"].estimated_gain > trim["dead-compute"].estimated_gain


def test_the_all_exact_candidate_gets_only_the_approximate_hints():
    candidate = row(**ALL_EXACT)
    hints = image_hints(report(candidate), candidate)
    assert {h.keyword for h in hints} == APPROXIMATE_KEYWORDS
    assert all(h.approximate for h in hints)


def test_each_exact_technique_silences_its_own_hint():
    fixes = {
        "text-prefix-recompute": {
            "body_tokens_per_call": ALL_EXACT["body_tokens_per_call"],
            "logit_rows_per_call": 0.0,
        },
        "duplicate-input-path": {"input_rows_per_call": 1.0},
        "vae-3d-conv": {"vae_taps_per_image": 1.0},
        "row-loop-modulation": {"modulation_loops_per_call": 0.0},
    }
    for keyword, changes in fixes.items():
        candidate = row(**changes)
        left = {h.keyword for h in image_hints(report(candidate), candidate)}
        assert keyword not in left, keyword
        assert left >= APPROXIMATE_KEYWORDS
    # logits dropped but the whole padded sequence still run: no logits to report
    candidate = row(logit_rows_per_call=0.0)
    hints = by_keyword(image_hints(report(candidate), candidate))
    assert "text-prefix-recompute" in hints


def test_a_bf16_candidate_gets_no_fp32_compute_hint():
    candidate = row(**ALL_EXACT, weight_bits=16.0)
    hints = image_hints(report(candidate), candidate)
    assert [h.keyword for h in hints] == ["guidance-cost"]
    starter_bf16 = row(weight_bits=16.0)
    keywords = {h.keyword for h in image_hints(report(starter_bf16), starter_bf16)}
    assert keywords == EXACT_KEYWORDS | {"guidance-cost"}


@pytest.mark.parametrize(
    ("roof", "expected"),
    [
        ({"fp32": 100.0, "bf16": 110.0}, False),  # under 1.2x: bf16 is not worth its error
        ({"fp32": 100.0, "bf16": 125.0}, True),
        ({"fp32": 100.0, "bf16": 1000.0}, True),  # capped at 2x
        ({"fp32": 100.0, "bf16": float("nan")}, False),  # bf16 matmul not measured
    ],
)
def test_fp32_compute_needs_a_faster_bf16_matmul(roof, expected):
    candidate = row(**ALL_EXACT)
    hints = by_keyword(image_hints(report(candidate, roofline(**roof)), candidate))
    assert ("fp32-compute" in hints) == expected
    if expected:
        gain = hints["fp32-compute"].estimated_gain
        assert gain == pytest.approx(min(math.sqrt(roof["bf16"] / roof["fp32"]), 2.0))


def test_a_report_without_a_roofline_still_gets_the_counter_hints():
    """No FLOPs by stage (no roofline): the shares are 0, so the FLOP-weighted gains are 1, but
    the counters still name every exact technique; no fp32-compute without a measured peak."""
    candidate = row()
    bare = report(candidate)
    bare["roofline"] = None
    hints = by_keyword(image_hints(bare, candidate))
    assert set(hints) == EXACT_KEYWORDS | {"guidance-cost"}
    assert hints["text-prefix-recompute"].estimated_gain == pytest.approx(1.0)
    assert hints["vae-3d-conv"].estimated_gain > 1  # from the stage timings alone


def test_padded_prefix_attention_gets_its_exact_hint():
    """An engine that caches the prefixes but batches both rows' attention over the padded
    shorter prefix (its counter: masked keys per call) is told so; per-row attention has none."""
    padded = 14.0 * (TEXT + 2 - 2)  # the unconditional row's padding, every body + head layer
    candidate = row(**ALL_EXACT, padded_keys_per_call=padded, compiled=0.0)
    hints = by_keyword(image_hints(report(candidate), candidate))
    assert set(hints) == {"padded-attention"} | APPROXIMATE_KEYWORDS  # no compile hint yet
    assert not hints["padded-attention"].approximate
    assert hints["padded-attention"].estimated_gain == PER_ROW_GAIN
    assert "560 masked padding keys" in hints["padded-attention"].evidence
    per_row = row(**ALL_EXACT, padded_keys_per_call=0.0)
    assert "padded-attention" not in by_keyword(image_hints(report(per_row), per_row))


def test_compile_is_hinted_once_the_data_flow_is_minimal_and_the_step_is_eager():
    eager = row(**ALL_EXACT, padded_keys_per_call=0.0, compiled=0.0)
    data = report(eager)
    data["roofline"]["candidate_efficiency_pct"] = 51.5
    hints = by_keyword(image_hints(data, eager))
    assert set(hints) == {"compile-candidate"} | APPROXIMATE_KEYWORDS
    assert not hints["compile-candidate"].approximate
    assert hints["compile-candidate"].estimated_gain == COMPILE_GAIN
    assert "52% of the exact algorithm's ceiling" in hints["compile-candidate"].evidence
    # compiled already, or compile state not reported: no hint
    for compiled in (1.0, None):
        candidate = row(**ALL_EXACT, compiled=compiled)
        assert "compile-candidate" not in by_keyword(image_hints(report(candidate), candidate))
    # an eager starter has bigger exact fixes first: compile waits for them
    starter = row(compiled=0.0)
    keywords = set(by_keyword(image_hints(report(starter), starter)))
    assert keywords == EXACT_KEYWORDS | APPROXIMATE_KEYWORDS


# --------------------------------------------------------------------------------------------------
# describe / parse_hint


@pytest.mark.parametrize("approximate", [False, True])
def test_describe_and_parse_hint_keep_the_approximate_flag(approximate):
    hint = Hint("fp32-compute", 1.73, "peak matmul is 300 GFLOP/s in bf16 (x: 2)", approximate)
    text = hint.describe()
    assert (", approximate)" in text) == approximate
    back = parse_hint(text)
    assert back == Hint("fp32-compute", 1.7, hint.evidence, approximate)


def test_every_image_hint_round_trips_through_its_text():
    candidate = row()
    for hint in image_hints(report(candidate), candidate):
        back = parse_hint(hint.describe())
        assert (back.keyword, back.evidence, back.approximate) == (
            hint.keyword,
            hint.evidence,
            hint.approximate,
        )
        assert back.estimated_gain == pytest.approx(hint.estimated_gain, abs=0.05)


# --------------------------------------------------------------------------------------------------
# The planner on the real skills


@pytest.fixture(scope="module")
def library():
    return load_library(scenario="unified_multimodal")


def plan(library, hints, statuses=None, tried=frozenset()):
    state = PlannerState(
        round=1,
        statuses=statuses or {},
        attempts={},
        tried=tried,
        hints=tuple(hints),
        accepted_ratios=(1.0,),
    )
    return Planner(library).plan(state)


def test_the_library_holds_a_skill_for_every_image_hint(library):
    triggers = {t for skill in library.values() for t in skill.triggers}
    assert EXACT_KEYWORDS | APPROXIMATE_KEYWORDS <= triggers
    assert "fp32-compute" in library["bf16-weights"].triggers
    assert "guidance-cost" in library["cfg-stride"].triggers
    assert "padded-attention" in library["text-prefix-kv-reuse"].triggers
    assert "compile-candidate" in library["torch-compile"].triggers


def test_an_exact_skill_goes_before_bf16_even_at_a_smaller_gain(library):
    hints = [
        Hint("vae-3d-conv", 1.05, "3 taps"),
        Hint("fp32-compute", 1.9, "bf16 3x", approximate=True),
        Hint("guidance-cost", 1.2, "every call", approximate=True),
    ]
    assert plan(library, hints).task.skill == "single-frame-vae-2d"
    # once that one is done (half priority, and its one change tried), bf16 comes next
    done = plan(
        library,
        hints,
        statuses={"single-frame-vae-2d": "done"},
        tried=frozenset({("single-frame-vae-2d", ())}),
    )
    assert done.task.skill == "bf16-weights"
    assert "approximate" in done.task.why


def test_the_starter_report_plans_exact_skills_first_then_bf16_then_cfg_stride(library):
    candidate = row()
    hints = derive_hints(report(candidate))
    gains = {h.keyword: h.estimated_gain for h in hints}
    # the approximate hint's gain is larger than every exact one's here
    assert gains["fp32-compute"] > max(gains[k] for k in EXACT_KEYWORDS)
    first = plan(library, hints)
    assert first.task.skill == "text-prefix-kv-reuse"  # the biggest exact gain
    exact_skills = {
        "text-prefix-kv-reuse",
        "dead-compute-removal",
        "cond-uncond-batching",
        "single-frame-vae-2d",
        "vectorised-modulation",
    }
    statuses = {name: "done" for name in exact_skills}
    tried = frozenset((name, ()) for name in exact_skills)
    # the exact data flow is minimal but eager: compile, an exact step, before bf16
    candidate = row(**ALL_EXACT, compiled=0.0)
    eager = derive_hints(report(candidate))
    assert plan(library, eager, statuses, tried).task.skill == "torch-compile"
    statuses["torch-compile"] = "done"
    tried |= {("torch-compile", (("mode", "default"),))}
    candidate = row(**ALL_EXACT, compiled=1.0)
    approximate_only = derive_hints(report(candidate))
    assert all(h.approximate for h in approximate_only)
    assert plan(library, approximate_only, statuses, tried).task.skill == "bf16-weights"
    statuses["bf16-weights"] = "done"
    tried |= {("bf16-weights", ())}
    candidate = row(**ALL_EXACT, weight_bits=16.0, compiled=1.0)
    after_bf16 = plan(library, derive_hints(report(candidate)), statuses, tried)
    assert (after_bf16.task.skill, after_bf16.task.params) == ("cfg-stride", {"stride": 2})


# --------------------------------------------------------------------------------------------------
# derive_hints routes image reports


def test_derive_hints_routes_an_image_report_to_image_hints():
    candidate = row()
    data = report(candidate)
    derived = derive_hints(data)
    direct = image_hints(data, candidate)
    assert sorted(derived, key=lambda h: h.keyword) == sorted(direct, key=lambda h: h.keyword)
    gains = [h.estimated_gain for h in derived]
    assert gains == sorted(gains, reverse=True)
    # a profile (text engines' op shares) adds nothing to an image report's hints
    assert derive_hints(data, {"ms_per_forward": 10.0, "top_ops": []}) == derived


def test_a_row_without_image_latency_is_not_an_image_report():
    """Image latency None (a JSON report's NaN): the text engines' rules run, not image_hints."""
    candidate = row(image_latency_s_p50=None)
    keywords = {h.keyword for h in derive_hints(report(candidate))}
    assert not keywords & (EXACT_KEYWORDS | APPROXIMATE_KEYWORDS)

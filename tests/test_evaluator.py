"""The Evaluator's bottleneck hints, from synthetic reports with known numbers."""

from __future__ import annotations

from agents.evaluator import derive_hints


def report(tokens_per_forward: float, roofline_pct: float, ttft: float, e2e: float) -> dict:
    row = {
        "engine": "candidate",
        "tokens_per_forward": tokens_per_forward,
        "roofline_pct": roofline_pct,
        "ttft_p50_ms": ttft,
        "e2e_p50_ms": e2e,
        "tpot_p50_ms": 70.0,
    }
    return {
        "performance": {"table": [row], "workload_stats": {"accepted_per_16_median": 10.4}},
        "roofline": {"roofline_tok_per_s": 57.0},
    }


def test_unused_prediction_is_the_top_hint_with_its_numbers():
    hints = derive_hints(report(1.0, 25.0, 400.0, 9000.0))
    assert hints[0].keyword == "prediction-unused"
    assert "1.00 tokens per forward" in hints[0].evidence and "10.4" in hints[0].evidence
    assert {h.keyword for h in hints} >= {"memory-bandwidth", "decode-bound"}


def test_low_acceptance_when_drafts_are_used_poorly():
    keywords = [h.keyword for h in derive_hints(report(2.0, 80.0, 100.0, 9000.0))]
    assert keywords[0] == "low-acceptance"
    assert "prediction-unused" not in keywords


def test_prefill_bound_when_ttft_dominates():
    keywords = [h.keyword for h in derive_hints(report(9.0, 600.0, 5000.0, 9000.0))]
    assert keywords == ["prefill-bound"]


def test_a_well_used_prediction_gives_no_acceptance_hint():
    keywords = [h.keyword for h in derive_hints(report(9.0, 600.0, 100.0, 9000.0))]
    assert keywords == []


def test_bandwidth_is_judged_per_forward_when_a_forward_emits_several_tokens():
    """3 tokens per forward at 100% of the batch-1 roofline: each forward reads the weights at
    a third of the bandwidth, which lower precision or a better kernel could still cut."""
    hints = {h.keyword: h for h in derive_hints(report(3.0, 100.0, 100.0, 9000.0))}
    assert "memory-bandwidth" in hints
    assert "33% of the memory bandwidth" in hints["memory-bandwidth"].evidence
    assert "3.00 tokens per forward" in hints["memory-bandwidth"].evidence
    assert hints["memory-bandwidth"].estimated_gain > 1.5
    # at one token per forward the figure is the roofline's own
    one = {h.keyword: h for h in derive_hints(report(1.0, 50.0, 100.0, 9000.0))}
    assert one["memory-bandwidth"].evidence.startswith("50% of the batch-1 roofline")
    assert "memory-bandwidth" not in {h.keyword for h in derive_hints(report(3.0, 200, 1, 9e3))}

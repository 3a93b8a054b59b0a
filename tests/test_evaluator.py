"""The Evaluator's bottleneck hints, from synthetic reports with known numbers."""

from __future__ import annotations

import math

import pytest

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


# --------------------------------------------------------------------------------------------------
# Concurrent workloads sharing prefixes (scenario hybrid_ssm)


def shared_report(
    *, tok_s: float, per_forward: float, tpot_ms: float, hit: float, peak=(1000.0, 1000.0)
) -> dict:
    """16 requests in flight at once, 97% of each prompt shared, 1,024 output tokens."""
    row = {
        "engine": "candidate",
        "output_tok_per_s": tok_s,
        "tokens_per_forward": per_forward,
        "tpot_p50_ms": tpot_ms,
        "roofline_pct": 10.0,
        "ttft_p50_ms": 50_000.0,
        "e2e_p50_ms": 55_000.0,
        "prefix_hit_fraction": hit,
        "peak_rss_mib": peak[0],
    }
    baseline = {**row, "engine": "baseline", "peak_rss_mib": peak[1]}
    stats = {
        "requests": 16,
        "concurrent_requests": 16,
        "output_tokens_total": 1024,
        "shared_prompt_fraction": 0.97,
    }
    return {
        "performance": {"table": [row, baseline], "workload_stats": stats},
        "roofline": {
            "roofline_tok_per_s": 71.0,
            "read_bandwidth_gbs": 34.4,
            "matmul_gflops": 143.0,
            "model_bytes": 482_000_000,
        },
    }


def by_keyword(hints):
    return {hint.keyword: hint for hint in hints}


def test_a_serial_engine_recomputing_a_shared_prefix_gets_cache_and_batching_hints():
    # the starter at the cpu scale: 9 tok/s, one row per forward, 56 ms per token, no hits
    hints = by_keyword(
        derive_hints(shared_report(tok_s=9.0, per_forward=1.0, tpot_ms=56.0, hit=math.nan))
    )
    assert {"prefix-recompute", "serial-decode", "decode-overhead"} <= hints.keys()
    assert "prefill-bound" not in hints  # queued requests' TTFT is waiting, not prefill
    # decode: (1024 - 16) x 56 ms of the 114 s run = ~50%; the prefix is ~91% reusable
    assert hints["prefix-recompute"].estimated_gain == pytest.approx(
        1 / (1 - 0.909 * 0.505), rel=0.02
    )
    assert "not reported" in hints["prefix-recompute"].evidence
    assert hints["serial-decode"].estimated_gain == pytest.approx(1 / (0.495 + 0.505 / 4), rel=0.02)


def test_hits_reported_on_the_shared_prefix_silence_the_cache_hint():
    report = shared_report(tok_s=60.0, per_forward=15.0, tpot_ms=100.0, hit=0.9)
    hints = by_keyword(derive_hints(report))
    assert "prefix-recompute" not in hints and "serial-decode" not in hints


def test_a_batched_decode_step_far_above_its_roofline_is_overhead():
    # 15 rows per step at 250 ms: the roofline is max(14 ms of weight reads, 25 ms of FLOPs)
    hints = by_keyword(
        derive_hints(shared_report(tok_s=31.0, per_forward=15.0, tpot_ms=250.0, hit=0.9))
    )
    assert "decode-overhead" in hints
    assert "25 ms" in hints["decode-overhead"].evidence
    # at 40 ms it is within 2x of it: no hint
    hints = by_keyword(
        derive_hints(shared_report(tok_s=90.0, per_forward=15.0, tpot_ms=40.0, hit=0.9))
    )
    assert "decode-overhead" not in hints


def test_peak_memory_well_above_the_engine_beside_it_is_a_hint():
    report = shared_report(
        tok_s=60.0, per_forward=15.0, tpot_ms=100.0, hit=0.9, peak=(2000.0, 1400.0)
    )
    hint = by_keyword(derive_hints(report))["peak-memory"]
    assert "2000 MiB against 1400 MiB" in hint.evidence
    assert hint.estimated_gain < 1.05  # ranks after every speed hint
    report = shared_report(
        tok_s=60.0, per_forward=15.0, tpot_ms=100.0, hit=0.9, peak=(1500.0, 1400.0)
    )
    assert "peak-memory" not in by_keyword(derive_hints(report))


def grammar_report(forced: float, per_forward: float, mask_ms: float, tpot: float) -> dict:
    row = {
        "engine": "candidate",
        "tokens_per_forward": per_forward,
        "roofline_pct": 80.0,
        "ttft_p50_ms": 100.0,
        "e2e_p50_ms": 4000.0,
        "tpot_p50_ms": tpot,
        "forced_fraction": forced,
        "mask_ms_per_token": mask_ms,
    }
    return {
        "performance": {"table": [row], "workload_stats": {}},
        "roofline": {"roofline_tok_per_s": 57.0},
    }


def test_forced_tokens_each_costing_a_forward_route_to_fast_forward():
    hints = derive_hints(grammar_report(0.6, 1.0, 0.05, 60.0))
    assert hints[0].keyword == "grammar-forced"
    assert hints[0].estimated_gain == pytest.approx(2.5)
    assert "60% of output tokens are forced" in hints[0].evidence
    assert "grammar-overhead" not in {h.keyword for h in hints}  # 0.05 of 60 ms is < 5%


def test_fast_forwarding_engines_get_no_forced_hint_and_slow_masks_do():
    keywords = {h.keyword for h in derive_hints(grammar_report(0.6, 2.8, 12.0, 60.0))}
    assert "grammar-forced" not in keywords
    assert "grammar-overhead" in keywords  # 12 ms of 60
    assert not {h.keyword for h in derive_hints(grammar_report(math.nan, 1.0, math.nan, 60.0))} & {
        "grammar-forced",
        "grammar-overhead",
    }


def test_an_echoing_workload_decoded_without_drafts_routes_to_prompt_lookup():
    report = grammar_report(0.28, 1.38, 0.2, 40.0)
    report["performance"]["workload_stats"]["lookup_tokens_per_forward"] = 3.76
    hints = derive_hints(report)
    echo = next(h for h in hints if h.keyword == "prompt-echo")
    assert echo.estimated_gain == pytest.approx(math.sqrt(3.76 / 1.38))
    assert "1.38 tokens per forward" in echo.evidence and "~3.8" in echo.evidence


def test_drafting_near_the_simulated_lookup_or_a_workload_without_it_gives_no_echo_hint():
    drafting = grammar_report(0.28, 3.6, 0.2, 40.0)
    drafting["performance"]["workload_stats"]["lookup_tokens_per_forward"] = 3.76
    no_stat = grammar_report(0.28, 1.0, 0.2, 40.0)
    no_echo = grammar_report(0.28, 1.0, 0.2, 40.0)
    no_echo["performance"]["workload_stats"]["lookup_tokens_per_forward"] = 1.0
    for report in (drafting, no_stat, no_echo):
        assert "prompt-echo" not in {h.keyword for h in derive_hints(report)}


def audio_report(*, rtf: float, rows: float, encoder: float, cross: float, p99: float = 300.0):
    row = {
        "engine": "candidate",
        "chunk_latency_ms_p50": 200.0,
        "chunk_latency_ms_p99": p99,
        "real_time_factor": rtf,
        "decode_rows_per_step": rows,
        "encoder_frames_per_audio_frame": encoder,
        "cross_kv_frames_per_audio_frame": cross,
        # text figures an audio run also has: they must not raise text hints
        "tokens_per_forward": 0.5,
        "roofline_pct": 3.0,
        "ttft_p50_ms": math.nan,
        "e2e_p50_ms": 9000.0,
    }
    return {
        "performance": {"table": [row], "workload_stats": {"streams": 8}},
        "roofline": {"roofline_tok_per_s": 57.0},
    }


def test_audio_hints_read_the_engine_counters_not_the_text_figures():
    hints = derive_hints(audio_report(rtf=3.0, rows=1.0, encoder=5.5, cross=5.5))
    keywords = [h.keyword for h in hints]
    # behind real time with one row per forward: batching first, then a leaner decoder step
    # (decoding is always most of the work), then the recomputations
    assert keywords == ["serial-decode", "decode-bound", "encoder-recompute", "cross-kv-recompute"]
    assert "8 streams, 1.00 token rows per decoder forward" in hints[0].evidence
    assert "behind real time (real-time factor 3.00)" in hints[0].evidence
    assert hints[0].estimated_gain == pytest.approx(2.0)
    assert "5.5 frames per 20 ms frame" in hints[2].evidence


def test_audio_hints_vanish_once_fixed_and_batching_waits_for_a_queue():
    fixed = derive_hints(audio_report(rtf=3.0, rows=4.0, encoder=1.0, cross=1.1))
    assert [h.keyword for h in fixed] == ["decode-bound"]
    keeping_pace = derive_hints(audio_report(rtf=1.02, rows=1.0, encoder=1.0, cross=1.0))
    assert [h.keyword for h in keeping_pace] == ["decode-bound", "serial-decode"]
    assert keeping_pace[1].estimated_gain < 1.1
    noisy = derive_hints(audio_report(rtf=1.02, rows=4.0, encoder=1.0, cross=1.0, p99=900.0))
    assert [h.keyword for h in noisy] == ["decode-bound", "thread-contention"]

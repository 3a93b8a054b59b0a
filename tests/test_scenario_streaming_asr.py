"""Scenario streaming_asr end to end at the tiny scale: the starter passes and is measured, every
partial and final transcript is checked, and wrong engines are rejected with their reason.

Each test runs the scenario's own test modules in a pytest subprocess (pytester), the way a user
or the synthesis loop's Judge runs them, and reads the JSON report the loop would read.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO = HERE.parent / "scenarios" / "streaming_asr"
ENGINES = HERE / "engines"


def run_scenario(pytester, cache, *args, engine=None):
    argv = [str(SCENARIO), "--vibeserve-scale", "tiny", "--vibeserve-cache", str(cache)]
    argv += ["--vibeserve-report", "report.json", "-p", "no:cacheprovider"]
    if engine is not None:
        argv += ["--vibeserve-engine", str(engine)]
    result = pytester.runpytest_subprocess(*argv, *args, timeout=600)
    report_path = pytester.path / "report.json"
    return result, json.loads(report_path.read_text()) if report_path.exists() else None


def failures(report):
    return [f for c in report["correctness"]["checks"] if not c["passed"] for f in c["failures"]]


def test_starter_passes_every_check_and_is_measured(pytester, vibeserve_cache):
    result, report = run_scenario(pytester, vibeserve_cache)
    result.assert_outcomes(passed=4)
    assert report["scenario"] == "streaming_asr"
    assert report["correctness"]["passed"] is True
    checks = {c["name"] for c in report["correctness"]["checks"]}
    assert checks == {"transcripts", "integrity"}
    performance = report["performance"]
    assert performance["metric"] == "chunk_latency_ms_p50"
    assert performance["higher_is_better"] is False
    assert performance["candidate"] > 0 and performance["baseline"] > 0
    stats = performance["workload_stats"]
    assert (stats["streams"], stats["chunks_per_stream"], stats["pace"]) == (3, 3, 1.0)
    run = next(row for row in performance["table"] if row["engine"] == "candidate")
    # real time: 3 streams x 3 chunks of 2 s, each transcript after its chunk
    assert run["audio_s"] == 18.0
    assert run["chunk_latency_ms_p90"] >= run["chunk_latency_ms_p50"] > 0
    assert run["real_time_factor"] >= 1.0
    result.stdout.fnmatch_lines(["*chunk latency: candidate p50 * ms*"])


def test_an_exact_incremental_batched_engine_passes(pytester, vibeserve_cache):
    """The positive control: incremental encoder, cross-attention K/V appended, batched decode."""
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine=ENGINES / "asr_all_features"
    )
    result.assert_outcomes(passed=3)
    counters = next(c for c in report["correctness"]["checks"] if c["name"] == "integrity")
    counters = counters["stats"]["counters"]
    # each 20 ms frame through the encoder once, its cross-attention keys/values computed about
    # once (the starter redoes both for all the audio so far: 1 + 2 + 3 chunks' worth a stream)
    # the counters after the main run: its warm-up stream (2 chunks) and 3 streams of 3 chunks
    frames = (2 + 3 * 3) * 100  # 100 frames a 2 s chunk
    assert counters["encoder_frames"] == frames
    assert frames <= counters["cross_kv_frames"] < 1.5 * frames


def test_stale_partials_are_rejected(pytester, vibeserve_cache):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine=ENGINES / "asr_stale_partial"
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*chunk 1 (partial): stale, the same * tokens as its chunk 0*"])
    wrong = failures(report)
    assert wrong and {f["data"]["reason"] for f in wrong} == {"stale"}
    assert {f["position"] for f in wrong} == {1}  # the odd partials; finals are transcribed


def test_skipped_lookahead_recompute_is_rejected(pytester, vibeserve_cache):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine=ENGINES / "asr_no_lookahead"
    )
    result.assert_outcomes(passed=1, failed=2)
    wrong = failures(report)
    # the first chunk of a stream has no earlier frames to carry: only later chunks go wrong
    assert wrong and all(f["position"] >= 1 for f in wrong)
    assert {f["data"]["reason"] for f in wrong} == {"mismatch"}
    result.stdout.fnmatch_lines(["*stream * chunk * position * expected * got *"])


def test_a_dropped_attention_mask_is_rejected(pytester, vibeserve_cache):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine=ENGINES / "asr_no_mask"
    )
    result.assert_outcomes(passed=1, failed=2)
    wrong = failures(report)
    # without the mask the encoder is bidirectional: wrong from the very first chunk
    assert any(f["position"] == 0 for f in wrong)
    assert sum(c["stats"].get("equal_chunks", 0) for c in report["correctness"]["checks"]) == 0

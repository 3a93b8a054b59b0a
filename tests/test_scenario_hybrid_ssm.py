"""Scenario hybrid_ssm end to end at the tiny scale: the starter passes, wrong caches are caught.

Each test runs the scenario's own test modules in a pytest subprocess (pytester), the way a user
or the synthesis loop's Judge runs them, and reads the JSON report the loop would read.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO = HERE.parent / "scenarios" / "hybrid_ssm"
WRONG_ENGINES = HERE / "engines"


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
    result.assert_outcomes(passed=5)
    assert report["scenario"] == "hybrid_ssm"
    assert report["correctness"]["passed"] is True
    performance = report["performance"]
    assert performance["metric"] == "output_tok_per_s"
    assert performance["candidate"] > 0 and performance["baseline"] > 0
    stats = performance["workload_stats"]
    assert (stats["requests"], stats["prefix_tokens"], stats["tail_tokens"]) == (6, 96, 8)


def test_cache_keyed_without_the_last_prefix_token_is_caught(pytester, vibeserve_cache):
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine=WRONG_ENGINES / "loose_prefix_key"
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_prefix_twin_but_for_its_last_token*", "*request nm-twin position * expected*"]
    )
    assert {f["request_id"] for f in failures(report)} == {"nm-twin"}


def test_recurrent_state_reused_after_its_kv_was_evicted_is_caught(pytester, vibeserve_cache):
    result, report = run_scenario(
        pytester,
        vibeserve_cache,
        "-k",
        "correctness",
        engine=WRONG_ENGINES / "state_after_kv_evicted",
    )
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*FAILED*test_requests_over_time_interleaving_prefixes*"])
    wrong = {f["request_id"] for f in failures(report)}
    # Exactly the requests served from a state whose KV was evicted: in the mixed check prefixes
    # 0 and 1 come back after two others (prefix 2 is still whole); in the near-miss check the
    # burst's prefix comes back after the mixed ones (twin and shorter are fresh prefixes).
    assert wrong == {"req-3-p0", "req-4-p1", "nm-base", "nm-new-tail"}


def test_a_correct_block_prefix_cache_passes_every_check(pytester, vibeserve_cache):
    """The positive control: snapshots keyed by the exact tokens they hold, batched tails and
    decode. It reuses prefixes (fewer forwards than the starter's one per token) and passes."""
    result, report = run_scenario(
        pytester, vibeserve_cache, "-k", "correctness", engine=WRONG_ENGINES / "block_prefix_cache"
    )
    result.assert_outcomes(passed=4)
    integrity = next(c for c in report["correctness"]["checks"] if c["name"] == "integrity")
    # 3 prefix blocks, 1 batched tail and 11 batched decode steps, against the starter's 6 x 12
    assert integrity["stats"]["counters"]["model_forward_calls"] < 6 * 12

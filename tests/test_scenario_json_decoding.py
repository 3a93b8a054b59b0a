"""Scenario json_decoding end to end at the tiny scale: the starter passes, and three wrong engines
each fail with their own precise reason: one that emits valid JSON of the wrong values (the second
best allowed token: every document validates, the tokens do not), one that keys its grammar
cache on the response_format's name (every request is named "response": later requests get the
first one's grammar), and one that skips the model where the grammar leaves a few tokens open.

Each wrong engine is the starter with one change, so nothing else can be what fails. Each scenario
run is a pytest subprocess (pytester), as a user or the loop's Judge runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCENARIO = HERE.parent / "scenarios" / "json_decoding"
STARTER = SCENARIO / "starter" / "engine.py"

ARGMAX = "            token = int(masked.argmax())\n"
WRONG_VALUES = (
    ARGMAX,
    "            token = int(masked.topk(2).indices[1] if allowed.sum() > 1 else masked.argmax())"
    "  # the second best allowed token\n",
)
COMPILE = (
    "            grammar = llguidance.LLMatcher.grammar_from_json_schema(\n"
    "                schema_of(request.response_format), defaults=COMPILE_OPTIONS\n"
    "            )\n"
)
NAME_KEYED_CACHE = (
    COMPILE,
    "            cache = self.__dict__.setdefault('grammars', {})\n"
    "            key = request.response_format.get('json_schema', {}).get('name')\n"
    "            if key not in cache:  # keyed on the schema's name, not the schema\n"
    "                cache[key] = llguidance.LLMatcher.grammar_from_json_schema(\n"
    "                    schema_of(request.response_format), defaults=COMPILE_OPTIONS\n"
    "                )\n"
    "            grammar = cache[key]\n",
)
SKIP_MODEL = (
    "            if allowed.sum() == 1:\n",
    "            if 1 < allowed.sum() <= 8:  # few choices: take the first, no model needed\n"
    "                token = int(np.flatnonzero(allowed)[0])\n"
    "                matcher.consume_token(token)\n"
    "                return token\n"
    "            if allowed.sum() == 1:\n",
)


def wrong_engine(tmp_path: Path, name: str, change: tuple[str, str]) -> Path:
    source = STARTER.read_text()
    old, new = change
    assert source.count(old) == 1, f"the starter changed: {old!r} is not in it once"
    engine = tmp_path / name
    engine.mkdir()
    (engine / "engine.py").write_text(source.replace(old, new))
    return engine


def run_scenario(pytester, cache, *args):
    argv = [str(SCENARIO), "--vibeserve-scale", "tiny", "--vibeserve-cache", str(cache)]
    argv += ["--vibeserve-report", "report.json", "-p", "no:cacheprovider", *args]
    result = pytester.runpytest_subprocess(*argv, timeout=600)
    report_path = pytester.path / "report.json"
    return result, json.loads(report_path.read_text()) if report_path.exists() else None


def outcomes(report) -> dict[str, str]:
    return {t["nodeid"].split("::")[-1]: t["outcome"] for t in report["correctness"]["tests"]}


def check(report, name: str) -> dict:
    return next(c for c in report["correctness"]["checks"] if c["name"] == name)


def test_starter_passes_with_the_grammar_report(pytester, vibeserve_cache):
    result, report = run_scenario(pytester, vibeserve_cache)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            "*headline e2e_p50_ms (ms, lower is better)*",
            "grammar (engine-reported, per output token): candidate *% forced*baseline *% forced*",
            "outputs: *hf_guided */* valid, sentinel */*",
        ]
    )
    assert report["correctness"]["passed"] is True
    documents = [c for c in report["correctness"]["checks"] if c["name"] == "json_schema"]
    reference, engine = documents
    assert reference["summary"].startswith("reference: ")
    assert reference["stats"]["valid_fraction"] >= 0.95
    assert engine["stats"]["valid_fraction"] == 1.0
    assert "sentinel_fraction" in engine["stats"]  # reported, not gated at this scale
    (comparison,) = report["performance"]["comparisons"]
    runs = comparison["candidate_runs"]
    assert all(0 < run["forced_fraction"] < 1 for run in runs)
    assert all(run["mask_ms_per_token"] > 0 for run in runs)
    assert set(comparison["validity"]) == {"candidate", "baseline", "hf_guided"}
    assert all(v.startswith("6/6 valid") for v in comparison["validity"].values())


def test_a_workload_whose_reference_documents_do_not_finish_fails_its_own_gate(
    pytester, vibeserve_cache
):
    """The reference's validity is the workload's quality: with room for 4 tokens no document
    finishes, and the reference gate (not an engine's check) fails, naming the rate and the
    minimum."""
    result, report = run_scenario(
        pytester,
        vibeserve_cache,
        "--vibeserve-workload",
        "max_tokens=4",
        "-k",
        "reference_documents",
    )
    result.assert_outcomes(failed=1, deselected=4)
    (reference,) = [c for c in report["correctness"]["checks"] if c["name"] == "json_schema"]
    assert reference["summary"].startswith("reference: ") and not reference["passed"]
    assert "0/6 outputs valid (min fraction 0.95)" in reference["summary"]
    rate, *documents = reference["failures"]
    assert "valid fraction 0.000 (0/6) is below the required 0.950" in rate["message"]
    assert len(documents) == 6
    assert all("the document is unfinished" in f["message"] for f in documents)


def test_valid_json_of_the_wrong_values_fails_the_token_check(pytester, vibeserve_cache, tmp_path):
    engine = wrong_engine(tmp_path, "wrong_values", WRONG_VALUES)
    result, report = run_scenario(
        pytester, vibeserve_cache, "--vibeserve-engine", str(engine), "-m", "vibeserve_correctness"
    )
    assert result.ret != 0
    tests = outcomes(report)
    assert tests["test_documents_are_schema_valid"] == "passed"  # valid is not enough
    assert tests["test_tokens_equal_constrained_reference"] == "failed"
    result.stdout.fnmatch_lines(["*request json-* position *"])


def test_a_grammar_cache_keyed_on_the_schema_name_fails(pytester, vibeserve_cache, tmp_path):
    engine = wrong_engine(tmp_path, "name_keyed_cache", NAME_KEYED_CACHE)
    result, report = run_scenario(
        pytester, vibeserve_cache, "--vibeserve-engine", str(engine), "-m", "vibeserve_correctness"
    )
    assert result.ret != 0
    tests = outcomes(report)
    assert tests["test_documents_are_schema_valid"] == "failed"
    failures = check(report, "json_schema")
    messages = [f["message"] for c in report["correctness"]["checks"] for f in c["failures"]]
    assert any("schema" in m and "json-1" in m for m in messages), messages
    # where it left the schema, read by the pinned grammar engine
    grammar = [f["data"].get("grammar") for f in failures["failures"] if f["data"].get("grammar")]
    assert grammar and any(g["rejected_token"] is not None for g in grammar)


def test_skipping_the_model_on_unforced_tokens_fails_the_token_check(
    pytester, vibeserve_cache, tmp_path
):
    engine = wrong_engine(tmp_path, "skip_model", SKIP_MODEL)
    result, report = run_scenario(
        pytester, vibeserve_cache, "--vibeserve-engine", str(engine), "-m", "vibeserve_correctness"
    )
    assert result.ret != 0
    assert outcomes(report)["test_tokens_equal_constrained_reference"] == "failed"
    tokens = check(report, "tokens")
    assert tokens["failures"] and all(f["position"] is not None for f in tokens["failures"])


@pytest.mark.parametrize(
    "response_format, match",
    [
        ({"type": "text"}, "type 'text' is not supported"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema.schema"),
    ],
)
def test_a_response_format_the_reference_cannot_use_names_the_fix(response_format, match):
    from reference_impls.constrained import GrammarError, schema_of

    with pytest.raises(GrammarError, match=match):
        schema_of(response_format)


def test_response_format_works_through_vibeserve_serve(pytester, vibeserve_cache):
    """The starter behind `vibeserve serve`: the schema travels as response_format over HTTP."""
    from pytest_vibeserve.contract import EngineSpec
    from pytest_vibeserve.reference import materialize_model
    from pytest_vibeserve.serve import serve_in_thread

    model_dir = materialize_model("tiny", vibeserve_cache)
    with serve_in_thread(STARTER.parent, EngineSpec(model_path=str(model_dir))) as url:
        result, report = run_scenario(
            pytester, vibeserve_cache, "--vibeserve-endpoint", url, "--vibeserve-peers", "none"
        )
    result.assert_outcomes(passed=4, skipped=1)  # integrity: a server counts no forwards
    assert report["correctness"]["passed"] is True

"""The json_decoding engine renderer: every feature renders code that compiles, wrong combinations
are refused by name, the starter records the family, and an engine with every feature on gives the
reference's constrained tokens with far fewer forwards (the tiny scale, through the scenario)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import pytest

from agents.recipes.engines import load_features, write_engine
from agents.recipes.greedy_engine import FeatureError
from agents.recipes.json_engine import JsonFeatures, render_engine

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "json_decoding"

ALL = (
    [
        JsonFeatures(
            fast_forward=ff, grammar_cache=cache, overlap=overlap, forward=forward, matmul=matmul
        )
        for ff, cache, overlap, (forward, matmul) in itertools.product(
            (False, True),
            (False, True),
            (False, True),
            (("transformers", "torch"), ("lean", "torch"), ("lean", "numpy"), ("numpy", "torch")),
        )
    ]
    + [
        JsonFeatures(fast_forward=True, forward="numpy", draft=draft, grammar_cache=cache)
        for draft, cache in ((1, False), (16, True))
    ]
    + [JsonFeatures(fast_forward=True, forward="numpy", draft=8, min_ngram=1)]
)


@pytest.mark.parametrize("features", ALL, ids=lambda f: f.describe())
def test_every_feature_renders_code_that_compiles(features):
    source = render_engine(features)
    compile(source, "engine.py", "exec")
    assert ("class LeanLlama" in source) == (features.forward != "transformers")
    assert ("class LeanCache" in source) == (features.forward == "numpy")
    assert ("compute_ff_tokens" in source) and ("_forced_run" in source) == features.fast_forward
    assert ("def _step_draft" in source) == bool(features.draft)
    if features.draft:
        assert f"MIN_NGRAM = {features.min_ngram}" in source


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"matmul": "numpy"}, "matmul='numpy' need forward='lean'"),
        ({"fused": True}, "fused need forward='lean'"),
        ({"forward": "vllm"}, "valid values: transformers, lean, numpy"),
        ({"draft": 8, "forward": "numpy"}, "draft=8 needs fast_forward=true and forward='numpy'"),
        ({"draft": 8, "fast_forward": True}, "draft=8 needs fast_forward=true and forward='numpy'"),
        ({"draft": -1}, "draft"),
        ({"min_ngram": 0}, "min_ngram"),
        ({"forward": "numpy", "matmul": "numpy"}, "matmul and fused apply to forward='lean'"),
        ({"family": "serving"}, "this renderer draws 'json'"),
    ],
)
def test_invalid_features_name_the_fix(changes, named):
    with pytest.raises(FeatureError, match=named):
        dataclasses.replace(JsonFeatures(), **changes)


def test_the_starter_records_the_json_family():
    assert load_features(SCENARIO / "starter") == JsonFeatures()


def test_the_grammar_cache_is_keyed_on_the_whole_schema_in_its_own_order():
    source = render_engine(JsonFeatures(grammar_cache=True))
    assert 'key = json.dumps(schema, separators=(",", ":"))' in source
    assert "sort_keys" not in source and '["name"]' not in source


ENGINES_WITH_EVERYTHING = {
    # the starter takes one forward per output token: 233 on this workload (225 tokens + the
    # warm-up's 8); forced tokens ride along in blocks here (54 measured)
    "lean": JsonFeatures(
        fast_forward=True, grammar_cache=True, overlap=True, forward="lean", matmul="numpy"
    ),
    # drafts verified in blocks on top (52 measured at draft 12: random weights rarely echo
    # their prompt)
    "draft": JsonFeatures(fast_forward=True, grammar_cache=True, forward="numpy", draft=16),
}


def run_tiny_correctness(pytester, cache, engine: Path) -> dict:
    argv = [str(SCENARIO), "--vibeserve-scale", "tiny", "--vibeserve-cache", str(cache)]
    argv += ["--vibeserve-engine", str(engine), "-m", "vibeserve_correctness"]
    argv += ["--vibeserve-report", "report.json", "-p", "no:cacheprovider"]
    pytester.runpytest_subprocess(*argv, timeout=600)
    return json.loads((pytester.path / "report.json").read_text())


def check(report: dict, name: str) -> dict:
    return next(c for c in report["correctness"]["checks"] if c["name"] == name)


@pytest.mark.parametrize("name", ENGINES_WITH_EVERYTHING)
def test_every_feature_at_once_gives_the_reference_tokens_with_fewer_forwards(
    pytester, vibeserve_cache, tmp_path, name
):
    engine = tmp_path / "engine"
    shutil.copytree(SCENARIO / "starter", engine)
    write_engine(engine, ENGINES_WITH_EVERYTHING[name])
    report = run_tiny_correctness(pytester, vibeserve_cache, engine)
    assert all(c["passed"] for c in report["correctness"]["checks"]), report["correctness"]
    tokens = check(report, "tokens")
    assert tokens["passed"] and not tokens["failures"]
    assert 0 < check(report, "integrity")["stats"]["counters"]["model_forward_calls"] < 120


def test_trusting_every_draft_fails_the_token_check(pytester, vibeserve_cache, tmp_path):
    """The drafting engine with its one guard removed: logits of a row past a wrong draft are
    used as if the drafts before it were right."""
    engine = tmp_path / "engine"
    shutil.copytree(SCENARIO / "starter", engine)
    write_engine(engine, ENGINES_WITH_EVERYTHING["draft"])
    source = (engine / "engine.py").read_text()
    guard = "            elif right < len(emitted) or len(emitted) > len(drafts):\n"
    assert source.count(guard) == 1
    (engine / "engine.py").write_text(
        source.replace(guard, "            elif len(emitted) > len(drafts):\n")
    )
    report = run_tiny_correctness(pytester, vibeserve_cache, engine)
    tokens = check(report, "tokens")
    assert not tokens["passed"] and tokens["failures"]
    assert all(f["position"] is not None for f in tokens["failures"])


def test_fused_projections_refuse_the_numpy_forward_already_fused(tmp_path):
    import subprocess
    import sys

    engine = tmp_path / "engine"
    shutil.copytree(SCENARIO / "starter", engine)
    write_engine(engine, JsonFeatures(forward="numpy"))
    recipe = ROOT / "skills" / "fused-projections" / "recipe.py"
    done = subprocess.run(
        [sys.executable, str(recipe), "--engine-dir", str(engine)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "already runs Q/K/V and gate/up as one matmul" in done.stderr
    assert load_features(engine) == JsonFeatures(forward="numpy")

"""The hybrid_ssm engine renderer (agents/recipes/hybrid_engine.py) and its recipes.

Renders every feature combination, runs the recipes as black boxes on the scenario's starter,
and runs rendered engines through the scenario's own correctness checks at the tiny scale: every
technique a recipe can turn on must keep the reference's greedy tokens.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.recipes.engines import load_features, write_engine
from agents.recipes.greedy_engine import EngineFeatures, FeatureError
from agents.recipes.hybrid_engine import HybridFeatures, render_engine, select

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "hybrid_ssm"
HYBRID_STARTER = SCENARIO / "starter"
PREDICTED_STARTER = ROOT / "scenarios" / "predicted_outputs" / "starter"
HYBRID_RECIPES = {
    "hybrid-prefix-cache": {"prefix_cache": True, "snapshot_every": 256},
    "batched-decode": {"max_batch": 16, "decode": "lean"},
    "hybrid-lean-decode": {"decode": "lean"},
    "chunked-prefill": {"prefill_chunk": 256},
    "snapshot-memory-budget": {"snapshot_budget_mb": 256, "prefix_cache": True},
}


def run_recipe(skill: str, engine_dir: Path, *params: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "skills" / skill / "recipe.py")]
    command += ["--engine-dir", str(engine_dir)]
    for param in params:
        command += ["--param", param]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


# --------------------------------------------------------------------------------------------------
# The template's directives


def test_select_keeps_the_branches_whose_flags_hold_and_nests():
    text = "a\n#if x\nb\n#if not y\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf\n"
    assert select(text, {"x": True, "y": False}) == "a\nb\nc\nf\n"
    assert select(text, {"x": True, "y": True}) == "a\nb\nd\nf\n"
    assert select(text, {"x": False, "y": False}) == "a\ne\nf\n"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("#if nope\n#endif\n", "unknown flag 'nope'"),
        ("#if x\n", "never closed"),
        ("#endif\n", "#endif without #if"),
    ],
)
def test_select_names_a_broken_template(text, named):
    with pytest.raises(ValueError, match=named):
        select(text, {"x": True})


# --------------------------------------------------------------------------------------------------
# Features


def test_every_feature_combination_renders_code_that_compiles():
    rendered = set()
    for cache, budget, batch, chunk, decode, dtype, threads in itertools.product(
        [False, True],
        [0, 64],
        [1, 16],
        [0, 128],
        ["transformers", "lean"],
        ["float32", "bfloat16"],
        [None, 2],
    ):
        if (budget and not cache) or (decode == "lean" and dtype != "float32"):
            continue
        features = HybridFeatures(
            prefix_cache=cache,
            snapshot_budget_mb=budget,
            max_batch=batch,
            prefill_chunk=chunk,
            decode=decode,
            dtype=dtype,
            threads=threads,
        )
        source = render_engine(features)
        compile(source, f"<{features.describe()}>", "exec")
        assert "#if" not in source and "#endif" not in source and "${" not in source
        assert ("class LeanDecoder" in source) == (decode == "lean")
        assert ("class PrefixStore" in source) == cache
        assert ("SNAPSHOT_BUDGET_BYTES" in source) == bool(budget)
        assert ("PREFILL_CHUNK =" in source) == bool(chunk)
        rendered.add(source)
    assert len(rendered) == 72  # every combination is different code


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"max_batch": 0}, "max_batch=0; valid values: an integer in [1, 256]"),
        ({"decode": "fast"}, "decode='fast'; valid values: transformers, lean"),
        ({"decode": "lean", "dtype": "bfloat16"}, "numpy has no bfloat16"),
        ({"snapshot_budget_mb": 64}, "set prefix_cache=true"),
        ({"family": "llama"}, "this renderer draws 'hybrid' engines"),
        ({"prefix_cache": 1}, "prefix_cache=1; valid values: true, false"),
    ],
)
def test_invalid_features_name_the_valid_values(changes, named):
    with pytest.raises(FeatureError, match=named.replace("[", r"\[").replace("]", r"\]")):
        HybridFeatures(**changes)


def test_the_starter_ships_the_default_hybrid_features(tmp_path):
    assert load_features(HYBRID_STARTER) == HybridFeatures()
    write_engine(tmp_path, HybridFeatures(max_batch=4))
    assert load_features(tmp_path) == HybridFeatures(max_batch=4)
    assert json.loads((tmp_path / "engine_features.json").read_text())["family"] == "hybrid"
    (tmp_path / "engine_features.json").write_text('{"family": "mamba"}')
    with pytest.raises(FeatureError, match="known families: hybrid"):
        load_features(tmp_path)


# --------------------------------------------------------------------------------------------------
# Recipes as black boxes


@pytest.mark.parametrize("skill", sorted(HYBRID_RECIPES))
def test_each_hybrid_recipe_changes_the_starter(skill, tmp_path):
    engine_dir = tmp_path / "engine"
    shutil.copytree(HYBRID_STARTER, engine_dir)
    done = run_recipe(skill, engine_dir)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["skill"] == skill and result["summary"] and result["expected"]
    features = load_features(engine_dir)
    for key, value in HYBRID_RECIPES[skill].items():
        assert getattr(features, key) == value
    assert (engine_dir / "engine.py").read_text() == render_engine(features)


def test_recipes_refuse_the_other_scenarios_engines(tmp_path):
    hybrid, predicted = tmp_path / "hybrid", tmp_path / "predicted"
    shutil.copytree(HYBRID_STARTER, hybrid)
    shutil.copytree(PREDICTED_STARTER, predicted)
    done = run_recipe("static-kv-cache", hybrid)
    assert done.returncode == 2
    assert "static-kv-cache changes a predicted_outputs engine" in done.stderr
    assert "holds a hybrid_ssm engine" in done.stderr
    done = run_recipe("hybrid-prefix-cache", predicted)
    assert done.returncode == 2
    assert "changes a hybrid_ssm engine" in done.stderr
    assert load_features(predicted) == EngineFeatures()  # nothing written


def test_batched_decode_moves_decode_to_the_lean_decoder_and_says_so(tmp_path):
    """One forward for every running request needs rows of any length: not transformers'
    DynamicCache (one length per batch), so the recipe turns the LeanDecoder on."""
    engine_dir = tmp_path / "engine"
    shutil.copytree(HYBRID_STARTER, engine_dir)
    done = run_recipe("batched-decode", engine_dir)
    assert json.loads(done.stdout.strip().splitlines()[-1])["also"] == {"hybrid-lean-decode": {}}
    done = run_recipe("batched-decode", engine_dir, "max_batch=8")  # lean already: batch only
    assert json.loads(done.stdout.strip().splitlines()[-1])["also"] == {}
    assert load_features(engine_dir) == HybridFeatures(max_batch=8, decode="lean")


def test_the_memory_budget_turns_the_prefix_cache_on_and_says_so(tmp_path):
    engine_dir = tmp_path / "engine"
    shutil.copytree(HYBRID_STARTER, engine_dir)
    done = run_recipe("snapshot-memory-budget", engine_dir, "snapshot_budget_mb=64")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["also"] == {"hybrid-prefix-cache": {"snapshot_every": 256}}
    assert load_features(engine_dir).snapshot_budget_mb == 64


# --------------------------------------------------------------------------------------------------
# The rendered prefix store: exact keys, exact byte accounting, LRU eviction


class FakeLayer:
    def __init__(self, kib: int) -> None:
        self.keys = torch.zeros(kib * 128)  # 128 floats = 512 B; keys + values = kib KiB
        self.values = torch.zeros(kib * 128)
        self.conv_states = {}
        self.recurrent_states = {}


class FakeCache:
    def __init__(self, kib: int) -> None:
        self.layers = [FakeLayer(kib)]


def rendered_module(tmp_path: Path, features: HybridFeatures):
    path = tmp_path / "engine.py"
    path.write_text(render_engine(features))
    spec = importlib.util.spec_from_file_location("rendered_hybrid_engine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_budgeted_store_counts_bytes_and_evicts_least_recently_used(tmp_path):
    module = rendered_module(tmp_path, HybridFeatures(prefix_cache=True, snapshot_budget_mb=1))
    store = module.PrefixStore()
    store.put((1, 2), FakeCache(400))
    store.put((1, 2, 3), FakeCache(400))
    assert store.bytes == 800 * 1024
    assert store.lookup((1, 2, 9)) == (2, store.snapshots[(1, 2)])  # (1, 2) is now most recent
    store.put((5,), FakeCache(400))  # over 1 MiB: the least recently used, (1, 2, 3), goes
    assert set(store.snapshots) == {(1, 2), (5,)}
    assert (store.bytes, store.evicted, store.peak_bytes) == (800 * 1024, 1, 800 * 1024)
    store.put((7,), FakeCache(2048))  # larger than the whole budget: not kept
    assert (7,) not in store.snapshots and store.bytes == 800 * 1024
    # exact keys: a prompt one token off the stored prefix, or equal to it, does not match
    assert store.lookup((1, 3, 4))[1] is None
    assert store.lookup((5,))[1] is None  # a whole prompt leaves nothing to compute
    assert store.hit_tokens == 2


def test_a_store_snapshot_is_a_copy_the_caller_cannot_change(tmp_path):
    module = rendered_module(tmp_path, HybridFeatures(prefix_cache=True))
    store = module.PrefixStore()
    cache = FakeCache(1)
    store.put((1, 2), cache)
    cache.layers[0].keys.fill_(7.0)
    assert float(store.snapshots[(1, 2)].layers[0].keys.sum()) == 0.0


# --------------------------------------------------------------------------------------------------
# Rendered engines against the scenario's correctness checks (tiny scale)


def run_checks(pytester, cache, engine_dir: Path):
    argv = [str(SCENARIO), "--vibeserve-scale", "tiny", "--vibeserve-cache", str(cache)]
    argv += ["--vibeserve-engine", str(engine_dir), "--vibeserve-report", "report.json"]
    argv += ["-k", "correctness", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*argv, timeout=600)
    return result, json.loads((pytester.path / "report.json").read_text())


@pytest.mark.parametrize(
    "features",
    [
        HybridFeatures(),  # the starter's technique, rendered
        # snapshots every 32 tokens (the tiny prefix is 96), cohorts on transformers, chunks
        HybridFeatures(prefix_cache=True, snapshot_every=32, max_batch=16, prefill_chunk=16),
        # everything the loop can turn on, with the lean decoder and a byte budget
        HybridFeatures(
            prefix_cache=True, snapshot_every=32, snapshot_budget_mb=1, max_batch=16, decode="lean"
        ),
    ],
    ids=["default", "cache-cohorts-chunks", "cache-lean-budget"],
)
def test_rendered_engines_pass_every_correctness_check(pytester, vibeserve_cache, features):
    engine_dir = pytester.path / "engine"
    write_engine(engine_dir, features)
    result, report = run_checks(pytester, vibeserve_cache, engine_dir)
    result.assert_outcomes(passed=4)
    assert report["correctness"]["passed"] is True
    integrity = next(c for c in report["correctness"]["checks"] if c["name"] == "integrity")
    counters = integrity["stats"]["counters"]
    if features.prefix_cache:
        # the burst's 6 requests share 96 prefix tokens: 3 snapshots, 5 requests served from one
        assert counters["prefix_cache_hit_tokens"] >= 5 * 96
        assert counters["model_forward_calls"] < 6 * 12  # fewer than the starter's
    else:
        assert counters["prefix_cache_hit_tokens"] == 0

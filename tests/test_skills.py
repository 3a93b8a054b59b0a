"""The skills library and its offline recipes.

Every SKILL.md is checked mechanically (Agent Skills frontmatter, size limits, metadata the offline
planner reads); every recipe runs as a black box on a copy of the starter; and engines rendered
with block verification are driven in-process on the tiny model against the reference greedy
decoder, with exact, edited, garbage and missing predictions, stop tokens and max_new_tokens.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents.recipes.greedy_engine import (
    FEATURES_FILE,
    EngineFeatures,
    FeatureError,
    load_features,
    render_engine,
    write_engine,
)
from agents.skills import load_library
from pytest_vibeserve.checkers.tokens import ExpectedTokens, check_token_equality
from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request
from pytest_vibeserve.workloads.code_edit import perturb_prediction

ROOT = Path(__file__).resolve().parents[1]
SKILLS = ROOT / "skills"
STARTER = ROOT / "scenarios" / "predicted_outputs" / "starter"
SKILL_DIRS = sorted(path.parent for path in SKILLS.glob("*/SKILL.md"))
REQUIRED_SKILLS = {
    "static-kv-cache",
    "prediction-block-verification",
    "prediction-realignment",
    "batched-prefill",
    "torch-compile",
    "thread-blas-tuning",
    "bf16-weights",
    "lean-forward",
    "openblas-matmul",
}
MAX_NEW_TOKENS = 48


def read_skill(skill_dir: Path) -> tuple[dict, str]:
    text = (skill_dir / "SKILL.md").read_text()
    assert text.startswith("---\n"), f"{skill_dir.name}: SKILL.md must open with '---' frontmatter"
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert isinstance(meta, dict), f"{skill_dir.name}: frontmatter is not a YAML mapping"
    return meta, body


def skill_id(path: Path) -> str:
    return path.name


# --------------------------------------------------------------------------------------------------
# SKILL.md format


def test_library_holds_the_required_skills():
    assert REQUIRED_SKILLS <= {d.name for d in SKILL_DIRS}


def test_readme_routes_every_skill():
    routing = (SKILLS / "README.md").read_text()
    missing = [d.name for d in SKILL_DIRS if f"]({d.name}/SKILL.md)" not in routing]
    assert not missing, f"skills/README.md has no routing row for {missing}"


@pytest.mark.parametrize("skill_dir", SKILL_DIRS, ids=skill_id)
def test_skill_md_is_well_formed(skill_dir):
    meta, body = read_skill(skill_dir)
    assert meta.get("name") == skill_dir.name
    description = meta.get("description")
    assert isinstance(description, str) and description.strip()
    assert len(description) <= 1024
    assert body.count("\n") <= 500
    extra = meta.get("metadata")
    assert isinstance(extra, dict), "metadata: triggers, scenarios, recipe, params"
    triggers = extra.get("triggers")
    assert isinstance(triggers, list) and triggers
    assert all(isinstance(t, str) and t for t in triggers)
    assert isinstance(extra.get("scenarios", []), list)
    if "recipe" in extra:
        assert (skill_dir / extra["recipe"]).is_file(), f"recipe {extra['recipe']} is missing"
    covers = extra.get("covers", [])
    assert isinstance(covers, list) and skill_dir.name not in covers
    params = extra.get("params", {})
    assert isinstance(params, dict)
    assert all(isinstance(values, list) and values for values in params.values())
    for reference in (skill_dir / "references").glob("*"):
        assert reference.suffix == ".md", f"{reference} is not a markdown reference"
    for link in _relative_links(body):
        assert (skill_dir / link).exists(), f"{skill_dir.name}/SKILL.md links to missing {link}"


def _relative_links(markdown: str) -> list[str]:
    links = []
    for part in markdown.split("](")[1:]:
        target = part.split(")", 1)[0].split("#", 1)[0]
        if target and "://" not in target:
            links.append(target)
    return links


def test_bf16_skill_says_it_breaks_token_equality():
    meta, body = read_skill(SKILLS / "bf16-weights")
    text = (meta["description"] + body).lower()
    assert "token equality" in text and "acceptable" in text


# --------------------------------------------------------------------------------------------------
# Recipes as black boxes


def run_recipe(skill: str, engine_dir: Path, *params: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SKILLS / skill / "recipe.py"), "--engine-dir", str(engine_dir)]
    for param in params:
        command += ["--param", param]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def starter_copy(tmp_path: Path) -> Path:
    engine_dir = tmp_path / "engine"
    shutil.copytree(STARTER, engine_dir)
    return engine_dir


RECIPE_DIRS = [d for d in SKILL_DIRS if "recipe" in read_skill(d)[0]["metadata"]]


@pytest.mark.parametrize("skill_dir", RECIPE_DIRS, ids=skill_id)
def test_recipe_changes_the_starter(skill_dir, tmp_path):
    """Each recipe on the starter of its (first) scenario."""
    meta = read_skill(skill_dir)[0]["metadata"]
    scenario = (meta.get("scenarios") or ["predicted_outputs"])[0]
    starter = ROOT / "scenarios" / scenario / "starter"
    engine_dir = tmp_path / "engine"
    shutil.copytree(starter, engine_dir)
    before = load_features(engine_dir)
    params = meta.get("params", {})
    first = [f"{key}={values[0]}" for key, values in params.items()]
    done = run_recipe(skill_dir.name, engine_dir, *first)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["skill"] == skill_dir.name
    assert {"params", "summary", "expected"} <= result.keys()
    assert result["summary"] and result["expected"]
    source = (engine_dir / "engine.py").read_text()
    compile(source, "engine.py", "exec")
    assert load_features(engine_dir) != before
    assert source != (starter / "engine.py").read_text()


@pytest.mark.parametrize(
    ("skill", "param", "named"),
    [
        ("prediction-block-verification", "block_size=big", "integers >= 1"),
        ("prediction-block-verification", "block_size=1000", "<= 128"),
        ("torch-compile", "mode=max-autotune", "default, freezing"),
        ("thread-blas-tuning", "cores=2", "takes: threads"),
    ],
)
def test_recipe_refuses_invalid_params(tmp_path, skill, param, named):
    engine_dir = starter_copy(tmp_path)
    done = run_recipe(skill, engine_dir, param)
    assert done.returncode == 2
    assert named in done.stderr
    assert not (engine_dir / FEATURES_FILE).exists()  # nothing was written


def test_bf16_on_an_openblas_engine_moves_its_matmuls_back_to_torch(tmp_path):
    """A real bf16 candidate, not a crash: numpy cannot multiply bfloat16."""
    engine_dir = starter_copy(tmp_path)
    assert run_recipe("openblas-matmul", engine_dir).returncode == 0
    done = run_recipe("bf16-weights", engine_dir)
    assert done.returncode == 0, done.stderr
    features = load_features(engine_dir)
    assert (features.dtype, features.matmul, features.forward) == ("bfloat16", "torch", "lean")
    assert features.threads is None
    assert "numpy has no bfloat16" in json.loads(done.stdout.strip().splitlines()[-1])["summary"]


def test_recipes_compose(tmp_path):
    engine_dir = starter_copy(tmp_path)
    assert run_recipe("static-kv-cache", engine_dir).returncode == 0
    assert run_recipe("prediction-block-verification", engine_dir, "block_size=8").returncode == 0
    assert run_recipe("prediction-realignment", engine_dir, "anchor=2").returncode == 0
    features = load_features(engine_dir)
    assert (features.kv_cache, features.verify_block, features.realign, features.anchor) == (
        "static",
        8,
        True,
        2,
    )


def test_realignment_turns_on_verification_when_off(tmp_path):
    engine_dir = starter_copy(tmp_path)
    done = run_recipe("prediction-realignment", engine_dir)
    assert done.returncode == 0, done.stderr
    assert load_features(engine_dir).verify_block == 15
    result = json.loads(done.stdout)
    assert "turned on" in result["summary"]
    assert result["also"] == {"prediction-block-verification": {"block_size": 15}}
    # ...and says nothing of the kind once verification is already there
    again = run_recipe("prediction-realignment", engine_dir, "anchor=2")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["also"] == {}


def test_a_covering_recipe_reports_what_it_turned_on(tmp_path):
    """On the starter, each skill with ``covers`` turns on exactly the covered techniques and
    reports them in ``also`` with the covered skill's own first sweep values, so the planner's
    tried set and the roadmap match what the engine holds."""
    library = load_library()
    covering = [s for s in library.values() if s.covers]
    assert {s.name for s in covering} >= {"prediction-realignment", "openblas-matmul"}
    for skill in covering:
        scenario = (skill.scenarios or ("predicted_outputs",))[0]
        engine_dir = tmp_path / skill.name
        shutil.copytree(ROOT / "scenarios" / scenario / "starter", engine_dir)
        done = run_recipe(skill.name, engine_dir)
        assert done.returncode == 0, done.stderr
        also = json.loads(done.stdout)["also"]
        assert set(also) == set(skill.covers), skill.name
        for name, params in also.items():
            assert params == library[name].param_grid()[0], (skill.name, name)


# --------------------------------------------------------------------------------------------------
# Features


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"kv_cache": "paged"}, "dynamic, static"),
        ({"verify_block": -1}, "[0, 128]"),
        ({"verify_block": True}, "[0, 128]"),
        ({"realign": True}, "verify_block > 0"),
        ({"compile": "default"}, "kv_cache='static'"),
        ({"compile": "fast", "kv_cache": "static"}, "none, default, freezing"),
        ({"dtype": "float16"}, "float32, bfloat16"),
        ({"threads": 0}, ">= 1"),
        ({"forward": "fast"}, "transformers, lean"),
        ({"forward": "lean"}, "kv_cache='static'"),
        ({"forward": "lean", "kv_cache": "static", "compile": "default"}, "runs eager"),
        ({"matmul": "mkl"}, "torch, openblas"),
        ({"matmul": "openblas"}, "forward='lean'"),
        (
            {"matmul": "openblas", "forward": "lean", "kv_cache": "static", "dtype": "bfloat16"},
            "numpy has no bfloat16",
        ),
    ],
)
def test_invalid_features_name_the_valid_values(changes, named):
    with pytest.raises(FeatureError, match=named.replace("[", r"\[").replace("]", r"\]")):
        EngineFeatures(**changes)


def test_features_round_trip_and_refuse_unknown_keys(tmp_path):
    features = EngineFeatures(kv_cache="static", verify_block=8, realign=True, threads=1)
    write_engine(tmp_path, features)
    assert load_features(tmp_path) == features
    with pytest.raises(FeatureError, match="unknown feature"):
        EngineFeatures.from_dict({"verify_blocks": 8})


def test_a_directory_without_features_holds_the_starter(tmp_path):
    assert load_features(tmp_path) == EngineFeatures()


@pytest.mark.parametrize(
    "features",
    [
        EngineFeatures(kv_cache="static", compile="default"),
        EngineFeatures(kv_cache="static", verify_block=16, realign=True, compile="freezing"),
        EngineFeatures(verify_block=4, prefill_chunk=64, lean_logits=True, threads=2),
    ],
    ids=["compile", "compile-freezing-verify", "chunked"],
)
def test_every_feature_renders_code_that_compiles(features):
    source = render_engine(features)
    compile(source, "engine.py", "exec")
    assert "import json" not in source and "EngineFeatures" not in source  # code, not flags


# --------------------------------------------------------------------------------------------------
# Rendered engines on the tiny model


@pytest.fixture(scope="module")
def tiny_model_dir(vibeserve_cache) -> Path:
    from reference_impls.models import materialize

    return materialize("tiny", vibeserve_cache)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """Greedy reference outputs of a few prompts: {prompt: ReferenceOutput}."""
    from reference_impls.greedy import greedy_decode, load_model

    model = load_model(tiny_model_dir)
    rng = random.Random(4)
    prompts = [tuple(rng.randrange(256) for _ in range(rng.randint(6, 40))) for _ in range(3)]
    return model, {p: greedy_decode(model, p, MAX_NEW_TOKENS, top_k=0) for p in prompts}


def load_engine(engine_dir: Path, model_dir: Path):
    name = f"rendered_engine_{abs(hash(engine_dir))}"
    spec = importlib.util.spec_from_file_location(name, engine_dir / "engine.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module.create_engine(EngineSpec(model_path=str(model_dir), threads=1))


def render(tmp_path: Path, model_dir: Path, **features):
    engine_dir = tmp_path / ("engine-" + "-".join(f"{k}{v}" for k, v in features.items()))
    write_engine(engine_dir, EngineFeatures(**features))
    return load_engine(engine_dir, model_dir)


def drive(engine, requests: list[Request]) -> tuple[dict[str, list[int]], dict[str, list[Event]]]:
    for request in requests:
        engine.add_request(request)
    events: dict[str, list[Event]] = {r.request_id: [] for r in requests}
    while engine.has_unfinished_requests():
        for event in engine.step():
            assert event.token_ids, "an event must carry at least one token"
            assert not (events[event.request_id] and events[event.request_id][-1].finished)
            events[event.request_id].append(event)
    for request in requests:
        assert events[request.request_id][-1].finished
    tokens = {rid: [t for e in evs for t in e.token_ids] for rid, evs in events.items()}
    return tokens, events


def predictions(kind: str, output: list[int], rng: random.Random) -> tuple[int, ...] | None:
    if kind == "exact":
        return tuple(output)
    if kind == "edited":
        return tuple(perturb_prediction(output, rng, vocab_size=258, n_spans=3).tokens)
    if kind == "garbage":
        return tuple(rng.randrange(258) for _ in range(len(output) + 20))
    return None


def assert_reference_tokens(reference_outputs, prompts, tokens):
    expected = {
        f"r{i}": ExpectedTokens(reference_outputs[p].tokens, reference_outputs[p].margins)
        for i, p in enumerate(prompts)
    }
    result = check_token_equality(expected, tokens)
    assert result.passed, result.summary + "".join(f"\n{f.message}" for f in result.failures)
    return result


ENGINES = {
    "block4": {"verify_block": 4},
    "block16": {"verify_block": 16},
    "block16-realign": {"verify_block": 16, "realign": True},
    "block16-realign-static": {"verify_block": 16, "realign": True, "kv_cache": "static"},
    "block4-realign-static-lean-chunked": {
        "verify_block": 4,
        "realign": True,
        "anchor": 2,
        "kv_cache": "static",
        "lean_logits": True,
        "prefill_chunk": 8,
    },
    "block16-realign-leanforward": {
        "verify_block": 16,
        "realign": True,
        "kv_cache": "static",
        "forward": "lean",
    },
    "block16-realign-openblas": {
        "verify_block": 16,
        "realign": True,
        "kv_cache": "static",
        "forward": "lean",
        "matmul": "openblas",
        "threads": 1,
    },
    "block4-leanforward-chunked": {
        "verify_block": 4,
        "kv_cache": "static",
        "forward": "lean",
        "prefill_chunk": 8,
    },
}


@pytest.mark.parametrize("features", ENGINES.values(), ids=ENGINES.keys())
def test_block_verification_gives_the_reference_tokens(
    tmp_path, tiny_model_dir, reference, features
):
    _, outputs = reference
    prompts = list(outputs)
    engine = render(tmp_path, tiny_model_dir, **features)
    rng = random.Random(7)
    forwards = {}
    for kind in ("exact", "edited", "garbage", "none"):
        requests = [
            Request(f"r{i}", p, MAX_NEW_TOKENS, (), predictions(kind, outputs[p].tokens, rng))
            for i, p in enumerate(prompts)
        ]
        before = engine.counters()[FORWARD_COUNTER]
        tokens, _ = drive(engine, requests)
        forwards[kind] = engine.counters()[FORWARD_COUNTER] - before
        assert_reference_tokens(outputs, prompts, tokens)
    total = len(prompts) * MAX_NEW_TOKENS
    assert forwards["none"] >= total  # one token per forward (plus prefill chunks)
    assert forwards["exact"] <= total / min(features["verify_block"], 8) + 2 * len(prompts)


def test_realignment_keeps_drafting_after_edits(tmp_path, tiny_model_dir, reference):
    _, outputs = reference
    prompts = list(outputs)
    used = {}
    for realign in (False, True):
        engine = render(tmp_path, tiny_model_dir, verify_block=16, realign=realign)
        rng = random.Random(11)  # the same edits for both engines
        requests = [
            Request(f"r{i}", p, MAX_NEW_TOKENS, (), predictions("edited", outputs[p].tokens, rng))
            for i, p in enumerate(prompts)
        ]
        tokens, _ = drive(engine, requests)
        assert_reference_tokens(outputs, prompts, tokens)
        used[realign] = engine.counters()[FORWARD_COUNTER]
    assert used[True] < used[False]


@pytest.mark.parametrize("kv_cache", ["dynamic", "static", "lean"])
def test_stop_token_inside_an_accepted_block(tmp_path, tiny_model_dir, reference, kv_cache):
    from reference_impls.greedy import greedy_decode

    model, outputs = reference
    prompt, full = next(iter(outputs.items()))
    # the first token whose value has not come before: the output must end right after it
    at = next(i for i in range(5, len(full.tokens)) if full.tokens[i] not in full.tokens[:i])
    stop = full.tokens[at]
    expected = greedy_decode(model, prompt, MAX_NEW_TOKENS, stop_token_ids=(stop,), top_k=0)
    assert len(expected.tokens) == at + 1
    cache = (
        {"kv_cache": "static", "forward": "lean"} if kv_cache == "lean" else {"kv_cache": kv_cache}
    )
    engine = render(tmp_path, tiny_model_dir, verify_block=16, realign=True, **cache)
    request = Request("r0", prompt, MAX_NEW_TOKENS, (stop,), tuple(full.tokens))
    tokens, events = drive(engine, [request])
    assert tokens["r0"] == expected.tokens
    assert len(events["r0"]) == -(-(at + 1) // 17)  # ceil: the stop came inside a full block


@pytest.mark.parametrize("max_new_tokens", [1, 2, 17, 20])
def test_max_new_tokens_inside_an_accepted_block(
    tmp_path, tiny_model_dir, reference, max_new_tokens
):
    _, outputs = reference
    prompt, full = next(iter(outputs.items()))
    engine = render(tmp_path, tiny_model_dir, verify_block=16, realign=True, kv_cache="static")
    # the prediction runs on past max_new_tokens: the engine must stop at the limit anyway
    request = Request("r0", prompt, max_new_tokens, (), tuple(full.tokens))
    tokens, events = drive(engine, [request])
    assert tokens["r0"] == full.tokens[:max_new_tokens]
    assert len(events["r0"]) == -(-max_new_tokens // 17)  # ceil: 17 tokens per full block


def test_default_features_behave_like_the_starter(tmp_path, tiny_model_dir, reference):
    _, outputs = reference
    prompts = list(outputs)
    rng = random.Random(3)
    requests = [
        Request(f"r{i}", p, MAX_NEW_TOKENS, (), predictions("exact", outputs[p].tokens, rng))
        for i, p in enumerate(prompts)
    ]
    runs = {}
    for name in ("starter", "rendered"):
        engine_dir = tmp_path / name
        if name == "starter":
            shutil.copytree(STARTER, engine_dir)
        else:
            write_engine(engine_dir, EngineFeatures())
        engine = load_engine(engine_dir, tiny_model_dir)
        tokens, events = drive(engine, requests)
        shapes = {rid: [len(e.token_ids) for e in evs] for rid, evs in events.items()}
        runs[name] = (tokens, shapes, engine.counters()[FORWARD_COUNTER])
    assert runs["rendered"] == runs["starter"]
    assert_reference_tokens(outputs, prompts, runs["rendered"][0])


@pytest.mark.parametrize("matmul", ["torch", "openblas"])
def test_lean_forward_gives_the_logits_of_transformers(tiny_model_dir, matmul):
    """LeanLlama is transformers' arithmetic written out: the same logits, whole prompt or split
    into a prefill, a multi-token append at an offset and a rollback; with OpenBLAS matmuls only
    the summation order differs."""
    import torch
    from transformers import AutoModelForCausalLM

    source = render_engine(EngineFeatures(kv_cache="static", forward="lean", matmul=matmul))
    name = f"lean_engine_{matmul}"
    namespace: dict = {"__name__": name}
    sys.modules[name] = type(sys)(name)
    exec(compile(source, "engine.py", "exec"), namespace)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    lean = namespace["LeanLlama"](model)
    ids = list(range(5, 37))
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([ids])).logits[0]
        cache = lean.new_cache(64)
        head = lean(cache, ids[:20], keep=20)
        tail = lean(cache, ids[20:], keep=12)
        cache.crop(-5)
        assert cache.get_seq_length() == 27
        again = lean(cache, ids[27:], keep=5)
        assert lean(cache, [1], keep=0) is None
    torch.testing.assert_close(head, full[:20], rtol=0, atol=1e-4)
    torch.testing.assert_close(tail, full[20:], rtol=0, atol=1e-4)
    torch.testing.assert_close(again, full[27:], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="minus the positions"):
        cache.crop(3)


def test_lean_forward_refuses_models_it_does_not_write_out(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    source = render_engine(EngineFeatures(kv_cache="static", forward="lean"))
    namespace: dict = {"__name__": "lean_engine_refuse"}
    sys.modules["lean_engine_refuse"] = type(sys)("lean_engine_refuse")
    exec(compile(source, "engine.py", "exec"), namespace)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.hidden_act = "gelu"
    with pytest.raises(NotImplementedError, match=r"hidden_act 'gelu'.*forward='transformers'"):
        namespace["LeanLlama"](model)


def test_bf16_engine_runs(tmp_path, tiny_model_dir, reference, record_property):
    """bf16 weights run; token equality is not asserted (on CPU it diverges from fp32)."""
    _, outputs = reference
    prompts = list(outputs)
    engine = render(tmp_path, tiny_model_dir, dtype="bfloat16", verify_block=16, realign=True)
    requests = [Request(f"r{i}", p, MAX_NEW_TOKENS, (), None) for i, p in enumerate(prompts)]
    tokens, _ = drive(engine, requests)
    assert all(len(t) == MAX_NEW_TOKENS for t in tokens.values())
    same = sum(tokens[f"r{i}"] == outputs[p].tokens for i, p in enumerate(prompts))
    first = [
        next(
            (
                j
                for j, (a, b) in enumerate(zip(tokens[f"r{i}"], outputs[p].tokens, strict=True))
                if a != b
            ),
            -1,
        )
        for i, p in enumerate(prompts)
    ]
    record_property("bf16_identical_requests", f"{same}/{len(prompts)}")
    record_property("bf16_first_divergence", first)


def test_rendered_variants_pass_ruff(tmp_path):
    """Every combination of features renders code that ruff formats and lints clean."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    variants = [
        dict(kv_cache=kv, verify_block=block, realign=realign, compile=mode, **extra)
        for kv in ("dynamic", "static")
        for block, realign in ((0, False), (8, False), (16, True))
        for mode in ("none", "default", "freezing")
        for extra in ({}, {"lean_logits": True, "prefill_chunk": 64, "threads": 1})
        if mode == "none" or kv == "static"
    ]
    variants += [
        dict(kv_cache="static", forward="lean", verify_block=block, realign=realign, **extra)
        for block, realign in ((0, False), (8, False), (16, True))
        for extra in ({}, {"prefill_chunk": 64, "threads": 1}, {"matmul": "openblas"})
    ]
    variants.append({"dtype": "bfloat16", "verify_block": 4, "realign": True, "anchor": 2})
    for i, features in enumerate(variants):
        write_engine(tmp_path / f"v{i}", EngineFeatures(**features))
    config = ["--config", str(ROOT / "pyproject.toml")]
    fmt = subprocess.run([ruff, "format", "--check", *config, str(tmp_path)], capture_output=True)
    lint = subprocess.run([ruff, "check", *config, str(tmp_path)], capture_output=True)
    assert fmt.returncode == 0, fmt.stdout.decode() + fmt.stderr.decode()
    assert lint.returncode == 0, lint.stdout.decode()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "freezing"])
def test_compiled_engine_gives_the_reference_tokens(tmp_path, tiny_model_dir, reference, mode):
    """torch.compile'd decode/verify forwards: exact, and compiled at load (about a minute here)."""
    _, outputs = reference
    prompts = list(outputs)
    engine = render(
        tmp_path, tiny_model_dir, kv_cache="static", verify_block=16, realign=True, compile=mode
    )
    rng = random.Random(5)
    for kind in ("none", "edited", "exact"):
        requests = [
            Request(f"r{i}", p, MAX_NEW_TOKENS, (), predictions(kind, outputs[p].tokens, rng))
            for i, p in enumerate(prompts)
        ]
        tokens, _ = drive(engine, requests)
        assert_reference_tokens(outputs, prompts, tokens)

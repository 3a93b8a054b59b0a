"""Profiling a candidate in its worker, and the Evaluator's profile-based hints.

The starter is profiled for real at the tiny scale; the summary math and the hints are checked on
synthetic spans and profiles with known numbers, each hint in both directions.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from agents.evaluator import Evaluator, derive_hints, profile_hints
from agents.profiler import ProfileError, profile_candidate
from agents.pytest_runs import ScenarioRun
from pytest_vibeserve.contract import EngineSpec, Request
from pytest_vibeserve.profiling import ENGINE_CALL, EngineProfile, OpEvent, summarize_events
from pytest_vibeserve.runner import EngineFailure, EngineProcess, Limits

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "predicted_outputs"
CRASH = ROOT / "tests" / "engines" / "crash"
FAST = Limits(load_timeout_s=60, step_timeout_s=10, memory_bytes=4 << 30)
VOCAB = 1000

# One forward per step: a norm-like elementwise op, a concat, and a [1, 16] x [16, VOCAB] LM head.
TORCH_ENGINE = """
import torch
from pytest_vibeserve.contract import Event

class Engine:
    def __init__(self, spec):
        self.queue, self.forwards = [], 0
        self.head = torch.randn(16, {vocab})
    def add_request(self, request):
        self.queue.append([request, 0])
    def step(self):
        self.forwards += 1
        request, done = self.queue[0]
        x = torch.cat([torch.ones(1, 8), torch.ones(1, 8)], dim=1) * 2.0
        token = int((x @ self.head).argmax())
        self.queue[0][1] += 1
        finished = done + 1 >= request.max_new_tokens
        if finished:
            self.queue.pop(0)
        return [Event(request.request_id, [token], finished)]
    def has_unfinished_requests(self):
        return bool(self.queue)
    def counters(self):
        return {{"model_forward_calls": self.forwards}}

def create_engine(spec):
    return Engine(spec)
"""


@pytest.fixture
def torch_engine(tmp_path) -> Path:
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    (engine_dir / "engine.py").write_text(textwrap.dedent(TORCH_ENGINE.format(vocab=VOCAB)))
    return engine_dir


# -- summarizing spans -------------------------------------------------------------------------
def test_self_time_nesting_and_shares_from_known_spans():
    events = [
        OpEvent(ENGINE_CALL, 0, 1000),
        OpEvent("aten::linear", 100, 500, shapes=[[1, 8], [VOCAB, 8]]),
        OpEvent("aten::t", 110, 10),
        OpEvent("aten::addmm", 150, 400, shapes=[[VOCAB], [1, 8], [8, VOCAB]]),
        OpEvent("aten::cat", 700, 120),
        OpEvent("aten::mul", 2000, 50),  # outside every engine call: not the engine's time
        OpEvent(ENGINE_CALL, 3000, 200, thread=2),
        OpEvent("aten::_scaled_dot_product_flash_attention_for_cpu", 3050, 100, thread=2),
    ]
    summary = summarize_events(events, vocab_size=VOCAB, forwards=2)
    ops = {op["name"]: op for op in summary["top_ops"]}
    assert summary["engine_calls"] == 2 and summary["total_ms"] == pytest.approx(1200e-6)
    assert summary["aten_ops"] == 5 and summary["top_level_ops"] == 3
    assert ops["aten::linear"]["self_ms"] == pytest.approx(90e-6)  # 500 - 10 (t) - 400 (addmm)
    assert ops["aten::linear"]["total_ms"] == pytest.approx(500e-6)
    assert "aten::mul" not in ops
    assert summary["matmul_ms"] == pytest.approx((90 + 400 + 100) * 1e-6)
    assert summary["lm_head_ms"] == pytest.approx((90 + 400) * 1e-6)
    assert summary["attention_ms"] == pytest.approx(100e-6)
    assert summary["op_ms"] == pytest.approx((90 + 10 + 400 + 120 + 100) * 1e-6)
    assert [op["name"] for op in summary["top_ops"]][:2] == ["aten::addmm", "aten::cat"]
    profile = EngineProfile.from_dict(summary)
    assert profile.share(profile.matmul_ms) == pytest.approx(590 / 1200)
    assert EngineProfile.from_dict(profile.to_dict()) == profile


def test_an_unknown_vocabulary_gives_no_lm_head_and_attention_matmuls_are_found_by_shape():
    events = [
        OpEvent(ENGINE_CALL, 0, 100),
        OpEvent("aten::matmul", 10, 50, shapes=[[1, 8, 5, 64], [1, 8, 64, 5]]),
    ]
    summary = summarize_events(events)
    assert summary["lm_head_ms"] is None
    assert summary["attention_ms"] == summary["matmul_ms"] == pytest.approx(50e-6)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("aten_ops", -1, "not a count"),
        ("total_ms", "fast", "not a duration"),
        ("forwards", True, "not a count"),
        ("top_ops", [{"name": "x", "calls": 1, "self_ms": 1, "total_ms": 1}] * 51, "at most"),
        ("top_ops", [{"name": 3, "calls": 1, "self_ms": 1, "total_ms": 1}], "not a string"),
    ],
)
def test_a_malformed_profile_from_the_worker_is_refused(field, value, message):
    summary = summarize_events([OpEvent(ENGINE_CALL, 0, 100)], forwards=1)
    with pytest.raises(ValueError, match=message):
        EngineProfile.from_dict({**summary, field: value})
    del summary["op_ms"]
    with pytest.raises(ValueError, match="lacks field 'op_ms'"):
        EngineProfile.from_dict(summary)


# -- the worker's profiler ---------------------------------------------------------------------
def test_the_worker_profiles_torch_ops_and_finds_the_lm_head(torch_engine):
    request = Request("r", (1, 2, 3), 20)
    with EngineProcess(torch_engine, EngineSpec("unused"), limits=FAST) as engine:
        result, profile = engine.profile([request], vocab_size=VOCAB)
        plain = engine.run([Request("again", (1,), 3)])  # the profiler is off again
    assert result.outputs["r"] and len(plain.outputs["again"]) == 3
    assert profile.tool == "torch" and profile.forwards == 20 and profile.engine_calls == 21
    names = [op.name for op in profile.top_ops]
    assert {"aten::cat", "aten::mul", "aten::mm"} <= set(names)
    assert profile.aten_ops >= 20 * 3 and profile.top_level_ops <= profile.aten_ops
    assert 0 < profile.lm_head_ms <= profile.matmul_ms < profile.total_ms
    assert 0 < profile.op_ms <= profile.total_ms


def test_the_cprofile_fallback_profiles_python_calls(tmp_path, torch_engine):
    with EngineProcess(torch_engine, EngineSpec("unused"), limits=FAST) as engine:
        _, profile = engine.profile([Request("r", (1,), 5)], tool="cprofile", top=50)
    assert profile.tool == "cprofile" and profile.forwards == 5 and profile.lm_head_ms is None
    assert profile.top_ops and profile.total_ms > 0
    assert any("step" in op.name for op in profile.top_ops)


def test_an_unknown_profile_tool_is_a_crash_with_the_reason(torch_engine):
    with EngineProcess(torch_engine, EngineSpec("unused"), limits=FAST) as engine:
        with pytest.raises(EngineFailure, match="profile tool 'perf' is unknown"):
            engine.profile([Request("r", (1,), 2)], tool="perf")


# -- profiling a candidate on the scenario's workload -------------------------------------------
def test_the_starter_profile_at_tiny_scale_has_real_numbers(vibeserve_cache):
    profile = profile_candidate(
        SCENARIO / "starter", SCENARIO, "tiny", cache_dir=vibeserve_cache, max_new_tokens=16
    )
    data = profile.to_dict()
    assert data["tool"] == "torch" and data["requests"] == 1
    forwards = data["forwards"]
    assert 0 < forwards == data["new_tokens"] <= 16  # the starter: one forward per token
    assert data["aten_ops"] > 0 and data["aten_ops_per_forward"] == data["aten_ops"] / forwards
    assert 0 < data["matmul_share"] < 1 and 0 < data["python_share"] < 1
    assert 0 < data["lm_head_share"] < data["matmul_share"] and data["vocab_size"] == 258
    self_ms = [op["self_ms"] for op in data["top_ops"]]
    assert self_ms and self_ms == sorted(self_ms, reverse=True)
    assert json.loads(json.dumps(data)) == data


def test_a_crashing_engine_gives_no_profile_and_a_note(vibeserve_cache, tmp_path):
    evaluator = Evaluator(ScenarioRun(SCENARIO, "tiny", cache_dir=vibeserve_cache))
    profile, problem = evaluator.profile(CRASH, work_dir=tmp_path / "round")
    assert profile is None and "engine crash" in problem and "SIGSEGV" in problem
    assert json.loads((tmp_path / "round" / "profile.json").read_text())["problem"] == problem


def test_an_unknown_scale_is_a_profile_error_naming_it(tmp_path):
    with pytest.raises(ProfileError, match="no scale 'huge'"):
        profile_candidate(SCENARIO / "starter", SCENARIO, "huge", cache_dir=tmp_path)


# -- hints from a profile ----------------------------------------------------------------------
def profile(**overrides) -> dict:
    """A profile in which no hint fires: few ops, a small LM head and attention, matmuls 60%."""
    base = {
        "ms_per_forward": 40.0,
        "aten_ops_per_forward": 200.0,
        "matmul_share": 0.6,
        "python_share": 0.1,
        "lm_head_share": 0.1,
        "attention_share": 0.1,
        "vocab_size": 49152,
        "top_ops": [
            {"name": "aten::mm", "share": 0.5},
            {"name": "aten::copy_", "share": 0.12},
            {"name": "aten::_softmax", "share": 0.05},
        ],
    }
    return {**base, **overrides}


def keywords(data: dict) -> list[str]:
    return [hint.keyword for hint in profile_hints(data)]


def test_a_balanced_profile_gives_no_hint():
    assert keywords(profile()) == []


def test_framework_overhead_needs_many_ops_and_few_matmuls():
    [hint] = profile_hints(profile(aten_ops_per_forward=412.0, matmul_share=0.31))
    assert hint.keyword == "framework-overhead"
    assert hint.estimated_gain == pytest.approx(1 / 0.36)
    assert "412 aten ops per forward; matmuls 31% of 40.0 ms/forward" in hint.evidence
    assert "aten::copy_ 12%" in hint.evidence and "aten::mm" not in hint.evidence
    assert (
        profile_hints(profile(aten_ops_per_forward=412.0, matmul_share=0.0))[0].estimated_gain == 4
    )
    [hint] = profile_hints(profile(aten_ops_per_forward=5951.0, matmul_share=0.63))
    assert hint.keyword == "framework-overhead" and hint.estimated_gain == pytest.approx(1 / 0.68)
    assert keywords(profile(aten_ops_per_forward=250.0, matmul_share=0.31)) == []
    assert keywords(profile(aten_ops_per_forward=412.0, matmul_share=0.75)) == ["matmul-bound"]


def test_lm_head_when_it_is_over_a_fifth_of_the_time():
    [hint] = profile_hints(profile(lm_head_share=0.3))
    assert hint.keyword == "lm-head" and hint.estimated_gain == pytest.approx(1 / 0.85)
    assert "vocab 49152" in hint.evidence and "30% of 40.0 ms/forward" in hint.evidence
    assert keywords(profile(lm_head_share=0.15)) == keywords(profile(lm_head_share=None)) == []


def test_attention_when_it_dominates():
    [hint] = profile_hints(profile(attention_share=0.45))
    assert hint.keyword == "attention" and "45%" in hint.evidence
    assert "aten::_softmax" in hint.evidence
    assert keywords(profile(attention_share=0.25)) == []


def test_matmul_bound_is_a_small_gain():
    [hint] = profile_hints(profile(matmul_share=0.8))
    assert hint.keyword == "matmul-bound" and hint.estimated_gain == 1.2
    assert keywords(profile(matmul_share=0.65)) == []


def test_profile_hints_join_and_rank_with_the_report_hints():
    row = {"engine": "candidate", "tokens_per_forward": 1.0, "roofline_pct": 90.0}
    row |= {"ttft_p50_ms": 100.0, "e2e_p50_ms": 9000.0, "tpot_p50_ms": 70.0}
    report = {
        "performance": {"table": [row], "workload_stats": {"accepted_per_16_median": 10.4}},
        "roofline": {"roofline_tok_per_s": 57.0},
    }
    without = [hint.keyword for hint in derive_hints(report)]
    assert without == ["prediction-unused", "decode-bound"]
    hints = derive_hints(report, profile(aten_ops_per_forward=900.0, matmul_share=0.3))
    assert [hint.keyword for hint in hints] == [
        "prediction-unused",
        "framework-overhead",
        "decode-bound",
    ]

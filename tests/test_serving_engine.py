"""The standard scenario's engine renderer: every feature renders code that compiles, wrong
combinations are refused by name, and every batching variant gives the reference's tokens for
requests arriving over time (the tiny model)."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from agents.recipes.engines import load_features, write_engine
from agents.recipes.greedy_engine import FeatureError
from agents.recipes.serving_engine import ServingFeatures, render_engine
from pytest_vibeserve.contract import EngineSpec, Request
from pytest_vibeserve.reference import Reference
from pytest_vibeserve.runner import EngineProcess
from reference_impls.models import materialize

LEAN = [
    ServingFeatures(forward="lean", max_batch=batch, matmul=matmul, fused=fused, prefill_budget=b)
    for batch, matmul, fused, b in itertools.product(
        (1, 4, 16), ("torch", "numpy"), (False, True), (0, 16)
    )
]


@pytest.mark.parametrize("features", [ServingFeatures(), *LEAN], ids=lambda f: f.describe())
def test_every_feature_renders_code_that_compiles(features):
    compile(render_engine(features), "engine.py", "exec")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"max_batch": 4}, "max_batch > 1 need forward='lean'"),
        ({"matmul": "numpy"}, "matmul='numpy' need forward='lean'"),
        ({"forward": "vllm"}, "valid values: transformers, lean"),
        ({"max_batch": 0}, "max_batch"),
        ({"family": "hybrid"}, "this renderer draws 'serving'"),
    ],
)
def test_invalid_features_name_the_fix(changes, named):
    with pytest.raises(FeatureError, match=named):
        dataclasses.replace(ServingFeatures(), **changes)


def test_the_starter_records_the_serving_family():
    from pathlib import Path

    starter = Path(__file__).resolve().parent.parent / "scenarios" / "standard" / "starter"
    assert load_features(starter) == ServingFeatures()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, vibeserve_cache):
    model_dir = materialize("tiny", vibeserve_cache)
    rng = random.Random(0)
    requests = [
        Request(
            f"r{i}",
            tuple([1] + [rng.randrange(3, 200) for _ in range(rng.randint(5, 60))]),
            rng.randint(4, 40),
            (2,),
            top_logprobs=3 if i == 0 else 0,
        )
        for i in range(10)
    ]
    reference = Reference(model_dir, vibeserve_cache, device="cpu", dtype="float32", threads=1)
    return model_dir, requests, reference.generate(requests)


@pytest.mark.parametrize(
    "features",
    [
        ServingFeatures(),
        ServingFeatures(forward="lean", max_batch=4, prefill_budget=16),
        ServingFeatures(forward="lean", max_batch=16, matmul="numpy", fused=True, threads=1),
    ],
    ids=["starter-like", "batch4-chunked", "batch16-numpy-fused"],
)
def test_batching_variants_give_the_reference_tokens(features, tiny, tmp_path):
    model_dir, requests, expected = tiny
    write_engine(tmp_path, features)
    with EngineProcess(tmp_path, EngineSpec(str(model_dir))) as engine:
        result = engine.run(requests, arrival_offsets_s=[0.02 * i for i in range(10)])
    for request in requests:
        assert result.records[request.request_id].token_ids == expected[request.request_id].tokens
    top = result.records["r0"].logprobs[0]
    for token, value in top.items():
        assert value == pytest.approx(expected["r0"].top_logprobs[0][token], abs=1e-4)
    if features.max_batch > 1:  # batched: fewer forwards than tokens
        assert result.forward_calls < sum(len(r.token_ids) for r in result.records.values())

"""Profiles a candidate engine on its scenario's public workload: where a forward's time goes.

The engine runs in its own worker process, as in every pytest run, and only a JSON summary of the
profile comes back (``EngineProcess.profile``). One request cut to a few dozen tokens, after the
workload's own warm-up, keeps it to seconds: the Evaluator profiles every round.
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_vibeserve.contract import EngineSpec
from pytest_vibeserve.profiling import EngineProfile
from pytest_vibeserve.reference import (
    DEFAULT_BATCH,
    Reference,
    ReferenceError,
    materialize_model,
)
from pytest_vibeserve.runner import EngineFailure, EngineProcess, Limits
from pytest_vibeserve.scenario import ScaleSpec, ScenarioError, load_scenario
from pytest_vibeserve.workload import Workload

PROBLEM_CHARS = 2000


class ProfileError(RuntimeError):
    """The candidate could not be profiled; the message says why."""


@dataclass(frozen=True, slots=True)
class Profile:
    scale: str
    requests: int
    prompt_tokens: int
    new_tokens: int  # tokens the engine emitted while profiled
    vocab_size: int | None
    wall_s: float  # workload, engine load, warm-up, the profiled run and its summary
    engine: EngineProfile

    @property
    def ms_per_forward(self) -> float:
        return self.engine.total_ms / self.engine.per_forward

    @property
    def aten_ops_per_forward(self) -> float:
        return self.engine.aten_ops / self.engine.per_forward

    @property
    def python_share(self) -> float | None:
        return self.engine.share(max(self.engine.total_ms - self.engine.op_ms, 0.0))

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON: the raw numbers, then the per-forward numbers and shares hints read."""
        engine = self.engine
        return {
            "scale": self.scale,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "vocab_size": self.vocab_size,
            "wall_s": self.wall_s,
            **engine.to_dict(),
            "ms_per_forward": self.ms_per_forward,
            "aten_ops_per_forward": self.aten_ops_per_forward,
            "top_level_ops_per_forward": engine.top_level_ops / engine.per_forward,
            "matmul_share": engine.share(engine.matmul_ms),
            "attention_share": engine.share(engine.attention_ms),
            "lm_head_share": engine.share(engine.lm_head_ms),
            "python_share": self.python_share,
            "top_ops": [
                {**dataclasses.asdict(op), "share": engine.share(op.self_ms)}
                for op in engine.top_ops
            ],
        }


def vocab_size(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    size = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    return size if isinstance(size, int) else None


def public_workload(
    scale: ScaleSpec,
    model_dir: Path,
    cache_dir: Path,
    *,
    threads: int,
    seed: int,
    reference_batch: int = DEFAULT_BATCH,
) -> Workload:
    """The workload the scenario's performance tests build for ``seed``.

    Its reference outputs come from the cache that the Evaluator's performance run just filled
    (``reference_batch`` is part of that cache's key: the scenario's ``[correctness]`` value).
    """
    kind = scale.workload.get("kind")
    builders = {"code_edit": "predicted", "shared_prefix": "shared_prefix", "serving": "serving"}
    if kind not in builders:
        raise ProfileError(
            f"no public workload for [workload] kind = {kind!r}; teach "
            "agents/profiler.py:public_workload to build it as the scenario's conftest.py does"
        )
    from importlib import import_module

    from transformers import AutoTokenizer

    build_workload = import_module(f"pytest_vibeserve.workloads.{builders[kind]}").build_workload
    reference = Reference(
        model_dir,
        cache_dir,
        device=scale.device,
        dtype=scale.dtype,
        threads=threads,
        batch=reference_batch,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return build_workload(scale.workload, tokenizer, reference, seed)


def profile_candidate(
    engine_dir: Path,
    scenario_dir: Path,
    scale: str,
    *,
    cache_dir: Path,
    threads: int | None = None,
    seed: int = 0,
    max_requests: int = 1,
    max_new_tokens: int = 32,
    timeout_s: float = 120.0,
    model_path: Path | None = None,
    tool: str = "auto",
) -> Profile:
    """Profile the first ``max_requests`` public requests, cut to ``max_new_tokens`` tokens.

    ``timeout_s`` bounds the engine's load and every silence of the run. Raises ProfileError.
    """
    started = time.perf_counter()
    try:
        scenario = load_scenario(Path(scenario_dir))
        spec = scenario.scale(scale)
        model = "path" if model_path is not None else spec.model
        model_dir = materialize_model(model, Path(cache_dir), model_path)
        vocab = vocab_size(model_dir)
    except (ScenarioError, ReferenceError, OSError, ValueError) as error:
        raise ProfileError(f"could not find the model to profile with: {error}") from None
    threads = threads or spec.threads
    engine_spec = EngineSpec(
        str(model_dir),
        device=spec.device,
        dtype=spec.dtype,
        threads=threads,
        options=dict(scenario.engine_options),
    )
    limits = Limits(load_timeout_s=timeout_s, step_timeout_s=timeout_s)
    # The workload is built while the worker loads the engine: both are seconds of imports.
    with ThreadPoolExecutor(max_workers=1) as pool:
        building = pool.submit(
            public_workload,
            spec,
            model_dir,
            Path(cache_dir),
            threads=threads,
            seed=seed,
            reference_batch=int(scenario.correctness.get("reference_batch", DEFAULT_BATCH)),
        )
        try:
            with EngineProcess(engine_dir, engine_spec, name="profiled", limits=limits) as engine:
                workload = _built(building)
                requests = [
                    dataclasses.replace(r, max_new_tokens=min(r.max_new_tokens, max_new_tokens))
                    for r in workload.requests[:max_requests]
                ]
                if not requests:
                    raise ProfileError(f"workload {workload.name!r} has no requests to profile")
                if workload.warmup:
                    engine.run(workload.warmup, concurrency=workload.concurrency)
                result, summary = engine.profile(
                    requests, concurrency=workload.concurrency, tool=tool, vocab_size=vocab
                )
        except EngineFailure as error:
            message = str(error)[:PROBLEM_CHARS]
            raise ProfileError(f"profiling {engine_dir} failed: {message}") from None
    return Profile(
        scale=scale,
        requests=len(requests),
        prompt_tokens=sum(len(request.prompt_token_ids) for request in requests),
        new_tokens=sum(len(tokens) for tokens in result.outputs.values()),
        vocab_size=vocab,
        wall_s=time.perf_counter() - started,
        engine=summary,
    )


def _built(building: Future[Workload]) -> Workload:
    try:
        return building.result()
    except (ReferenceError, OSError, ValueError) as error:
        raise ProfileError(f"could not build the public workload to profile on: {error}") from None

"""One run as the JSON ``vllm bench serve --save-result`` writes, so its plotting scripts read ours.

Field names and units follow vLLM's: seconds for ``duration``, ``ttfts`` and ``itls``; ms for the
``mean_/median_/std_/pNN_<metric>_ms`` summaries of ttft, tpot, itl and e2el; ``request_goodput``
is null without SLOs. ``errors`` holds one string per request ("" when it finished).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_vibeserve.metrics import Slo, compute_metrics, percentile
from pytest_vibeserve.runner import RunResult
from pytest_vibeserve.workload import Workload

PERCENTILES = (50, 90, 99)


def _summary(name: str, values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    out = {
        f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
        f"median_{name}_ms": statistics.median(ms) if ms else 0.0,
        f"std_{name}_ms": statistics.pstdev(ms) if ms else 0.0,
    }
    for q in PERCENTILES:
        out[f"p{q}_{name}_ms"] = percentile(ms, q) if ms else 0.0
    return out


def bench_result(
    run: RunResult, workload: Workload, *, backend: str, model_id: str, slo: Slo | None
) -> dict[str, Any]:
    metrics = compute_metrics(run, slo)
    ordered = [run.records[r.request_id] for r in workload.requests if r.request_id in run.records]
    ttfts, tpots, itls, e2els = [], [], [], []
    for record in ordered:
        times = record.token_times
        if times:
            ttfts.append(times[0] - record.sent_at)
        if len(times) > 1:
            tpots.append((times[-1] - times[0]) / (len(times) - 1))
        itls.append([b - a for a, b in itertools.pairwise(times)])
        end = record.finished_at if record.finished_at is not None else run.ended_at
        e2els.append(end - record.sent_at)
    completed = sum(1 for r in ordered if r.finished_at is not None)
    rate = workload.stats.get("request_rate", "inf")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        "backend": backend,
        "model_id": model_id,
        "tokenizer_id": model_id,
        "num_prompts": len(workload.requests),
        # a number, or "inf" as vLLM writes it (workload stats hold the rate formatted: "2")
        "request_rate": "inf" if str(rate) == "inf" else float(rate),
        "burstiness": float(workload.stats.get("burstiness", 1.0)),
        "max_concurrency": workload.concurrency,
        "duration": run.wall_s,
        "completed": completed,
        "failed": len(ordered) - completed,
        "total_input_tokens": metrics.input_tokens,
        "total_output_tokens": metrics.output_tokens,
        "request_throughput": completed / run.wall_s if run.wall_s > 0 else 0.0,
        "request_goodput": None if slo is None else metrics.goodput_req_per_s,
        "output_throughput": metrics.output_tok_per_s,
        "total_token_throughput": (metrics.input_tokens + metrics.output_tokens)
        / max(run.wall_s, 1e-9),
        "input_lens": [r.prompt_len for r in ordered],
        "output_lens": [len(r.token_ids) for r in ordered],
        "ttfts": [r.token_times[0] - r.sent_at if r.token_times else 0.0 for r in ordered],
        "itls": itls,
        "generated_texts": ["" for _ in ordered],
        "errors": ["" if r.finished_at is not None else "unfinished" for r in ordered],
        "goodput": None if slo is None else slo.to_dict(),
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("e2el", e2els)):
        result |= _summary(name, values)
    result |= _summary("itl", list(itertools.chain.from_iterable(itls)))
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}


def write_bench_result(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(path)

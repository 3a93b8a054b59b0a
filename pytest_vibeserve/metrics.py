"""Streaming metrics of one run, computed from the parent's timestamps.

Definitions (vLLM's benchmark conventions): TTFT is request sent -> first token arrived; TPOT is
(last token - first token) / (output tokens - 1) per request; ITL is each gap between consecutive
token arrivals (tokens arriving in one batch share a time, so a speculative engine shows zero gaps
inside a verified block); end-to-end latency is sent -> finished. Output tok/s is all output tokens
over the run's wall time. Times are seconds here; reports convert to ms where the unit says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from pytest_vibeserve.runner import RunResult

PERCENTILES = (50, 90, 99)
# name -> (unit, higher_is_better): the metrics a scenario may choose as its headline
METRICS: dict[str, tuple[str, bool]] = {
    "output_tok_per_s": ("tok/s", True),
    "request_per_s": ("req/s", True),
    "ttft_p50_ms": ("ms", False),
    "ttft_p99_ms": ("ms", False),
    "tpot_p50_ms": ("ms", False),
    "tpot_p99_ms": ("ms", False),
    "itl_p50_ms": ("ms", False),
    "e2e_p50_ms": ("ms", False),
    "e2e_p90_ms": ("ms", False),
    "e2e_p99_ms": ("ms", False),
    "peak_rss_mib": ("MiB", False),
    "tokens_per_forward": ("tok/forward", True),
    "prefix_hit_fraction": ("fraction", True),
}

# The engine counter (optional) of prompt tokens served from a prefix cache instead of computed,
# as vLLM's prefix-cache hit metrics count them.
PREFIX_HIT_COUNTER = "prefix_cache_hit_tokens"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass(frozen=True, slots=True)
class RunMetrics:
    requests: int
    output_tokens: int
    wall_s: float
    output_tok_per_s: float
    request_per_s: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p90_ms: float
    tpot_p99_ms: float
    itl_p50_ms: float
    itl_p90_ms: float
    itl_p99_ms: float
    e2e_p50_ms: float
    e2e_p90_ms: float
    e2e_p99_ms: float
    peak_rss_mib: float
    tokens_per_forward: float  # output tokens per model forward: > 1 when drafts are accepted
    # prompt tokens the engine served from its prefix cache / prompt tokens sent (NaN: the engine
    # does not report PREFIX_HIT_COUNTER); engine-reported, so it informs hints, never verdicts
    prefix_hit_fraction: float = math.nan

    def get(self, name: str) -> float:
        if name not in METRICS:
            raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compute_metrics(run: RunResult) -> RunMetrics:
    ttft, tpot, itl, e2e = [], [], [], []
    output_tokens = 0
    for record in run.records.values():
        times = record.token_times
        output_tokens += len(record.token_ids)
        if times:
            ttft.append(times[0] - record.sent_at)
            itl.extend(b - a for a, b in itertools.pairwise(times))
            if len(times) > 1:
                tpot.append((times[-1] - times[0]) / (len(times) - 1))
        end = record.finished_at if record.finished_at is not None else run.ended_at
        e2e.append(end - record.sent_at)
    wall = max(run.wall_s, 1e-9)

    def pct_ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1000

    return RunMetrics(
        requests=len(run.records),
        output_tokens=output_tokens,
        wall_s=run.wall_s,
        output_tok_per_s=output_tokens / wall,
        request_per_s=len(run.records) / wall,
        ttft_p50_ms=pct_ms(ttft, 50),
        ttft_p90_ms=pct_ms(ttft, 90),
        ttft_p99_ms=pct_ms(ttft, 99),
        tpot_p50_ms=pct_ms(tpot, 50),
        tpot_p90_ms=pct_ms(tpot, 90),
        tpot_p99_ms=pct_ms(tpot, 99),
        itl_p50_ms=pct_ms(itl, 50),
        itl_p90_ms=pct_ms(itl, 90),
        itl_p99_ms=pct_ms(itl, 99),
        e2e_p50_ms=pct_ms(e2e, 50),
        e2e_p90_ms=pct_ms(e2e, 90),
        e2e_p99_ms=pct_ms(e2e, 99),
        peak_rss_mib=run.peak_rss_bytes / 2**20,
        tokens_per_forward=output_tokens / run.forward_calls if run.forward_calls else math.nan,
        prefix_hit_fraction=_prefix_hit_fraction(run),
    )


def _prefix_hit_fraction(run: RunResult) -> float:
    hits = run.counter_delta(PREFIX_HIT_COUNTER)
    prompt_tokens = sum(record.prompt_len for record in run.records.values())
    if hits is None or not prompt_tokens:
        return math.nan
    return hits / prompt_tokens

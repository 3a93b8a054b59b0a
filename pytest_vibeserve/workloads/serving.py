"""Serving load in the style of ``vllm bench serve``: seeded request sets, arrival processes, SLOs.

A request set (``ServingShape``) is ``requests`` prompts of random token ids whose lengths are
uniform in ``input_len * (1 ± range_ratio)`` (vLLM's ``random`` dataset), each asking for exactly
``output_len`` tokens (``ignore_eos``: no stop token, so every engine produces the same amount of
work). Arrivals, chosen by ``request_rate`` and ``burstiness`` as ``vllm bench serve`` does:
- ``request_rate = inf`` (or ``arrival = "burst"``): every request at time zero;
- otherwise gaps drawn from a gamma distribution with shape ``burstiness`` and mean
  ``1 / request_rate``: ``burstiness = 1`` is a Poisson process, < 1 burstier, > 1 more regular.
``max_concurrency`` caps requests in flight (the client waits for one to finish before sending
the next, as vLLM's semaphore does). The parent process sends and stamps everything.

``request_rates`` (a list, ``inf`` allowed) names a rate sweep: one workload per rate, same
prompts. Goodput counts requests that meet every SLO (``Slo``) per second of the run.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_vibeserve.contract import Request
from pytest_vibeserve.reference import Reference
from pytest_vibeserve.workload import Workload
from pytest_vibeserve.workloads.shared_prefix import token_pool

ARRIVALS = ("burst", "poisson", "gamma")
WARMUP_TOKENS = 4


def _number(kind: type[int] | type[float], value: Any, key: str) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"serving workload: {key} = {value!r} must be {what}") from None


def _rate(value: Any, where: str) -> float:
    if isinstance(value, str) and value.strip().lower() in {"inf", "infinity"}:
        return math.inf
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where} = {value!r}: a number of requests per second, or 'inf'"
        ) from None
    if not rate > 0:
        raise ValueError(f"{where} = {value!r}: must be > 0 (use 'inf' for a burst)")
    return rate


@dataclass(frozen=True, slots=True)
class ServingShape:
    requests: int
    input_len: int  # mean prompt tokens, BOS included
    output_len: int  # every request generates exactly this many tokens
    range_ratio: float = 0.0  # prompt lengths uniform in input_len * (1 ± range_ratio)
    request_rate: float = math.inf  # requests per second; inf sends all at once
    burstiness: float = 1.0  # gamma shape of the inter-arrival gaps; 1 = Poisson
    max_concurrency: int | None = None  # requests in flight at most; None = no limit

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ServingShape:
        def need(key: str) -> int:
            if key not in params:
                raise ValueError(
                    f"serving workload needs {key!r} (set it under [workload] or [scales.*])"
                )
            return _number(int, params[key], key)

        arrival = str(params.get("arrival", "poisson"))
        if arrival not in ARRIVALS:
            raise ValueError(f"serving workload: arrival = {arrival!r}; use one of {ARRIVALS}")
        rate = _rate(params.get("request_rate", "inf"), "request_rate")
        burstiness = _number(float, params.get("burstiness", 1.0), "burstiness")
        if arrival == "burst":
            rate = math.inf
        elif arrival == "poisson" and burstiness != 1.0:
            raise ValueError(
                f"serving workload: arrival = 'poisson' with burstiness = {burstiness}; a Poisson "
                "process has burstiness 1 (use arrival = 'gamma' for another)"
            )
        limit = params.get("max_concurrency")
        shape = cls(
            requests=need("requests"),
            input_len=need("input_len"),
            output_len=need("output_len"),
            range_ratio=_number(float, params.get("range_ratio", 0.0), "range_ratio"),
            request_rate=rate,
            burstiness=burstiness,
            max_concurrency=None
            if limit in (None, 0, "none")
            else _number(int, limit, "max_concurrency"),
        )
        shape.validate()
        return shape

    @property
    def arrival(self) -> str:
        if math.isinf(self.request_rate):
            return "burst"
        return "poisson" if self.burstiness == 1.0 else "gamma"

    def validate(self) -> None:
        problems = []
        if self.requests < 1 or self.output_len < 1:
            problems.append("requests and output_len must be >= 1")
        if self.input_len < 2:
            problems.append(f"input_len = {self.input_len}: at least BOS and one token")
        if not 0 <= self.range_ratio < 1:
            problems.append(f"range_ratio = {self.range_ratio}: in [0, 1)")
        if not self.burstiness > 0:
            problems.append(f"burstiness = {self.burstiness}: must be > 0")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            problems.append(f"max_concurrency = {self.max_concurrency}: >= 1, or leave it out")
        if problems:
            raise ValueError("serving workload: " + "; ".join(problems))

    def describe(self) -> str:
        rate = "inf" if math.isinf(self.request_rate) else f"{self.request_rate:g}"
        limit = self.max_concurrency or "inf"
        return (
            f"{self.requests} x {self.input_len}±{self.range_ratio:g}/{self.output_len} tokens, "
            f"{self.arrival} at {rate} req/s, burstiness {self.burstiness:g}, "
            f"max concurrency {limit}"
        )


def arrival_offsets(
    count: int, request_rate: float, burstiness: float, rng: random.Random
) -> tuple[float, ...] | None:
    """Send times after the start (the first at 0), or None for a burst. Gamma gaps with shape
    ``burstiness`` and scale ``1 / (rate * burstiness)``: mean gap ``1 / rate`` whatever the
    burstiness, as ``vllm bench serve`` draws them."""
    if math.isinf(request_rate):
        return None
    scale = 1.0 / (request_rate * burstiness)
    gaps = [0.0] + [rng.gammavariate(burstiness, scale) for _ in range(count - 1)]
    return tuple(round(t, 6) for t in itertools.accumulate(gaps))


def prompt_lengths(shape: ServingShape, rng: random.Random) -> list[int]:
    # rounded first: 100 * (1 + 0.1) is 110.00000000000001 in floats, whose ceil is 111
    low = max(2, math.floor(round(shape.input_len * (1 - shape.range_ratio), 9)))
    high = max(low, math.ceil(round(shape.input_len * (1 + shape.range_ratio), 9)))
    return [rng.randint(low, high) for _ in range(shape.requests)]


def build_requests(
    shape: ServingShape, *, vocab_size: int, bos: int | None, special: Sequence[int], seed: int
) -> tuple[tuple[Request, ...], Request]:
    """The requests (no stop tokens: ``ignore_eos``) and a short warm-up request."""
    rng = random.Random(f"serving:{seed}")
    pool = token_pool(vocab_size, special)
    head = [] if bos is None else [bos]
    requests = tuple(
        Request(f"req-{i}", tuple(head + rng.choices(pool, k=n - len(head))), shape.output_len)
        for i, n in enumerate(prompt_lengths(shape, rng))
    )
    warmup = Request(
        "warmup-0", tuple(head + rng.choices(pool, k=15)), min(WARMUP_TOKENS, shape.output_len)
    )
    return requests, warmup


def build_serving_workload(
    params: dict[str, Any],
    tokenizer: Any,
    reference: Reference,
    seed: int,
    *,
    name: str | None = None,
) -> Workload:
    """The request set and its arrivals; the reference's outputs make the load run a check too."""
    shape = ServingShape.from_params(params)
    special = sorted({int(t) for t in tokenizer.all_special_ids})
    bos = tokenizer.bos_token_id
    requests, warmup = build_requests(
        shape,
        vocab_size=len(tokenizer),
        bos=None if bos is None else int(bos),
        special=special,
        seed=seed,
    )
    expected = reference.generate(requests)
    # arrivals have their own stream: changing the rate never changes the prompts
    offsets = arrival_offsets(
        shape.requests, shape.request_rate, shape.burstiness, random.Random(f"arrivals:{seed}")
    )
    rate = "inf" if math.isinf(shape.request_rate) else f"{shape.request_rate:g}"
    stats = {
        "requests": shape.requests,
        "input_len_mean": round(sum(len(r.prompt_token_ids) for r in requests) / len(requests), 1),
        "output_len": shape.output_len,
        "arrival": shape.arrival,
        "request_rate": rate,
        "burstiness": shape.burstiness,
        "max_concurrency": shape.max_concurrency or "inf",
        "concurrent_requests": shape.max_concurrency or shape.requests,
        "output_tokens_total": sum(len(expected[r.request_id].tokens) for r in requests),
    }
    return Workload(
        name=name or f"serving-{shape.arrival}-{rate}-seed{seed}",
        requests=requests,
        expected={r.request_id: expected[r.request_id] for r in requests},
        concurrency=shape.max_concurrency,
        arrival_offsets_s=offsets,
        warmup=(warmup,),
        stats=stats,
    )


def batch1_params(params: dict[str, Any]) -> dict[str, Any]:
    """The batch-1 run of a serving workload: ``batch1_requests`` one at a time, prompts of
    ``batch1_input_len`` tokens, ``batch1_output_len`` tokens each, sent back to back."""
    missing = [k for k in ("batch1_requests", "batch1_output_len") if k not in params]
    if missing:
        raise ValueError(f"a batch-1 run needs {missing} in the workload (scenario.toml)")
    return {
        "requests": params["batch1_requests"],
        "input_len": params.get("batch1_input_len", 32),
        "output_len": params["batch1_output_len"],
        "arrival": "burst",
        "max_concurrency": 1,
    }


def sweep_rates(params: dict[str, Any]) -> list[float]:
    """``request_rates`` of a workload, each > 0 or inf, in the order given."""
    raw = params.get("request_rates")
    if not raw:
        raise ValueError("a rate sweep needs request_rates = [...] in the workload (inf allowed)")
    return [_rate(value, "request_rates") for value in raw]


def at_rate(workload: Workload, request_rate: float, burstiness: float, seed: int) -> Workload:
    """The same requests arriving at another rate (one point of a sweep)."""
    offsets = arrival_offsets(
        len(workload.requests), request_rate, burstiness, random.Random(f"arrivals:{seed}")
    )
    rate = "inf" if math.isinf(request_rate) else f"{request_rate:g}"
    arrival = "burst" if math.isinf(request_rate) else "poisson" if burstiness == 1.0 else "gamma"
    stats = {**workload.stats, "request_rate": rate, "arrival": arrival, "burstiness": burstiness}
    return replace(workload, name=f"{workload.name}@{rate}", arrival_offsets_s=offsets, stats=stats)


build_workload = build_serving_workload  # the name every workload module exports

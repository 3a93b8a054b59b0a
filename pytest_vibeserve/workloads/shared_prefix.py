"""Workloads of scenario ``hybrid_ssm``: many requests sharing a long prefix, each its own tail.

Prompts are seeded random token ids (the hybrid reference models have random weights, so text
would mean nothing to them): ``BOS + prefix`` shared by a group of requests, then a distinct tail.
Outputs have a fixed length (no stop tokens), so aggregate output tok/s compares like with like.

Shapes, chosen by ``arrival`` in scenario.toml:
- ``burst``: every request sent at once (the paper's 20 requests over one 32k prefix).
- ``poisson``: requests arrive over time (seeded exponential gaps at ``request_rate`` per second)
  and ``prefixes`` > 1 interleaves groups, so a cache must key by the whole prefix and survive or
  evict correctly while other prefixes come and go.

The warm-up request has a prefix of its own: warming an engine up never caches a measured prefix.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_vibeserve.contract import Request
from pytest_vibeserve.reference import Reference
from pytest_vibeserve.workload import Workload

ARRIVALS = ("burst", "poisson")
WARMUP_PROMPT_TOKENS = 256
WARMUP_TOKENS = 4


@dataclass(frozen=True, slots=True)
class SharedPrefixShape:
    requests: int
    prefix_tokens: int  # BOS included
    tail_tokens: int
    max_new_tokens: int
    prefixes: int = 1  # distinct prefixes, interleaved over the requests
    arrival: str = "burst"
    request_rate: float = 0.0  # requests per second, for ``poisson``

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SharedPrefixShape:
        def need(key: str) -> int:
            if key not in params:
                raise ValueError(
                    f"shared_prefix workload needs {key!r} (set it under [workload] or [scales.*])"
                )
            return int(params[key])

        shape = cls(
            requests=need("requests"),
            prefix_tokens=need("prefix_tokens"),
            tail_tokens=need("tail_tokens"),
            max_new_tokens=need("max_new_tokens"),
            prefixes=int(params.get("prefixes", 1)),
            arrival=str(params.get("arrival", "burst")),
            request_rate=float(params.get("request_rate", 0.0)),
        )
        shape.validate()
        return shape

    def validate(self) -> None:
        problems = []
        if self.requests < 1 or self.max_new_tokens < 1:
            problems.append("requests and max_new_tokens must be >= 1")
        if self.prefix_tokens < 2:
            problems.append(f"prefix_tokens = {self.prefix_tokens}: at least BOS and one token")
        if self.tail_tokens < 1:
            problems.append(f"tail_tokens = {self.tail_tokens}: every request needs its own tail")
        if not 1 <= self.prefixes <= self.requests:
            problems.append(f"prefixes = {self.prefixes}: between 1 and requests")
        if self.arrival not in ARRIVALS:
            problems.append(f"arrival = {self.arrival!r}: use one of {ARRIVALS}")
        if self.arrival == "poisson" and self.request_rate <= 0:
            problems.append("arrival = 'poisson' needs request_rate > 0 (requests per second)")
        if problems:
            raise ValueError("shared_prefix workload: " + "; ".join(problems))


def token_pool(vocab_size: int, special: Sequence[int]) -> list[int]:
    """The ids prompts are drawn from: the whole vocabulary but its special tokens."""
    excluded = set(special)
    pool = [i for i in range(vocab_size) if i not in excluded]
    if len(pool) < 2:
        raise ValueError(f"vocabulary of {vocab_size} leaves no ids to draw prompts from")
    return pool


def build_requests(
    shape: SharedPrefixShape, *, vocab_size: int, bos: int, special: Sequence[int], seed: int
) -> tuple[tuple[Request, ...], tuple[float, ...] | None, Request]:
    """The requests, their arrival offsets (None for a burst) and a warm-up request."""
    # the shape is in the seed: the burst and mixed workloads of one seed share no prefix
    rng = random.Random(f"shared_prefix:{seed}:{shape.arrival}:{shape.prefixes}")
    pool = token_pool(vocab_size, special)

    def draw(n: int) -> list[int]:
        return rng.choices(pool, k=n)

    prefixes = [[bos, *draw(shape.prefix_tokens - 1)] for _ in range(shape.prefixes)]
    requests = tuple(
        Request(
            f"req-{i}-p{i % shape.prefixes}",
            tuple(prefixes[i % shape.prefixes] + draw(shape.tail_tokens)),
            shape.max_new_tokens,
        )
        for i in range(shape.requests)
    )
    offsets = None
    if shape.arrival == "poisson":
        gaps = [0.0] + [rng.expovariate(shape.request_rate) for _ in range(shape.requests - 1)]
        offsets = tuple(round(t, 6) for t in itertools.accumulate(gaps))
    # a short warm-up: it loads kernels and allocators, not the prefix (a full-length one cost
    # ~5 s per engine start at the cpu scale, where every measured run starts a fresh engine)
    warmup_len = min(shape.prefix_tokens + shape.tail_tokens, WARMUP_PROMPT_TOKENS)
    warmup_prompt = [bos, *draw(warmup_len - 1)]
    warmup = Request("warmup-0", tuple(warmup_prompt), min(WARMUP_TOKENS, shape.max_new_tokens))
    return requests, offsets, warmup


def build_workload(
    params: dict[str, Any],
    tokenizer: Any,
    reference: Reference,
    seed: int,
    *,
    name: str | None = None,
) -> Workload:
    shape = SharedPrefixShape.from_params(params)
    special = sorted({int(t) for t in tokenizer.all_special_ids})
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("shared_prefix workload: the tokenizer has no BOS token to start prompts")
    requests, offsets, warmup = build_requests(
        shape, vocab_size=len(tokenizer), bos=int(bos), special=special, seed=seed
    )
    expected = reference.generate(requests)
    stats = {
        "requests": shape.requests,
        "concurrent_requests": shape.requests,  # no concurrency limit: all may be in flight
        "prefixes": shape.prefixes,
        "prefix_tokens": shape.prefix_tokens,
        "tail_tokens": shape.tail_tokens,
        "output_tokens_total": sum(len(expected[r.request_id].tokens) for r in requests),
        "arrival": shape.arrival,
        "shared_prompt_fraction": round(
            shape.prefix_tokens / (shape.prefix_tokens + shape.tail_tokens), 3
        ),
    }
    return Workload(
        name=name or f"shared-prefix-{shape.arrival}-seed{seed}",
        requests=requests,
        expected={r.request_id: expected[r.request_id] for r in requests},
        concurrency=None,
        arrival_offsets_s=offsets,
        warmup=(warmup,),
        stats=stats,
    )


MIXED_DEFAULTS = {"requests": 6, "prefixes": 3, "request_rate": 1.0}


def mixed_params(params: dict[str, Any]) -> dict[str, Any]:
    """The scale's shape with requests over time and interleaved prefixes.

    ``mixed_requests``, ``mixed_prefixes`` and ``mixed_request_rate`` in the scale's workload
    override the defaults (6 requests, 3 prefixes in turn, 1 request/s): with three prefixes in
    turn each one comes back after two others, so an engine that keeps two is made to evict.
    """
    mixed = {**params, "arrival": "poisson"}
    for key, default in MIXED_DEFAULTS.items():
        mixed[key] = params.get(f"mixed_{key}", default)
    return mixed


def near_miss_workload(base: Workload, tokenizer: Any, reference: Reference, seed: int) -> Workload:
    """One request of ``base``, then prompts a loosely keyed cache would serve wrongly.

    Sent one at a time (each after the previous finished), so the first has been served and any
    cache holds its prefix when the others arrive:
    - ``twin``: the same prefix but for its last token, the same tail (a cache that ignores the
      last prefix token, or snapshots the recurrent state one token late, gives wrong tokens);
    - ``new-tail``: the same prefix with another tail (the state must be copied, not consumed);
    - ``shorter``: the prefix without its last token, then the tail.
    """
    if "prefix_tokens" not in base.stats:
        raise ValueError(f"workload {base.name!r} is not a shared_prefix workload")
    prefix_len = int(base.stats["prefix_tokens"])
    first = base.requests[0]
    prefix, tail = first.prompt_token_ids[:prefix_len], first.prompt_token_ids[prefix_len:]
    rng = random.Random(f"near_miss:{seed}")
    special = {int(t) for t in tokenizer.all_special_ids}
    pool = [t for t in token_pool(len(tokenizer), sorted(special)) if t != prefix[-1]]
    twin_prefix = (*prefix[:-1], rng.choice(pool))
    new_tail = tuple(rng.choices(pool, k=len(tail)))
    prompts = {
        "nm-base": prefix + tail,
        "nm-twin": twin_prefix + tail,
        "nm-new-tail": prefix + new_tail,
        "nm-shorter": prefix[:-1] + tail,
    }
    requests = tuple(
        Request(request_id, prompt, first.max_new_tokens, first.stop_token_ids)
        for request_id, prompt in prompts.items()
    )
    expected = reference.generate(requests)
    return Workload(
        name=f"{base.name}-near-miss",
        requests=requests,
        expected={r.request_id: expected[r.request_id] for r in requests},
        concurrency=1,
        warmup=base.warmup,
        stats={
            **base.stats,
            "requests": len(requests),
            "concurrent_requests": 1,
            "arrival": "one at a time",
        },
    )

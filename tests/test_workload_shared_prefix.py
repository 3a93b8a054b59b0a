"""The shared-prefix workload of scenario hybrid_ssm (no model: stand-in tokenizer, reference)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pytest_vibeserve.contract import Request
from pytest_vibeserve.reference import ReferenceOutput
from pytest_vibeserve.workloads.shared_prefix import (
    SharedPrefixShape,
    build_requests,
    build_workload,
    mixed_params,
    near_miss_workload,
)

PARAMS = {"requests": 6, "prefix_tokens": 40, "tail_tokens": 5, "max_new_tokens": 7}
BOS, EOS = 256, 257


@dataclass
class Tokenizer:
    vocab: int = 258
    bos_token_id: int = BOS
    all_special_ids: tuple[int, ...] = (BOS, EOS)

    def __len__(self) -> int:
        return self.vocab


class Reference:
    """Records what it was asked; the 'output' is a function of the whole prompt."""

    def __init__(self) -> None:
        self.asked: list[Request] = []

    def generate(self, requests):
        self.asked.extend(requests)
        return {
            r.request_id: ReferenceOutput(
                tokens=[hash(r.prompt_token_ids) % 256] * r.max_new_tokens,
                margins=[1.0] * r.max_new_tokens,
                top_logprobs=[],
            )
            for r in requests
        }


def shared_len(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_burst_requests_share_the_prefix_and_differ_in_the_tail() -> None:
    shape = SharedPrefixShape.from_params(PARAMS)
    requests, offsets, warmup = build_requests(
        shape, vocab_size=258, bos=BOS, special=(BOS, EOS), seed=0
    )
    assert offsets is None and len(requests) == 6
    prompts = [r.prompt_token_ids for r in requests]
    assert all(len(p) == 45 and p[0] == BOS for p in prompts)
    assert all(BOS not in p[1:] and EOS not in p for p in prompts)
    assert len({p[:40] for p in prompts}) == 1
    assert len({p[40:] for p in prompts}) == 6
    assert all(r.max_new_tokens == 7 and r.stop_token_ids == () for r in requests)
    # The warm-up never shares the measured prefix (beyond BOS and chance).
    assert shared_len(warmup.prompt_token_ids, prompts[0]) < 3
    assert warmup.max_new_tokens < 7


def test_requests_depend_on_the_seed_only() -> None:
    shape = SharedPrefixShape.from_params(PARAMS)

    def build(seed):
        return build_requests(shape, vocab_size=258, bos=BOS, special=(BOS, EOS), seed=seed)[0]

    assert build(3) == build(3)
    assert build(3)[0].prompt_token_ids != build(4)[0].prompt_token_ids


def test_mixed_interleaves_prefixes_over_poisson_arrivals() -> None:
    params = mixed_params({**PARAMS, "mixed_request_rate": 20.0})
    assert params["arrival"] == "poisson" and params["prefixes"] == 3
    shape = SharedPrefixShape.from_params(params)
    requests, offsets, _ = build_requests(
        shape, vocab_size=258, bos=BOS, special=(BOS, EOS), seed=0
    )
    assert len(requests) == 6 and offsets is not None and len(offsets) == 6
    assert offsets[0] == 0.0 and list(offsets) == sorted(offsets) and offsets[-1] > 0
    groups = [r.request_id.rsplit("-p", 1)[1] for r in requests]
    assert groups == ["0", "1", "2", "0", "1", "2"]  # each prefix returns after two others
    by_group = {}
    for group, r in zip(groups, requests, strict=True):
        by_group.setdefault(group, set()).add(r.prompt_token_ids[:40])
    assert all(len(v) == 1 for v in by_group.values())
    assert len({next(iter(v)) for v in by_group.values()}) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prefix_tokens": 1}, "prefix_tokens = 1"),
        ({"tail_tokens": 0}, "tail_tokens = 0"),
        ({"prefixes": 7}, "prefixes = 7"),
        ({"arrival": "storm"}, "arrival = 'storm'"),
        ({"arrival": "poisson"}, "needs request_rate > 0"),
    ],
)
def test_bad_shapes_name_the_key(change, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SharedPrefixShape.from_params({**PARAMS, **change})


def test_a_missing_key_names_where_to_set_it() -> None:
    with pytest.raises(ValueError, match="needs 'tail_tokens'"):
        SharedPrefixShape.from_params({k: v for k, v in PARAMS.items() if k != "tail_tokens"})


def test_workload_asks_the_reference_for_every_request_and_reports_its_shape() -> None:
    reference = Reference()
    workload = build_workload(PARAMS, Tokenizer(), reference, seed=1)
    assert [r.request_id for r in reference.asked] == [r.request_id for r in workload.requests]
    assert workload.concurrency is None and workload.arrival_offsets_s is None
    assert workload.stats["prefix_tokens"] == 40 and workload.stats["output_tokens_total"] == 42
    assert workload.warmup[0].request_id == "warmup-0"


def test_near_miss_prompts_trap_a_loosely_keyed_cache() -> None:
    base = build_workload(PARAMS, Tokenizer(), Reference(), seed=2)
    reference = Reference()
    trap = near_miss_workload(base, Tokenizer(), reference, seed=2)
    prompts = {r.request_id: r.prompt_token_ids for r in trap.requests}
    assert list(prompts) == ["nm-base", "nm-twin", "nm-new-tail", "nm-shorter"]
    assert trap.concurrency == 1  # one at a time: the base is served before the traps arrive
    base_prompt = base.requests[0].prompt_token_ids
    assert prompts["nm-base"] == base_prompt
    twin = prompts["nm-twin"]
    assert len(twin) == len(base_prompt) and shared_len(twin, base_prompt) == 39
    assert twin[40:] == base_prompt[40:]
    assert shared_len(prompts["nm-new-tail"], base_prompt) == 40
    assert prompts["nm-shorter"] == base_prompt[:39] + base_prompt[40:]
    assert [r.request_id for r in reference.asked] == list(prompts)


def test_near_miss_needs_a_shared_prefix_workload() -> None:
    base = build_workload(PARAMS, Tokenizer(), Reference(), seed=2)
    other = type(base)(name="x", requests=base.requests, expected=base.expected)
    with pytest.raises(ValueError, match="not a shared_prefix workload"):
        near_miss_workload(other, Tokenizer(), Reference(), seed=2)

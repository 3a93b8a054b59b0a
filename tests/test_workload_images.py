"""Text-to-image workloads: a seed decides every request; seed 0 draws the written prompts, other
seeds composed ones of bounded length; probe steps are Euler steps of the schedule; the repeated
workload holds one prompt three times, as a prompt-keyed cache gets it wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from pytest_vibeserve.workloads.images import (
    PROMPTS,
    build_workload,
    make_prompts,
    make_requests,
    repeated_requests,
)

PARAMS = {"prompts": 16, "steps": 20, "guidance": 5.0}
SHORT_MAX = 40  # UTF-8 bytes: the short prompts; the long ones are longer, up to 120


def test_a_seed_decides_every_request() -> None:
    for seed in (0, 1, 12345):
        assert make_requests(PARAMS, seed) == make_requests(PARAMS, seed)
    first, other = make_requests(PARAMS, 1), make_requests(PARAMS, 2)
    assert [r.prompt for r in first] != [r.prompt for r in other]
    assert [r.seed for r in first] != [r.seed for r in other]
    # the written prompts of seed 0 still get their own noise per workload seed
    assert [r.seed for r in make_requests(PARAMS, 0)] != [r.seed for r in first]


def test_requests_carry_the_workload_schedule_and_unique_ids() -> None:
    requests = make_requests({"prompts": 5, "steps": 12, "guidance": 3.5}, 4, prefix="x")
    assert [r.request_id for r in requests] == [f"x-4-{i}" for i in range(5)]
    assert {(r.steps, r.guidance) for r in requests} == {(12, 3.5)}
    assert len({r.seed for r in requests}) == 5
    assert all(0 <= r.seed < 2**31 for r in requests)
    defaults = make_requests({}, 0)
    assert len(defaults) == len(PROMPTS)
    assert {(r.steps, r.guidance) for r in defaults} == {(20, 5.0)}


def test_seed_zero_uses_the_written_prompts_in_order() -> None:
    assert [r.prompt for r in make_requests(PARAMS, 0)] == list(PROMPTS)
    assert make_prompts(4, 0) == list(PROMPTS[:4])
    assert make_prompts(20, 0) == [*PROMPTS, *PROMPTS[:4]]  # more than written: they repeat
    lengths = [len(p.encode("utf-8")) for p in PROMPTS]
    # short and long alternate, so any first few hold both; the long ones are 40-120 tokens
    assert all(n < SHORT_MAX for n in lengths[0::2])
    assert all(SHORT_MAX <= n <= 120 for n in lengths[1::2])


@pytest.mark.parametrize("seed", [1, 2, 7, 999, 7_000, 10_000, 2**31 - 1])
def test_other_seeds_compose_bounded_prompts_half_short_half_long(seed) -> None:
    prompts = make_prompts(16, seed)
    assert prompts == make_prompts(16, seed)
    assert not set(prompts) & set(PROMPTS)
    lengths = [len(p.encode("utf-8")) for p in prompts]
    assert all(0 < n <= 120 for n in lengths)
    assert all(n <= SHORT_MAX for n in lengths[0::2])
    assert all(n > SHORT_MAX for n in lengths[1::2])
    assert make_prompts(3, seed) == prompts[:3]  # a smaller count is a prefix


def test_prompts_fit_the_models_text_budget() -> None:
    """The t2i models take at most 128 text tokens (UTF-8 bytes); the workloads stay within."""
    from reference_impls.showo2 import RECIPES

    budget = min(recipe.max_text_tokens for recipe in RECIPES.values())
    prompts = [*PROMPTS, *(p for seed in range(1, 200) for p in make_prompts(16, seed))]
    assert max(len(p.encode("utf-8")) for p in prompts) <= min(budget, 120)


@pytest.mark.parametrize("steps", [2, 3, 4, 5, 8, 20, 21, 50])
def test_probe_steps_are_euler_steps_of_the_schedule(steps) -> None:
    for seed in range(6):
        requests = make_requests({"prompts": 16, "steps": steps}, seed)
        assert all(0 <= r.probe_step <= steps - 2 for r in requests)
    calls = steps - 1
    probes = {r.probe_step for seed in range(6) for r in make_requests({"steps": steps}, seed)}
    # drawn from the middle half of the schedule, not always the same step
    assert all(calls // 4 <= p < max(calls // 4 + 1, 3 * calls // 4) for p in probes)
    if calls >= 8:
        assert len(probes) > 1


@pytest.mark.parametrize("steps", [3, 4, 20, 50])
@pytest.mark.parametrize("seed", [0, 1, 31])
def test_repeated_requests_share_a_prompt_with_other_probe_then_other_noise(seed, steps) -> None:
    params = {**PARAMS, "steps": steps}
    first, exact, again, new_noise = repeated_requests(params, seed)
    assert repeated_requests(params, seed) == [first, exact, again, new_noise]
    assert len({r.request_id for r in (first, exact, again, new_noise)}) == 4
    assert first.prompt == exact.prompt == again.prompt == new_noise.prompt
    # exact: the whole request again under a new id (a cache of whole requests answers it)
    assert (exact.seed, exact.probe_step) == (first.seed, first.probe_step)
    # again: the same noise, another probe step (a (prompt, seed) cache answers it unchanged)
    assert again.seed == first.seed
    assert again.probe_step != first.probe_step
    assert 0 <= again.probe_step <= steps - 2
    # new noise: another seed (a prompt cache answers it with the first image)
    assert new_noise.seed != first.seed
    assert new_noise.probe_step == first.probe_step
    assert {(r.steps, r.guidance) for r in (first, again, new_noise)} == {(steps, 5.0)}
    # its prompt is none of the main workload's, so the main run primes no cache for it
    assert first.prompt not in {r.prompt for r in make_requests(params, seed)}


def test_repeated_requests_at_two_steps_cannot_vary_the_probe() -> None:
    """A 2-point schedule has one Euler step: the 'again' request is the first one repeated."""
    first, _, again, _ = repeated_requests({"steps": 2}, 0)
    assert (again.seed, again.probe_step) == (first.seed, first.probe_step) == (first.seed, 0)


@dataclass
class _Image:
    seconds: float


class StubReference:
    """What build_workload reads of a Reference: its model directory and images()."""

    def __init__(self, model_dir) -> None:
        self.model_dir = model_dir
        self.asked: list[list[str]] = []

    def images(self, requests):
        self.asked.append([r.request_id for r in requests])
        return {r.request_id: _Image(seconds=0.5 + i) for i, r in enumerate(requests)}


@pytest.fixture
def tiny_model_dir(tmp_path):
    from reference_impls.showo2 import RECIPES, model_config

    config = model_config(RECIPES["t2i-tiny"])
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    return SimpleNamespace(path=tmp_path, config=config)


def test_build_workload_states_the_sequence_it_runs(tiny_model_dir) -> None:
    reference = StubReference(tiny_model_dir.path)
    params = {"prompts": 4, "steps": 20, "guidance": 5.0, "concurrency": 1}
    workload = build_workload(params, reference, 0)
    assert workload.name == "images-seed0"
    assert workload.requests == tuple(make_requests(params, 0))
    assert reference.asked == [[r.request_id for r in workload.requests]]
    assert workload.concurrency == 1
    [warmup] = workload.warmup
    assert warmup.prompt not in {r.prompt for r in workload.requests}
    assert warmup.request_id.startswith("warmup-")
    config = tiny_model_dir.config
    stats = workload.stats
    # the layout's numbers, as the model itself derives them
    assert stats["seq_len"] == config.seq_len
    assert stats["block_tokens"] == config.image_tokens + 1
    assert (stats["images"], stats["steps"], stats["guidance"]) == (4, 20, 5.0)
    lengths = [len(p.encode("utf-8")) for p in PROMPTS[:4]]
    assert stats["text_tokens_mean"] == sum(lengths) / 4
    assert stats["text_tokens_max"] == max(lengths)
    assert stats["reference_s_per_image"] == pytest.approx((0.5 + 1.5 + 2.5 + 3.5) / 4)


def test_build_workload_takes_given_requests_under_a_name(tiny_model_dir) -> None:
    reference = StubReference(tiny_model_dir.path)
    repeated = repeated_requests(PARAMS, 3)
    workload = build_workload(PARAMS, reference, 3, name="repeated-seed3", requests=repeated)
    assert workload.name == "repeated-seed3"
    assert workload.requests == tuple(repeated)
    # the same warm-up as the main workload of that seed
    assert workload.warmup == build_workload(PARAMS, reference, 3).warmup

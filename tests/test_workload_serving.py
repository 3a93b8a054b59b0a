"""The serving workload of scenario standard (no model: stand-in tokenizer and reference)."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vibeserve.contract import Request
from pytest_vibeserve.reference import ReferenceOutput
from pytest_vibeserve.workloads.serving import (
    ServingShape,
    arrival_offsets,
    at_rate,
    batch1_params,
    build_requests,
    build_serving_workload,
    prompt_lengths,
    sweep_rates,
)

BOS, EOS, PAD = 256, 257, 258
SPECIAL = (BOS, EOS, PAD)
VOCAB = 259
PARAMS = {"requests": 12, "input_len": 20, "output_len": 5}


@dataclass
class Tokenizer:
    vocab: int = VOCAB
    bos_token_id: int | None = BOS
    all_special_ids: tuple[int, ...] = SPECIAL

    def __len__(self) -> int:
        return self.vocab


class Reference:
    """Records what it was asked; the output is max_new_tokens tokens derived from the prompt."""

    def __init__(self) -> None:
        self.asked: list[Request] = []

    def generate(self, requests):
        self.asked.extend(requests)
        return {
            r.request_id: ReferenceOutput(
                tokens=[(sum(r.prompt_token_ids) + k) % 256 for k in range(r.max_new_tokens)],
                margins=[1.0] * r.max_new_tokens,
                top_logprobs=[{}] * r.max_new_tokens,
            )
            for r in requests
        }


def shape(**overrides) -> ServingShape:
    return ServingShape.from_params({**PARAMS, **overrides})


def requests_of(seed: int = 0, bos: int | None = BOS, **overrides):
    return build_requests(shape(**overrides), vocab_size=VOCAB, bos=bos, special=SPECIAL, seed=seed)


# -- ServingShape.from_params --------------------------------------------------------------------


def test_defaults_send_everything_at_once_without_a_concurrency_limit():
    s = shape()
    assert (s.requests, s.input_len, s.output_len) == (12, 20, 5)
    assert math.isinf(s.request_rate)
    assert s.arrival == "burst"
    assert s.range_ratio == 0.0
    assert s.burstiness == 1.0
    assert s.max_concurrency is None
    assert "12 x 20±0/5 tokens, burst at inf req/s" in s.describe()


@pytest.mark.parametrize("key", ["requests", "input_len", "output_len"])
def test_a_missing_required_key_is_named_with_where_to_set_it(key):
    params = {k: v for k, v in PARAMS.items() if k != key}
    with pytest.raises(ValueError, match=rf"needs '{key}' \(set it under \[workload\]"):
        ServingShape.from_params(params)


@pytest.mark.parametrize("key", ["requests", "input_len", "output_len", "max_concurrency"])
def test_a_non_integer_count_names_its_key(key):
    with pytest.raises(ValueError, match=rf"{key} = 'many' must be an integer"):
        ServingShape.from_params({**PARAMS, key: "many"})


@pytest.mark.parametrize("key", ["burstiness", "range_ratio"])
def test_a_non_number_ratio_names_its_key(key):
    with pytest.raises(ValueError, match=rf"{key} = 'high' must be a number"):
        ServingShape.from_params({**PARAMS, "arrival": "gamma", key: "high"})


def test_an_unknown_arrival_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"arrival = 'uniform'; use one of .*'burst'.*'gamma'"):
        shape(arrival="uniform")


@pytest.mark.parametrize(
    ("raw", "rate"),
    [(4, 4.0), (0.5, 0.5), ("2.5", 2.5), ("inf", math.inf), (" Infinity ", math.inf)],
)
def test_request_rate_takes_numbers_and_inf(raw, rate):
    s = shape(arrival="poisson", request_rate=raw)
    assert s.request_rate == rate
    assert s.arrival == ("burst" if math.isinf(rate) else "poisson")


@pytest.mark.parametrize("raw", [0, -1, "0"])
def test_a_rate_that_is_not_positive_points_at_inf(raw):
    with pytest.raises(ValueError, match=r"request_rate = .*must be > 0 \(use 'inf' for a burst\)"):
        shape(request_rate=raw)


@pytest.mark.parametrize("raw", ["fast", None, [1, 2]])
def test_a_rate_that_is_not_a_number_says_what_it_should_be(raw):
    with pytest.raises(
        ValueError, match=r"request_rate = .*a number of requests per second, or 'inf'"
    ):
        shape(request_rate=raw)


def test_burst_arrival_ignores_a_request_rate():
    s = shape(arrival="burst", request_rate=3)
    assert math.isinf(s.request_rate)
    assert s.arrival == "burst"


def test_gamma_arrival_with_burstiness():
    s = shape(arrival="gamma", request_rate=2, burstiness=0.5)
    assert (s.request_rate, s.burstiness, s.arrival) == (2.0, 0.5, "gamma")
    assert "gamma at 2 req/s, burstiness 0.5" in s.describe()


def test_poisson_with_another_burstiness_asks_for_gamma():
    with pytest.raises(
        ValueError, match=r"Poisson process has burstiness 1 \(use arrival = 'gamma'"
    ):
        shape(arrival="poisson", request_rate=2, burstiness=2.0)


@pytest.mark.parametrize("burstiness", [0, -1.0, float("nan")])
def test_burstiness_must_be_positive(burstiness):
    with pytest.raises(ValueError, match=r"burstiness = .*: must be > 0"):
        shape(arrival="gamma", request_rate=2, burstiness=burstiness)


@pytest.mark.parametrize(("raw", "limit"), [(None, None), (0, None), ("none", None), (4, 4)])
def test_max_concurrency_none_zero_or_a_count(raw, limit):
    assert shape(max_concurrency=raw).max_concurrency == limit


def test_a_negative_max_concurrency_says_to_leave_it_out():
    with pytest.raises(ValueError, match=r"max_concurrency = -2: >= 1, or leave it out"):
        shape(max_concurrency=-2)


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_range_ratio_must_be_in_zero_one(ratio):
    with pytest.raises(ValueError, match=rf"range_ratio = {ratio}: in \[0, 1\)"):
        shape(range_ratio=ratio)


def test_counts_and_prompt_length_are_validated_together():
    with pytest.raises(ValueError) as caught:
        shape(requests=0, input_len=1)
    message = str(caught.value)
    assert "requests and output_len must be >= 1" in message
    assert "input_len = 1: at least BOS and one token" in message
    with pytest.raises(ValueError, match="requests and output_len must be >= 1"):
        shape(output_len=0)


# -- arrival_offsets -----------------------------------------------------------------------------


def test_an_infinite_rate_has_no_offsets():
    assert arrival_offsets(5, math.inf, 1.0, random.Random(0)) is None


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 4.0])
def test_offsets_start_at_zero_and_never_go_back(burstiness):
    offsets = arrival_offsets(500, 10.0, burstiness, random.Random(1))
    assert len(offsets) == 500
    assert offsets[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(offsets))
    assert offsets[-1] > 0


def test_offsets_are_seeded():
    first = arrival_offsets(50, 3.0, 1.0, random.Random("arrivals:7"))
    assert first == arrival_offsets(50, 3.0, 1.0, random.Random("arrivals:7"))
    assert first != arrival_offsets(50, 3.0, 1.0, random.Random("arrivals:8"))


def _gaps(rate: float, burstiness: float, seed: int = 0) -> list[float]:
    offsets = arrival_offsets(20_001, rate, burstiness, random.Random(seed))
    return [b - a for a, b in itertools.pairwise(offsets)]


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 4.0])
def test_the_mean_gap_is_one_over_the_rate_whatever_the_burstiness(burstiness):
    # 20,000 gaps: the sample mean's relative error is cv / sqrt(n) <= 1.5 / 141 ~ 1%; 6% is 6 sigma
    gaps = _gaps(rate=8.0, burstiness=burstiness)
    assert statistics.fmean(gaps) == pytest.approx(1 / 8.0, rel=0.06)


def test_lower_burstiness_means_more_irregular_gaps():
    def cv(burstiness: float) -> float:
        gaps = _gaps(rate=8.0, burstiness=burstiness)
        return statistics.pstdev(gaps) / statistics.fmean(gaps)

    bursty, poisson, regular = cv(0.5), cv(1.0), cv(4.0)
    assert bursty > poisson > regular
    # a gamma with shape k has coefficient of variation 1 / sqrt(k)
    assert bursty == pytest.approx(1 / math.sqrt(0.5), rel=0.1)
    assert poisson == pytest.approx(1.0, rel=0.1)
    assert regular == pytest.approx(0.5, rel=0.1)


# -- prompt_lengths ------------------------------------------------------------------------------


def test_no_range_ratio_gives_equal_lengths():
    assert prompt_lengths(shape(input_len=37), random.Random(0)) == [37] * 12


def test_lengths_stay_inside_the_decimal_range_and_reach_both_ends():
    # 100 * (1 + 0.1) is 110.00000000000001 in floats: the top length must still be 110
    lengths = prompt_lengths(shape(requests=2000, input_len=100, range_ratio=0.1), random.Random(0))
    assert min(lengths) == 90
    assert max(lengths) == 110


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 5000), st.integers(0, 99), st.integers(0, 2**32))
def test_lengths_are_within_input_len_times_one_plus_minus_range_ratio(input_len, percent, seed):
    ratio = Fraction(percent, 100)  # the decimal the user wrote, exactly
    low = max(2, math.floor(input_len * (1 - ratio)))
    high = max(low, math.ceil(input_len * (1 + ratio)))
    s = shape(requests=20, input_len=input_len, range_ratio=percent / 100)
    lengths = prompt_lengths(s, random.Random(seed))
    assert len(lengths) == 20
    assert all(low <= n <= high for n in lengths), (low, high, lengths)


# -- build_requests ------------------------------------------------------------------------------


def test_requests_have_unique_ids_and_exactly_output_len_tokens_without_stops():
    requests, warmup = requests_of(range_ratio=0.5)
    ids = [r.request_id for r in requests]
    assert len(ids) == 12
    assert len(set(ids)) == 12
    assert warmup.request_id not in ids
    assert all(r.max_new_tokens == 5 for r in requests)
    assert all(r.stop_token_ids == () for r in (*requests, warmup))


@pytest.mark.parametrize("bos", [BOS, None])
def test_prompts_hold_no_special_ids_but_a_leading_bos(bos):
    requests, warmup = requests_of(bos=bos, range_ratio=0.5)
    for request in (*requests, warmup):
        prompt = request.prompt_token_ids
        if bos is not None:
            assert prompt[0] == BOS
            prompt = prompt[1:]
        assert prompt
        assert not set(prompt) & set(SPECIAL)
        assert all(0 <= t < VOCAB for t in prompt)


def test_prompt_lengths_count_bos():
    requests, _ = requests_of(input_len=20)
    assert [len(r.prompt_token_ids) for r in requests] == [20] * 12
    requests, _ = requests_of(input_len=20, bos=None)
    assert [len(r.prompt_token_ids) for r in requests] == [20] * 12


def test_lengths_vary_with_a_range_ratio_within_bounds():
    requests, _ = requests_of(requests=200, input_len=40, range_ratio=0.5)
    lengths = [len(r.prompt_token_ids) for r in requests]
    assert min(lengths) >= 20
    assert max(lengths) <= 60
    assert len(set(lengths)) > 10


def test_the_warmup_is_short_and_never_longer_than_the_output():
    _, warmup = requests_of(output_len=50)
    assert warmup.max_new_tokens == 4
    _, warmup = requests_of(output_len=2)
    assert warmup.max_new_tokens == 2


def test_requests_are_deterministic_per_seed_and_differ_across_seeds():
    assert requests_of(seed=3, range_ratio=0.5) == requests_of(seed=3, range_ratio=0.5)
    a, _ = requests_of(seed=3, range_ratio=0.5)
    b, _ = requests_of(seed=4, range_ratio=0.5)
    assert [r.prompt_token_ids for r in a] != [r.prompt_token_ids for r in b]


def test_a_vocabulary_of_only_special_ids_is_refused():
    with pytest.raises(ValueError, match="leaves no ids to draw prompts from"):
        build_requests(shape(), vocab_size=3, bos=0, special=(0, 1, 2), seed=0)


# -- build_serving_workload ----------------------------------------------------------------------


def test_a_burst_workload_sends_everything_at_once():
    reference = Reference()
    workload = build_serving_workload(PARAMS, Tokenizer(), reference, seed=0)
    assert workload.name == "serving-burst-inf-seed0"
    assert workload.concurrency is None
    assert workload.arrival_offsets_s is None
    assert len(workload.warmup) == 1
    assert workload.warmup[0].request_id not in workload.expected
    # the reference is asked for the measured requests only, once each
    assert [r.request_id for r in reference.asked] == [r.request_id for r in workload.requests]
    assert set(workload.expected) == {r.request_id for r in workload.requests}
    assert workload.stats == {
        "requests": 12,
        "input_len_mean": 20.0,
        "output_len": 5,
        "arrival": "burst",
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": "inf",
        "concurrent_requests": 12,
        "output_tokens_total": 60,
    }


def test_a_poisson_workload_with_a_concurrency_limit():
    params = {**PARAMS, "arrival": "poisson", "request_rate": 4, "max_concurrency": 3}
    params["range_ratio"] = 0.5
    workload = build_serving_workload(params, Tokenizer(), Reference(), seed=2)
    assert workload.name == "serving-poisson-4-seed2"
    assert workload.concurrency == 3
    offsets = workload.arrival_offsets_s
    assert len(offsets) == 12
    assert offsets[0] == 0.0
    assert list(offsets) == sorted(offsets)
    lengths = [len(r.prompt_token_ids) for r in workload.requests]
    assert workload.stats["input_len_mean"] == round(sum(lengths) / 12, 1)
    assert workload.stats["arrival"] == "poisson"
    assert workload.stats["request_rate"] == "4"
    assert workload.stats["max_concurrency"] == 3
    assert workload.stats["concurrent_requests"] == 3
    assert workload.stats["output_tokens_total"] == workload.output_tokens == 60


def test_a_gamma_workload_names_its_shape_and_takes_a_given_name():
    params = {**PARAMS, "arrival": "gamma", "request_rate": 2.5, "burstiness": 0.5}
    workload = build_serving_workload(params, Tokenizer(), Reference(), seed=1, name="mine")
    assert workload.name == "mine"
    assert workload.stats["arrival"] == "gamma"
    assert workload.stats["burstiness"] == 0.5
    assert workload.stats["request_rate"] == "2.5"


def test_the_rate_never_changes_the_prompts():
    burst = build_serving_workload(PARAMS, Tokenizer(), Reference(), seed=5)
    params = {**PARAMS, "arrival": "poisson", "request_rate": 9}
    poisson = build_serving_workload(params, Tokenizer(), Reference(), seed=5)
    assert burst.requests == poisson.requests
    assert burst.warmup == poisson.warmup


def test_a_tokenizer_without_bos_gives_prompts_without_one():
    workload = build_serving_workload(PARAMS, Tokenizer(bos_token_id=None), Reference(), seed=0)
    assert all(BOS not in r.prompt_token_ids for r in workload.requests)
    assert all(len(r.prompt_token_ids) == 20 for r in workload.requests)


def test_bad_params_fail_before_the_reference_is_asked():
    reference = Reference()
    with pytest.raises(ValueError, match="needs 'output_len'"):
        build_serving_workload({"requests": 2, "input_len": 8}, Tokenizer(), reference, seed=0)
    assert reference.asked == []


# -- batch1_params, sweep_rates, at_rate ---------------------------------------------------------


def test_batch1_params_run_one_at_a_time():
    params = {**PARAMS, "batch1_requests": 3, "batch1_output_len": 7, "request_rate": 4}
    assert batch1_params(params) == {
        "requests": 3,
        "input_len": 32,
        "output_len": 7,
        "arrival": "burst",
        "max_concurrency": 1,
    }
    assert batch1_params({**params, "batch1_input_len": 9})["input_len"] == 9
    workload = build_serving_workload(batch1_params(params), Tokenizer(), Reference(), seed=0)
    assert workload.concurrency == 1
    assert workload.arrival_offsets_s is None
    assert [len(r.prompt_token_ids) for r in workload.requests] == [32] * 3
    assert all(r.max_new_tokens == 7 for r in workload.requests)


def test_batch1_params_name_every_missing_key():
    with pytest.raises(ValueError, match=r"batch1_requests.*batch1_output_len.*scenario\.toml"):
        batch1_params(PARAMS)
    with pytest.raises(ValueError, match=r"\['batch1_output_len'\]"):
        batch1_params({**PARAMS, "batch1_requests": 2})


def test_sweep_rates_keep_their_order_and_allow_inf():
    assert sweep_rates({"request_rates": [4, "0.5", "inf", 1]}) == [4.0, 0.5, math.inf, 1.0]


@pytest.mark.parametrize("params", [{}, {"request_rates": []}])
def test_a_sweep_without_rates_says_how_to_give_them(params):
    with pytest.raises(ValueError, match=r"request_rates = \[\.\.\.\]"):
        sweep_rates(params)


def test_a_sweep_rate_that_is_not_positive_is_named():
    with pytest.raises(ValueError, match=r"request_rates = 0: must be > 0"):
        sweep_rates({"request_rates": [1, 0]})


def test_at_rate_keeps_the_requests_and_draws_new_offsets():
    base = build_serving_workload(PARAMS, Tokenizer(), Reference(), seed=4)
    swept = at_rate(base, 4.0, 1.0, seed=4)
    assert swept.name == f"{base.name}@4"
    assert swept.requests == base.requests
    assert swept.expected == base.expected
    assert swept.warmup == base.warmup
    assert swept.concurrency == base.concurrency
    assert len(swept.arrival_offsets_s) == 12
    assert swept.arrival_offsets_s[0] == 0.0
    assert swept.stats["request_rate"] == "4"
    assert swept.stats["arrival"] == "poisson"
    assert base.arrival_offsets_s is None  # the original is untouched
    assert base.stats["request_rate"] == "inf"


def test_at_rate_matches_building_at_that_rate():
    base = build_serving_workload(PARAMS, Tokenizer(), Reference(), seed=6)
    params = {**PARAMS, "arrival": "gamma", "request_rate": 3, "burstiness": 0.5}
    direct = build_serving_workload(params, Tokenizer(), Reference(), seed=6)
    swept = at_rate(base, 3.0, 0.5, seed=6)
    assert swept.arrival_offsets_s == direct.arrival_offsets_s
    assert swept.stats == direct.stats


def test_at_rate_inf_is_a_burst():
    params = {**PARAMS, "arrival": "poisson", "request_rate": 2}
    base = build_serving_workload(params, Tokenizer(), Reference(), seed=0)
    swept = at_rate(base, math.inf, 1.0, seed=0)
    assert swept.name == f"{base.name}@inf"
    assert swept.arrival_offsets_s is None
    assert swept.stats["request_rate"] == "inf"
    assert swept.stats["arrival"] == "burst"

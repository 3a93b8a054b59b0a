"""The predicted_outputs workload builder, with a stand-in reference (no model needed)."""

from __future__ import annotations

import pytest

from pytest_vibeserve.reference import ReferenceOutput
from pytest_vibeserve.workloads.predicted import (
    REFERENCE_CHUNK,
    build_workload,
    trap_prediction,
    with_predictions,
)
from reference_impls.tiny import build_tokenizer


class EchoReference:
    """Pretends the model replies with the last ``max_new_tokens`` tokens of its prompt."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def generate(self, requests):
        self.calls.append(len(requests))
        return {
            r.request_id: ReferenceOutput(
                tokens=list(r.prompt_token_ids[-r.max_new_tokens :]),
                margins=[1.0] * r.max_new_tokens,
                top_logprobs=[{}] * r.max_new_tokens,
            )
            for r in requests
        }


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_perturbed_workload_is_seeded_and_predicts_an_edited_output(tokenizer):
    params = {"requests": 3, "max_new_tokens": 40, "prediction": "perturbed"}
    first = build_workload(params, tokenizer, EchoReference(), seed=1)
    again = build_workload(params, tokenizer, EchoReference(), seed=1)
    other = build_workload(params, tokenizer, EchoReference(), seed=2)
    assert first.requests == again.requests
    assert first.requests != other.requests
    for request in first.requests:
        expected = first.expected[request.request_id].tokens
        assert request.prediction_token_ids is not None
        assert list(request.prediction_token_ids) != expected
    assert first.stats["prediction"] == "perturbed"
    assert 0.5 < first.stats["overlap_ratio_median"] < 1.0
    assert first.warmup[0].request_id == "warmup-0"
    assert first.concurrency == 1


def test_as_sent_keeps_requests_that_copy_and_stops_early(tokenizer):
    reference = EchoReference()
    params = {"requests": 2, "candidates": 20, "max_new_tokens": 30, "min_overlap_ratio": 0.0}
    workload = build_workload(params, tokenizer, reference, seed=0)
    assert len(workload.requests) == 2
    # one chunk of max(2 * requests, REFERENCE_CHUNK) candidates, decoded as one reference batch,
    # qualified: no more reference decoding
    assert reference.calls == [REFERENCE_CHUNK]
    assert workload.stats["candidates"] == REFERENCE_CHUNK


def test_as_sent_names_the_fix_when_too_few_requests_copy(tokenizer):
    params = {"requests": 2, "candidates": 4, "max_new_tokens": 30, "min_overlap_ratio": 0.99}
    with pytest.raises(ValueError, match="build more candidate cases or lower min_ratio"):
        build_workload(params, tokenizer, EchoReference(), seed=0)


def test_missing_parameter_names_the_key(tokenizer):
    with pytest.raises(ValueError, match="needs 'max_new_tokens'"):
        build_workload({"requests": 1}, tokenizer, EchoReference(), seed=0)


def test_trap_prediction_differs_in_one_token_and_overruns(tokenizer):
    params = {"requests": 3, "max_new_tokens": 40, "prediction": "perturbed"}
    workload = build_workload(params, tokenizer, EchoReference(), seed=0)
    traps = with_predictions(workload, "traps", trap_prediction(0))
    assert traps.name == f"{workload.name}-traps"
    for request in traps.requests:
        expected = traps.expected[request.request_id].tokens
        prediction = list(request.prediction_token_ids)
        assert len(prediction) == len(expected) + 32
        assert sum(a != b for a, b in zip(prediction, expected, strict=False)) == 1
        assert set(prediction) <= set(expected) | set(request.prompt_token_ids)


def test_no_prediction_variant_keeps_expected_outputs(tokenizer):
    params = {"requests": 2, "max_new_tokens": 20, "prediction": "perturbed"}
    workload = build_workload(params, tokenizer, EchoReference(), seed=0)
    bare = with_predictions(workload, "none", lambda request, expected: None)
    assert all(r.prediction_token_ids is None for r in bare.requests)
    assert bare.expected == workload.expected

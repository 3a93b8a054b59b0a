"""Logprob closeness: a perturbation above atol fails at its position; top-k sets must agree."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vibeserve.checkers import check_logprob_closeness

ATOL = 1e-3
REF = {
    "r0": [
        {11: -0.1, 12: -2.5, 13: -4.0},
        {21: -0.3, 22: -1.5, 23: -3.0},
        {31: -0.05, 32: -3.2, 33: -5.0},
    ]
}


def perturbed(position: int, token: int, delta: float) -> dict[str, list[dict[int, float]]]:
    steps = [dict(top) for top in REF["r0"]]
    steps[position][token] += delta
    return {"r0": steps}


def test_identical_logprobs_pass() -> None:
    result = check_logprob_closeness(REF, REF)
    assert result.passed
    assert result.stats["max_abs_diff"] == 0.0
    assert result.stats["compared_values"] == 9
    assert result.summary.startswith("logprobs: 1/1 requests within atol 0.001")


def test_perturbation_below_atol_passes() -> None:
    result = check_logprob_closeness(REF, perturbed(1, 22, ATOL / 2), atol=ATOL)
    assert result.passed, result.summary
    assert result.stats["max_abs_diff"] == pytest.approx(ATOL / 2)


def test_perturbation_above_atol_fails_at_that_position() -> None:
    result = check_logprob_closeness(REF, perturbed(1, 22, 0.01), atol=ATOL)
    assert not result.passed
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("r0", 1)
    assert failure.data["token"] == 22
    assert failure.data["expected"] == -1.5
    assert failure.data["actual"] == pytest.approx(-1.49)
    assert failure.data["diff"] == pytest.approx(0.01)
    assert "request r0 position 1 token 22: expected logprob -1.5, got -1.49" in result.summary
    assert "> atol 0.001" in result.summary
    assert result.stats["max_abs_diff"] == pytest.approx(0.01)


def test_only_first_failing_position_per_request_is_listed() -> None:
    actual = perturbed(0, 11, 0.5)
    actual["r0"][2][31] -= 0.5
    result = check_logprob_closeness(REF, actual)
    assert [(f.request_id, f.position) for f in result.failures] == [("r0", 0)]
    assert result.stats["failed_positions"] == 2
    assert result.stats["max_abs_diff"] == pytest.approx(0.5)


def test_disjoint_top_k_fails() -> None:
    actual = {"r0": [REF["r0"][0], {91: -0.2, 92: -1.0, 93: -2.0}, REF["r0"][2]]}
    result = check_logprob_closeness(REF, actual)
    assert not result.passed
    assert {f.position for f in result.failures} == {1}
    by_token = {f.data["token"]: f for f in result.failures}
    # Actual's tokens beat expected's floor (-3.0); expected's beat actual's floor (-2.0).
    assert set(by_token) == {91, 92, 93, 21, 22}
    first = result.failures[0]
    assert first.data["reason"] == "top_k_mismatch"
    assert "request r0 position 1: top-k sets disagree: token 91" in result.summary


def test_different_token_at_the_cutoff_is_a_tolerated_near_tie() -> None:
    # Token 33 and 34 are both near -5.0: which one makes the top-3 is noise, not a bug.
    actual = {"r0": [REF["r0"][0], REF["r0"][1], {31: -0.05, 32: -3.2, 34: -4.9995}]}
    assert check_logprob_closeness(REF, actual, atol=ATOL).passed


def test_position_count_mismatch_fails() -> None:
    result = check_logprob_closeness(REF, {"r0": REF["r0"][:2]})
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("r0", 2)
    assert failure.data == {
        "reason": "position_count",
        "expected_positions": 3,
        "actual_positions": 2,
    }
    assert "request r0 has 2 logprob positions, expected 3" in result.summary


def test_missing_and_extra_requests_fail() -> None:
    result = check_logprob_closeness(REF, {"other": REF["r0"]})
    assert [(f.request_id, f.data["reason"]) for f in result.failures] == [
        ("r0", "missing_request"),
        ("other", "extra_request"),
    ]


def test_expected_tokens_require_the_reference_token_in_actual_top_k() -> None:
    actual = {"r0": [REF["r0"][0], {21: -0.3, 22: -1.5, 99: -3.0005}, REF["r0"][2]]}
    result = check_logprob_closeness(REF, actual, expected_tokens={"r0": [11, 23, 31]})
    [failure] = result.failures
    assert (failure.position, failure.data["reason"]) == (1, "reference_token_missing")
    assert "reference token 23 is missing from the actual top-3" in failure.message


def test_expected_tokens_stop_comparison_after_greedy_divergence() -> None:
    # At position 1 the actual top-1 (22) differs from the reference token (21) at a near-tie;
    # position 2 then conditions on a different prefix and must not be compared.
    actual = {
        "r0": [REF["r0"][0], {21: -0.7, 22: -0.6995, 23: -3.0}, {77: -0.01, 78: -9.0, 79: -9.5}]
    }
    expected = {"r0": [REF["r0"][0], {21: -0.6995, 22: -0.7, 23: -3.0}, REF["r0"][2]]}
    result = check_logprob_closeness(expected, actual, expected_tokens={"r0": [11, 21, 31]})
    assert result.passed, result.summary
    assert result.stats["stopped_after_divergence"] == {"r0": 1}
    assert not check_logprob_closeness(expected, actual).passed


def test_non_finite_values() -> None:
    masked = {"r0": [{1: 0.0, 2: -math.inf}]}
    assert check_logprob_closeness(masked, masked).passed
    result = check_logprob_closeness(masked, {"r0": [{1: math.nan, 2: -math.inf}]})
    [failure] = result.failures
    assert failure.data["token"] == 1
    json.dumps(result.to_dict(), allow_nan=False)


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        check_logprob_closeness(REF, REF, atol=-1.0)
    with pytest.raises(
        TypeError, match=r"actual\['r0'\]\[0\] must be a \{token_id: logprob\} dict"
    ):
        check_logprob_closeness(REF, {"r0": [[-0.1]]})  # type: ignore[list-item]
    with pytest.raises(ValueError, match="has 2 tokens but expected has 3 logprob positions"):
        check_logprob_closeness(REF, REF, expected_tokens={"r0": [11, 21]})
    with pytest.raises(ValueError, match="expected_tokens has no entry for request 'r0'"):
        check_logprob_closeness(REF, REF, expected_tokens={})


@settings(max_examples=60, deadline=None)
@given(
    position=st.integers(0, 2),
    slot=st.integers(0, 2),
    delta=st.floats(2 * ATOL, 10.0) | st.floats(-10.0, -2 * ATOL),
)
def test_property_perturbation_above_atol_fails_exactly_there(
    position: int, slot: int, delta: float
) -> None:
    token = sorted(REF["r0"][position])[slot]
    result = check_logprob_closeness(REF, perturbed(position, token, delta), atol=ATOL)
    assert not result.passed
    failure = result.failures[0]
    assert (failure.request_id, failure.position) == ("r0", position)
    assert token in {f.data["token"] for f in result.failures}

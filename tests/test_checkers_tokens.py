"""Token equality: exact failures at the first divergence, forgiven only at a reference near-tie."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vibeserve.checkers import ExpectedTokens, check_token_equality

TOL = 1e-3
FAST = settings(max_examples=60, deadline=None)


def ref(tokens: list[int], margin: float = 5.0, **overrides: float) -> ExpectedTokens:
    """Reference with a large margin everywhere except positions given as p<index>=margin."""
    margins = [margin] * len(tokens)
    for key, value in overrides.items():
        margins[int(key.removeprefix("p"))] = value
    return ExpectedTokens(tokens=list(tokens), margins=margins)


def test_identical_outputs_pass() -> None:
    result = check_token_equality(
        {"r0": ref([1, 2, 3]), "r1": ref([4, 5])}, {"r0": [1, 2, 3], "r1": (4, 5)}
    )
    assert result.passed
    assert result.failures == []
    assert result.summary == "tokens: 2/2 requests equal, 0 tolerated ties"
    assert result.stats["compared_tokens"] == 5
    assert result.stats["min_margin"] == 5.0
    json.dumps(result.to_dict(), allow_nan=False)


def test_wrong_token_with_large_margin_fails_at_that_position() -> None:
    expected = {"r0": ref([1, 2, 3]), "r3": ref([10, 11, 12, 13], p2=3.1)}
    result = check_token_equality(expected, {"r0": [1, 2, 3], "r3": [10, 11, 92, 13]})
    assert not result.passed
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("r3", 2)
    assert failure.data["expected"] == 12
    assert failure.data["actual"] == 92
    assert failure.data["margin"] == 3.1
    assert "request r3 position 2 expected 12 got 92 (margin 3.1" in failure.message
    assert result.summary.startswith("tokens: 1/2 requests equal, 0 tolerated ties; FAILED: ")
    assert "request r3 position 2 expected 12 got 92" in result.summary


def test_divergence_at_near_tie_is_tolerated_and_stops_comparison() -> None:
    expected = {"r0": ref([1, 2, 3, 4, 5], p1=TOL / 2)}
    # After the tie the engine's context differs, so the garbage (and extra length) is ignored.
    result = check_token_equality(expected, {"r0": [1, 7, 99, 98, 97, 96, 95]})
    assert result.passed, result.summary
    assert result.stats["tolerated_ties"] == [
        {
            "request_id": "r0",
            "position": 1,
            "expected": 2,
            "actual": 7,
            "margin": TOL / 2,
            "tie_tolerance": TOL,
        }
    ]
    assert result.summary == "tokens: 1/1 requests equal, 1 tolerated tie"


def test_tie_tolerance_is_strict_at_the_boundary() -> None:
    result = check_token_equality({"r0": ref([1, 2], p1=TOL)}, {"r0": [1, 3]})
    assert [(f.request_id, f.position) for f in result.failures] == [("r0", 1)]


def test_only_the_first_divergence_can_be_a_tie() -> None:
    # A near-tie later on does not excuse an earlier real divergence.
    expected = {"r0": ref([1, 2, 3], p2=0.0)}
    result = check_token_equality(expected, {"r0": [1, 9, 8]})
    [failure] = result.failures
    assert failure.position == 1
    assert result.stats["tolerated_tie_count"] == 0


def test_too_short_output_fails_naming_lengths() -> None:
    result = check_token_equality({"r1": ref([1, 2, 3, 4])}, {"r1": [1, 2]})
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("r1", 2)
    assert failure.data == {
        "reason": "too_short",
        "expected": 3,
        "expected_length": 4,
        "actual_length": 2,
    }
    assert "request r1 output too short: got 2 tokens, expected 4" in result.summary


def test_too_long_output_fails_naming_lengths() -> None:
    result = check_token_equality({"r1": ref([1, 2])}, {"r1": [1, 2, 50, 51]})
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("r1", 2)
    assert failure.data["actual"] == 50
    assert (failure.data["expected_length"], failure.data["actual_length"]) == (2, 4)
    assert "output too long: got 4 tokens, expected 2; extra token 50 at position 2" in (
        failure.message
    )


def test_missing_and_extra_requests_fail() -> None:
    result = check_token_equality({"a": ref([1]), "b": ref([2])}, {"a": [1], "zz": [3]})
    assert [(f.request_id, f.position, f.data["reason"]) for f in result.failures] == [
        ("b", None, "missing_request"),
        ("zz", None, "extra_request"),
    ]
    assert "request b is missing from the actual outputs" in result.summary
    assert "(+1 more failures)" in result.summary
    assert result.stats["equal_requests"] == 1


def test_every_failing_request_is_reported_and_summary_names_the_first() -> None:
    expected = {f"r{i}": ref([1, 2, 3]) for i in range(4)}
    actual = {"r0": [1, 2, 3], "r1": [1, 5, 3], "r2": [1, 2, 3], "r3": [6, 2, 3]}
    result = check_token_equality(expected, actual)
    assert [(f.request_id, f.position) for f in result.failures] == [("r1", 1), ("r3", 0)]
    assert "2/4 requests equal" in result.summary
    assert "FAILED: request r1 position 1 expected 2 got 5" in result.summary


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="one margin per token: got 2 tokens and 1 margins"):
        ExpectedTokens(tokens=[1, 2], margins=[1.0])
    with pytest.raises(ValueError, match=r"margins\[0\] is -1.0"):
        ExpectedTokens(tokens=[1], margins=[-1.0])
    with pytest.raises(TypeError, match=r"tokens\[1\] is '7'; token ids are ints"):
        ExpectedTokens(tokens=[1, "7"], margins=[1.0, 1.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="tie_tolerance must be a finite number >= 0"):
        check_token_equality({}, {}, tie_tolerance=-1.0)
    with pytest.raises(TypeError, match="pass ExpectedTokens"):
        check_token_equality({"r0": [1, 2]}, {"r0": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="sequence of int token ids"):
        check_token_equality({"r0": ref([1])}, {"r0": [1.5]})  # type: ignore[list-item]


token_lists = st.lists(st.integers(0, 50_000), min_size=1, max_size=40)


@FAST
@given(tokens=token_lists, margins_seed=st.floats(TOL, 50.0), data=st.data())
def test_property_any_injected_change_is_reported_exactly(
    tokens: list[int], margins_seed: float, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(tokens) - 1), label="position")
    replacement = data.draw(st.integers(0, 50_000).filter(lambda t: t != tokens[position]))
    margins = data.draw(
        st.lists(st.floats(0.0, 50.0), min_size=len(tokens), max_size=len(tokens)), label="margins"
    )
    margins[position] = margins_seed  # >= tolerance: a real divergence
    # Margins before the divergence are irrelevant (tokens agree there); ones after are unreachable.
    mutated = list(tokens)
    mutated[position] = replacement
    others = {"ok": ExpectedTokens(tokens=[7, 8], margins=[0.0, 0.0])}
    result = check_token_equality(
        {**others, "bad": ExpectedTokens(tokens=tokens, margins=margins)},
        {"ok": [7, 8], "bad": mutated},
        tie_tolerance=TOL,
    )
    assert not result.passed
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("bad", position)
    assert (failure.data["expected"], failure.data["actual"]) == (tokens[position], replacement)
    assert f"request bad position {position} expected {tokens[position]}" in result.summary


@FAST
@given(
    sequences=st.lists(st.lists(st.integers(0, 2**31 - 1), max_size=30), max_size=5),
    margin=st.floats(0.0, 100.0),
)
def test_property_identical_sequences_always_pass(
    sequences: list[list[int]], margin: float
) -> None:
    outputs = {f"r{i}": tokens for i, tokens in enumerate(sequences)}
    expected = {rid: ExpectedTokens(toks, [margin] * len(toks)) for rid, toks in outputs.items()}
    result = check_token_equality(expected, outputs)
    assert result.passed, result.summary
    assert result.stats["compared_tokens"] == sum(map(len, outputs.values()))

"""Streaming transcripts: every chunk's transcript token-exact, stale and empty answers named."""

from __future__ import annotations

import json

import pytest

from pytest_vibeserve.checkers import ExpectedTokens, check_word_overlap
from pytest_vibeserve.checkers.transcripts import check_transcripts
from pytest_vibeserve.checkers.words import word_jaccard

TOL = 1e-3


def ref(tokens: list[int], margin: float = 5.0, **overrides: float) -> ExpectedTokens:
    """Reference with a large margin everywhere except positions given as p<index>=margin."""
    margins = [margin] * len(tokens)
    for key, value in overrides.items():
        margins[int(key.removeprefix("p"))] = value
    return ExpectedTokens(tokens=list(tokens), margins=margins)


# The reference's transcript after each of three chunks of stream s0: it grows as audio arrives.
S0 = [ref([7]), ref([7, 8]), ref([7, 8, 9])]
S0_TOKENS = [[7], [7, 8], [7, 8, 9]]


def test_all_transcripts_equal_pass() -> None:
    expected = {"s0": S0, "s1": [ref([3, 4]), ref([3, 4, 5, 6])]}
    actual = {"s0": S0_TOKENS, "s1": [(3, 4), (3, 4, 5, 6)]}
    result = check_transcripts(expected, actual)
    assert result.passed, result.summary
    assert result.failures == []
    assert result.stats["streams"] == 2
    assert result.stats["chunks"] == 5
    assert result.stats["equal_chunks"] == 5
    assert result.stats["compared_tokens"] == 1 + 2 + 3 + 2 + 4
    assert result.stats["tolerated_tie_count"] == 0
    assert result.summary == (
        "transcripts: 5/5 chunk transcripts equal over 2 stream(s), 0 tolerated ties"
    )
    json.dumps(result.to_dict(), allow_nan=False)


def test_engine_repeating_its_own_previous_transcript_is_stale() -> None:
    # Chunk 1 answered with the engine's own chunk 0 transcript although the reference grew.
    result = check_transcripts({"s0": S0}, {"s0": [[7], [7], [7, 8, 9]]})
    assert not result.passed
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("s0", 1)
    assert failure.data["reason"] == "stale"
    assert failure.data["chunk"] == 1
    assert failure.data["first_difference"] == 1
    assert failure.message.startswith("stream s0 chunk 1 (partial): stale")
    assert "same 1 tokens as its chunk 0 transcript" in failure.message
    assert result.stats["equal_chunks"] == 2


def test_engine_repeating_a_wrong_transcript_is_still_stale() -> None:
    # The engine's chunk 0 answer is wrong, and chunk 1 repeats it: both fail, chunk 1 as stale.
    result = check_transcripts({"s0": S0}, {"s0": [[5], [5], [7, 8, 9]]})
    reasons = [(f.position, f.data["reason"]) for f in result.failures]
    assert reasons == [(0, "mismatch"), (1, "stale")]


def test_reference_previous_chunk_transcript_is_stale() -> None:
    # Chunk 2 answered with the reference's chunk 1 transcript (not the engine's own chunk 1).
    expected = {"s0": [ref([7]), ref([7, 8]), ref([7, 8, 9]), ref([7, 8, 9, 10])]}
    result = check_transcripts(expected, {"s0": [[7], [7, 8], [7, 8, 9], [7, 8, 9]]})
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("s0", 3)
    assert failure.data["reason"] == "stale"
    assert failure.message.startswith("stream s0 chunk 3 (final): stale")
    # the engine's chunk 2 equals the reference's chunk 2 here, so the own-repeat rule names it
    assert "chunk 2 transcript" in failure.message

    # engine's own chunk 1 differs ([7, 80]) so only the reference-repeat rule explains chunk 2
    result = check_transcripts(
        {"s0": [ref([7]), ref([7, 8], p1=TOL / 2), ref([7, 8, 9])]},
        {"s0": [[7], [7, 80], [7, 8]]},
    )
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("s0", 2)
    assert failure.data["reason"] == "stale"
    assert failure.data["first_difference"] == 2
    assert failure.message == (
        "stream s0 chunk 2 (final): stale, the reference's chunk 1 transcript instead of this "
        "chunk's; they differ at position 2"
    )
    assert result.stats["tolerated_tie_count"] == 1  # chunk 1 diverged at a near-tie


def test_empty_transcript_fails_as_empty() -> None:
    result = check_transcripts({"s0": S0}, {"s0": [[7], [], [7, 8, 9]]})
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("s0", 1)
    assert failure.data["reason"] == "empty"
    assert failure.message == (
        "stream s0 chunk 1 (partial): empty transcript, the reference has 2 tokens"
    )


def test_empty_first_transcript_is_empty_not_stale() -> None:
    result = check_transcripts({"s0": S0}, {"s0": [[], [], [7, 8, 9]]})
    assert [(f.position, f.data["reason"]) for f in result.failures] == [
        (0, "empty"),
        (1, "empty"),
    ]


def test_missing_answers_fail_and_last_chunk_is_final() -> None:
    result = check_transcripts({"s0": S0}, {"s0": [[7]]})
    assert not result.passed
    assert [(f.request_id, f.position) for f in result.failures] == [("s0", 1), ("s0", 2)]
    assert [f.data for f in result.failures] == [
        {"reason": "missing", "chunk": 1},
        {"reason": "missing", "chunk": 2},
    ]
    assert result.failures[0].message == "stream s0 chunk 1 (partial): no transcript came back"
    assert result.failures[1].message == "stream s0 chunk 2 (final): no transcript came back"
    assert result.stats["chunks"] == 3
    assert result.stats["equal_chunks"] == 1


def test_stream_absent_from_actual_is_all_missing() -> None:
    result = check_transcripts({"s0": S0, "s1": [ref([1])]}, {"s0": S0_TOKENS})
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("s1", 0)
    assert failure.data["reason"] == "missing"
    assert failure.message == "stream s1 chunk 0 (final): no transcript came back"


def test_divergence_at_near_tie_is_tolerated() -> None:
    expected = {"s0": [ref([7]), ref([7, 8, 9], p1=TOL / 2)]}
    # after the tie the contexts differ: the rest (and the length) is not compared
    result = check_transcripts(expected, {"s0": [[7], [7, 4, 4, 4]]})
    assert result.passed, result.summary
    assert result.stats["tolerated_tie_count"] == 1
    assert result.stats["equal_chunks"] == 2
    [tie] = result.stats["tolerated_ties"]
    assert tie["request_id"] == "s0#1"
    assert tie["position"] == 1
    assert (tie["expected"], tie["actual"]) == (8, 4)
    assert result.summary.endswith(", 1 tolerated tie")


def test_same_divergence_with_big_margin_is_a_mismatch() -> None:
    expected = {"s0": [ref([7]), ref([7, 8, 9], p1=2.5)]}
    result = check_transcripts(expected, {"s0": [[7], [7, 4, 9]]})
    assert not result.passed
    assert result.stats["tolerated_tie_count"] == 0
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("s0", 1)
    assert failure.data["reason"] == "mismatch"
    assert failure.data["first_difference"] == 1
    assert (failure.data["expected"], failure.data["actual"]) == (8, 4)
    assert failure.data["margin"] == 2.5
    assert failure.message.startswith(
        "stream s0 chunk 1 (final): position 1 expected 8 got 4 (margin 2.5 >= tie tolerance"
    )
    assert "request" not in failure.message


def test_tie_tolerance_decides_between_tie_and_mismatch() -> None:
    expected = {"s0": [ref([7, 8], p1=0.01)]}
    assert not check_transcripts(expected, {"s0": [[7, 4]]}).passed
    assert check_transcripts(expected, {"s0": [[7, 4]]}, tie_tolerance=0.1).passed
    with pytest.raises(ValueError, match="tie_tolerance"):
        check_transcripts(expected, {"s0": [[7, 8]]}, tie_tolerance=-1.0)


def test_too_short_transcript_keeps_the_token_checks_reason() -> None:
    result = check_transcripts({"s0": [ref([7, 8, 9])]}, {"s0": [[7, 8]]})
    [failure] = result.failures
    assert failure.data["reason"] == "too_short"
    assert failure.data["first_difference"] == 2
    assert failure.message.startswith("stream s0 chunk 0 (final): output too short")


def test_extra_transcripts_fail() -> None:
    result = check_transcripts({"s0": S0}, {"s0": [*S0_TOKENS, [7, 8, 9, 10]]})
    assert not result.passed
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("s0", 3)
    assert failure.data == {"reason": "extra_transcripts"}
    assert failure.message == "stream s0: 4 transcripts for 3 chunks"
    assert result.stats["equal_chunks"] == 3


def test_unknown_stream_fails() -> None:
    result = check_transcripts({"s0": S0}, {"s0": S0_TOKENS, "zz": [[1]]})
    assert not result.passed
    [failure] = result.failures
    assert (failure.request_id, failure.position) == ("zz", None)
    assert failure.data == {"reason": "extra_stream"}
    assert failure.message == "stream zz is not in the workload: unexpected transcripts"
    assert result.stats["streams"] == 1
    assert result.stats["equal_chunks"] == 3


# -- word_jaccard and check_word_overlap(measure="jaccard") ------------------------------------


def test_word_jaccard_identical_and_disjoint() -> None:
    assert word_jaccard("the cat sat", "the cat sat") == 1.0
    assert word_jaccard("the cat sat", "a dog ran") == 0.0
    assert word_jaccard("", "") == 1.0
    assert word_jaccard("words", "") == 0.0


def test_word_jaccard_ignores_order_case_punctuation_and_repeats() -> None:
    assert word_jaccard("The cat, sat!", "sat CAT the") == 1.0
    assert word_jaccard("go go go", "go") == 1.0


def test_word_jaccard_partial_overlap() -> None:
    assert word_jaccard("a b c", "b c d") == pytest.approx(0.5)
    assert word_jaccard("a b c d", "a") == pytest.approx(0.25)
    assert word_jaccard("a b", "b c d") == pytest.approx(1 / 4)


def test_check_word_overlap_jaccard_threshold() -> None:
    expected = {"s0": "a b c"}
    # jaccard 0.5: the "matched" measure gives 2/3 for the same pair, so the measure matters
    failing = check_word_overlap(expected, {"s0": "b c d"}, min_overlap=0.6, measure="jaccard")
    assert not failing.passed
    [failure] = failing.failures
    assert failure.request_id == "s0"
    assert failure.data["reason"] == "low_overlap"
    assert failure.data["overlap"] == pytest.approx(0.5)
    assert failing.stats["measure"] == "jaccard"
    assert failing.stats["overlaps"] == {"s0": pytest.approx(0.5)}
    assert "word overlap 0.500 < 0.6 required" in failure.message

    passing = check_word_overlap(expected, {"s0": "b c d"}, min_overlap=0.4, measure="jaccard")
    assert passing.passed, passing.summary
    assert passing.stats["lowest_overlap"] == pytest.approx(0.5)

    # order differs: jaccard 1.0 passes where the sequence measure would not
    shuffled = check_word_overlap(
        {"s0": "one two three four"},
        {"s0": "four three two one"},
        min_overlap=0.9,
        measure="jaccard",
    )
    assert shuffled.passed, shuffled.summary
    matched = check_word_overlap(
        {"s0": "one two three four"}, {"s0": "four three two one"}, min_overlap=0.9
    )
    assert not matched.passed


def test_check_word_overlap_unknown_measure_raises() -> None:
    with pytest.raises(ValueError, match="measure='cosine'"):
        check_word_overlap({"s0": "a"}, {"s0": "a"}, measure="cosine")

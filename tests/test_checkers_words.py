"""Word overlap: exact bounds and per-request failures that show where the texts part."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vibeserve.checkers import check_word_overlap, normalise_words, word_overlap

FAST = settings(max_examples=60, deadline=None)
words = st.lists(
    st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]), max_size=30
)


def test_normalisation() -> None:
    assert normalise_words("  Hello, WORLD!  It's\tfine…\n") == ["hello", "world", "its", "fine"]
    assert word_overlap("The cat sat.", "the CAT sat") == 1.0
    assert word_overlap("", "  ... ") == 1.0
    assert word_overlap("", "word") == 0.0


def test_overlap_counts_matching_blocks_over_longer_text() -> None:
    # 4 of 5 words match in order; the longer text has 5 words.
    assert word_overlap("a b c d e", "a b x d e") == pytest.approx(4 / 5)
    assert word_overlap("a b c d", "a b c d e f g h") == pytest.approx(4 / 8)


def test_close_texts_pass() -> None:
    expected = {"r0": "The quick brown fox jumps over the lazy dog."}
    result = check_word_overlap(expected, {"r0": "the quick brown fox jumped over the lazy dog"})
    assert result.passed, result.summary
    assert result.stats["overlaps"]["r0"] == pytest.approx(8 / 9)
    assert result.summary.startswith("words: 1/1 texts overlap >= 0.7, lowest 0.889")


def test_low_overlap_fails_naming_request_overlap_and_excerpts() -> None:
    expected = {
        "ok": "one two three",
        "r1": "the cat sat on the mat and looked out of the window",
    }
    actual = {"ok": "one two three", "r1": "the cat ate all the fish then slept"}
    result = check_word_overlap(expected, actual)
    assert not result.passed
    [failure] = result.failures
    overlap = result.stats["overlaps"]["r1"]
    assert overlap < 0.7
    assert (failure.request_id, failure.position) == ("r1", 2)
    assert failure.data["overlap"] == overlap
    assert failure.message == (
        f"request r1: word overlap {overlap:.3f} < 0.7 required; first difference at word 2: "
        "expected 'the cat sat on the mat and looked out of the window', "
        "got 'the cat ate all the fish then slept'"
    )
    assert "FAILED: request r1: word overlap" in result.summary


def test_excerpt_starts_near_the_first_difference() -> None:
    reference = " ".join(f"w{i}" for i in range(20))
    result = check_word_overlap({"r": reference}, {"r": "w0 w1 w2 w3 w4 x y z"})
    [failure] = result.failures
    assert failure.position == 5
    assert failure.data["expected_excerpt"] == "... w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 ..."
    assert failure.data["actual_excerpt"] == "... w2 w3 w4 x y z"


def test_missing_and_extra_texts_fail() -> None:
    result = check_word_overlap({"a": "x"}, {"b": "x"})
    assert [(f.request_id, f.data["reason"]) for f in result.failures] == [
        ("a", "missing_request"),
        ("b", "extra_request"),
    ]


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="min_overlap must be a fraction in"):
        check_word_overlap({}, {}, min_overlap=1.2)
    with pytest.raises(TypeError, match=r"actual\['a'\] is int; pass the decoded text"):
        check_word_overlap({"a": "x"}, {"a": 3})  # type: ignore[dict-item]


@FAST
@given(text=words)
def test_property_identical_is_one(text: list[str]) -> None:
    joined = " ".join(text)
    assert word_overlap(joined, joined.upper() + "!") == 1.0


@FAST
@given(a=st.lists(st.sampled_from(["x", "y", "z"]), min_size=1), b=words.filter(bool))
def test_property_disjoint_is_zero(a: list[str], b: list[str]) -> None:
    assert word_overlap(" ".join(a), " ".join(b)) == 0.0


@FAST
@given(a=words, b=words)
def test_property_bounded_and_symmetric_ish(a: list[str], b: list[str]) -> None:
    forward, backward = (
        word_overlap(" ".join(a), " ".join(b)),
        word_overlap(" ".join(b), " ".join(a)),
    )
    assert 0.0 <= forward <= 1.0
    assert 0.0 <= backward <= 1.0
    # difflib's greedy blocks need not be symmetric, but with no junk heuristic any shared word
    # is found from either side, and a perfect score needs identical word lists.
    if a or b:
        shares_a_word = bool(set(a) & set(b))
        assert (forward > 0.0) == shares_a_word
        assert (backward > 0.0) == shares_a_word
    assert (forward == 1.0) == (a == b)

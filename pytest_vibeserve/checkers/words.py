"""Word-level overlap between a reference text and an engine's text.

Overlap (``measure="matched"``) is the number of words in difflib's matching blocks over the longer
word list, so it is 1.0 only for identical normalised texts and drops with every inserted, deleted
or changed word. ``measure="jaccard"`` is the paper's transcript gate: the Jaccard index of the two
normalised word *sets* (order and repeats ignored).
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Mapping
from typing import Any

from .result import CheckResult, Failure, build_result, check_fraction, extra_id_failures

NAME = "words"

EXCERPT_WORDS = 12  # words shown per side in a failure, starting just before the first difference
EXCERPT_LEAD = 3  # of those, how many come before the first difference


def normalise_words(text: str) -> list[str]:
    """Lowercase, drop punctuation (any Unicode P* character), split on whitespace."""
    kept = "".join(ch for ch in text.lower() if not unicodedata.category(ch).startswith("P"))
    return kept.split()


def word_overlap(a: str, b: str) -> float:
    """Matched words / max(word counts), in [0, 1]; two texts without words overlap fully."""
    return _overlap(normalise_words(a), normalise_words(b))


def word_jaccard(a: str, b: str) -> float:
    """|A & B| / |A | B| over the normalised word sets; two texts without words give 1.0."""
    left, right = set(normalise_words(a)), set(normalise_words(b))
    return len(left & right) / len(left | right) if left | right else 1.0


def check_word_overlap(
    expected: Mapping[str, str],
    actual: Mapping[str, str],
    *,
    min_overlap: float = 0.7,
    measure: str = "matched",
) -> CheckResult:
    """Every actual text must reach ``min_overlap`` word overlap with its reference."""
    check_fraction("min_overlap", min_overlap)
    if measure not in ("matched", "jaccard"):
        raise ValueError(f"measure={measure!r}: use 'matched' (difflib blocks) or 'jaccard'")
    for label, texts in (("expected", expected), ("actual", actual)):
        for request_id, text in texts.items():
            if not isinstance(text, str):
                raise TypeError(
                    f"{label}[{request_id!r}] is {type(text).__name__}; pass the decoded text"
                )

    failures: list[Failure] = []
    overlaps: dict[str, float] = {}
    for request_id, reference in expected.items():
        if request_id not in actual:
            failures.append(
                Failure(
                    request_id,
                    None,
                    f"request {request_id} is missing from the actual outputs",
                    {"reason": "missing_request"},
                )
            )
            continue
        ref_words, hyp_words = normalise_words(reference), normalise_words(actual[request_id])
        if measure == "jaccard":
            overlap = word_jaccard(reference, actual[request_id])
        else:
            overlap = _overlap(ref_words, hyp_words)
        overlaps[request_id] = overlap
        if overlap < min_overlap:
            failures.append(_low_overlap(request_id, ref_words, hyp_words, overlap, min_overlap))
    failures += extra_id_failures(NAME, set(expected), list(actual), "texts")

    failed = {f.request_id for f in failures} & set(expected)
    lowest = min(overlaps.values(), default=None)
    mean = sum(overlaps.values()) / len(overlaps) if overlaps else None
    head = f"{len(expected) - len(failed)}/{len(expected)} texts overlap >= {min_overlap:g}"
    if overlaps:
        head += f", lowest {lowest:.3f}, mean {mean:.3f}"
    stats: dict[str, Any] = {
        "requests": len(expected),
        "overlaps": overlaps,
        "lowest_overlap": lowest,
        "mean_overlap": mean,
        "min_overlap": min_overlap,
        "measure": measure,
    }
    return build_result(NAME, head, failures, stats)


def _overlap(ref: list[str], hyp: list[str]) -> float:
    if not ref and not hyp:
        return 1.0
    matcher = difflib.SequenceMatcher(None, ref, hyp, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return matched / max(len(ref), len(hyp))


def _low_overlap(
    request_id: str, ref: list[str], hyp: list[str], overlap: float, min_overlap: float
) -> Failure:
    first = next(
        (i for i, (r, h) in enumerate(zip(ref, hyp, strict=False)) if r != h),
        min(len(ref), len(hyp)),
    )
    start = max(0, first - EXCERPT_LEAD)
    ref_excerpt = _excerpt(ref, start)
    hyp_excerpt = _excerpt(hyp, start)
    return Failure(
        request_id,
        first,
        f"request {request_id}: word overlap {overlap:.3f} < {min_overlap:g} required; first "
        f"difference at word {first}: expected {ref_excerpt!r}, got {hyp_excerpt!r}",
        {
            "reason": "low_overlap",
            "overlap": overlap,
            "min_overlap": min_overlap,
            "first_difference": first,
            "expected_words": len(ref),
            "actual_words": len(hyp),
            "expected_excerpt": ref_excerpt,
            "actual_excerpt": hyp_excerpt,
        },
    )


def _excerpt(words: list[str], start: int) -> str:
    shown = words[start : start + EXCERPT_WORDS]
    prefix = "... " if start > 0 else ""
    suffix = " ..." if start + EXCERPT_WORDS < len(words) else ""
    return prefix + " ".join(shown) + suffix

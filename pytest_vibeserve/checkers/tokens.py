"""Greedy token equality against a reference, tolerating divergence only at near-ties.

Two correct engines can legitimately pick different tokens where the reference's top-1 and top-2
logits are within floating-point noise; after that the contexts differ, so nothing later is
comparable. That is vLLM's tie-aware rule: the first divergence is forgiven only when the
reference margin there is below ``tie_tolerance``, and comparison of that request stops.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .result import CheckResult, Failure, build_result, check_non_negative, extra_id_failures

NAME = "tokens"


@dataclass(frozen=True, slots=True)
class ExpectedTokens:
    """The reference's greedy output for one request.

    ``margins[i]`` is the reference's top-1 minus top-2 logit at generated position ``i``.
    """

    tokens: list[int]
    margins: list[float]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.margins):
            raise ValueError(
                f"ExpectedTokens needs one margin per token: got {len(self.tokens)} tokens and "
                f"{len(self.margins)} margins; pass margins[i] = top-1 minus top-2 logit at "
                "generated position i"
            )
        for position, token in enumerate(self.tokens):
            if isinstance(token, bool) or not hasattr(token, "__index__"):
                raise TypeError(
                    f"ExpectedTokens.tokens[{position}] is {token!r}; token ids are ints"
                )
        for position, margin in enumerate(self.margins):
            if not (math.isfinite(margin) and margin >= 0.0):
                raise ValueError(
                    f"ExpectedTokens.margins[{position}] is {margin!r}; a top-1 minus top-2 "
                    "logit margin is a finite number >= 0"
                )


def check_token_equality(
    expected: Mapping[str, ExpectedTokens],
    actual: Mapping[str, Sequence[int]],
    *,
    tie_tolerance: float = 1e-3,
) -> CheckResult:
    """Compare each request's actual tokens with the reference, forgiving only a first near-tie."""
    check_non_negative("tie_tolerance", tie_tolerance)
    for request_id, reference in expected.items():
        if not isinstance(reference, ExpectedTokens):
            raise TypeError(
                f"expected[{request_id!r}] is {type(reference).__name__}; pass "
                "ExpectedTokens(tokens=[...], margins=[...])"
            )
    actual_tokens = {request_id: _as_ints(request_id, seq) for request_id, seq in actual.items()}

    failures: list[Failure] = []
    ties: list[dict[str, Any]] = []
    compared = 0
    min_margin: float | None = None
    for request_id, reference in expected.items():
        if request_id not in actual_tokens:
            failures.append(
                Failure(
                    request_id=request_id,
                    position=None,
                    message=f"request {request_id} is missing from the actual outputs "
                    f"(expected {len(reference.tokens)} tokens)",
                    data={"reason": "missing_request", "expected_length": len(reference.tokens)},
                )
            )
            continue
        outcome = compare_tokens(request_id, reference, actual_tokens[request_id], tie_tolerance)
        compared += outcome.compared
        if outcome.min_margin is not None:
            min_margin = (
                outcome.min_margin if min_margin is None else min(min_margin, outcome.min_margin)
            )
        if outcome.failure is not None:
            failures.append(outcome.failure)
        if outcome.tie is not None:
            ties.append(outcome.tie)
    failures += extra_id_failures(NAME, set(expected), list(actual_tokens), "requests")

    failed_expected = {f.request_id for f in failures if f.request_id in expected}
    equal = len(expected) - len(failed_expected)
    head = f"{equal}/{len(expected)} requests equal, {len(ties)} tolerated tie" + (
        "" if len(ties) == 1 else "s"
    )
    stats: dict[str, Any] = {
        "requests": len(expected),
        "equal_requests": equal,
        "failed_requests": len({f.request_id for f in failures}),
        "compared_tokens": compared,
        "tolerated_ties": ties,
        "tolerated_tie_count": len(ties),
        # Smallest reference margin among positions where the engines agreed: the closest call.
        "min_margin": min_margin,
        "tie_tolerance": tie_tolerance,
    }
    return build_result(NAME, head, failures, stats)


@dataclass(frozen=True, slots=True)
class _Outcome:
    compared: int
    min_margin: float | None
    failure: Failure | None
    tie: dict[str, Any] | None


def compare_tokens(
    request_id: str, reference: ExpectedTokens, got: list[int], tie_tolerance: float
) -> _Outcome:
    want = reference.tokens
    min_margin: float | None = None
    for position in range(min(len(want), len(got))):
        margin = reference.margins[position]
        if want[position] == got[position]:
            min_margin = margin if min_margin is None else min(min_margin, margin)
            continue
        details = {
            "expected": want[position],
            "actual": got[position],
            "margin": margin,
            "tie_tolerance": tie_tolerance,
        }
        if margin < tie_tolerance:
            tie = {"request_id": request_id, "position": position, **details}
            return _Outcome(position + 1, min_margin, None, tie)
        failure = Failure(
            request_id=request_id,
            position=position,
            message=f"request {request_id} position {position} expected {want[position]} "
            f"got {got[position]} (margin {margin:.4g} >= tie tolerance {tie_tolerance:g})",
            data={"reason": "mismatch", **details},
        )
        return _Outcome(position + 1, min_margin, failure, None)

    compared = min(len(want), len(got))
    if len(got) == len(want):
        return _Outcome(compared, min_margin, None, None)
    position = compared
    lengths = {"expected_length": len(want), "actual_length": len(got)}
    if len(got) < len(want):
        message = (
            f"request {request_id} output too short: got {len(got)} tokens, expected "
            f"{len(want)}; position {position} should be {want[position]}"
        )
        data = {"reason": "too_short", "expected": want[position], **lengths}
    else:
        message = (
            f"request {request_id} output too long: got {len(got)} tokens, expected "
            f"{len(want)}; extra token {got[position]} at position {position}"
        )
        data = {"reason": "too_long", "actual": got[position], **lengths}
    return _Outcome(compared, min_margin, Failure(request_id, position, message, data), None)


def _as_ints(request_id: str, tokens: Sequence[int]) -> list[int]:
    if isinstance(tokens, str | bytes):
        raise TypeError(f"actual[{request_id!r}] is a string; pass the token ids as a list of int")
    try:
        return [operator.index(token) for token in tokens]
    except TypeError as error:
        raise TypeError(
            f"actual[{request_id!r}] must be a sequence of int token ids ({error})"
        ) from None

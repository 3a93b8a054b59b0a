"""Top-k logprob closeness against a reference, position by position.

Each position holds a ``{token_id: logprob}`` dict. Values of tokens present on both sides must
agree within ``atol`` (nats). A token that only one side lists is only wrong when it beats the
other side's weakest listed token by more than ``atol``: then it should have been in that side's
top-k too, so the top-k sets genuinely disagree rather than differ by a near-tie at the cut-off.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .result import CheckResult, Failure, build_result, check_non_negative, extra_id_failures

NAME = "logprobs"

TopK = dict[int, float]


def check_logprob_closeness(
    expected: Mapping[str, list[dict[int, float]]],
    actual: Mapping[str, list[dict[int, float]]],
    *,
    atol: float = 1e-3,
    expected_tokens: Mapping[str, Sequence[int]] | None = None,
) -> CheckResult:
    """Compare per-position top-k logprobs; report each request's first failing position.

    ``expected_tokens`` (optional) are the reference's generated tokens. With them, the reference
    token must appear in the actual top-k, and once the actual top-1 differs from it the request
    stops being compared after that position: later positions condition on different prefixes.
    """
    check_non_negative("atol", atol)
    ref = {rid: _as_positions(f"expected[{rid!r}]", steps) for rid, steps in expected.items()}
    got = {rid: _as_positions(f"actual[{rid!r}]", steps) for rid, steps in actual.items()}
    chosen = _validate_tokens(expected_tokens, ref)

    failures: list[Failure] = []
    tally = _Tally()
    for request_id, ref_steps in ref.items():
        if request_id not in got:
            failures.append(
                Failure(
                    request_id=request_id,
                    position=None,
                    message=f"request {request_id} is missing from the actual logprobs "
                    f"(expected {len(ref_steps)} positions)",
                    data={"reason": "missing_request", "expected_positions": len(ref_steps)},
                )
            )
            continue
        tokens = None if chosen is None else chosen[request_id]
        failures += _compare_request(request_id, ref_steps, got[request_id], tokens, atol, tally)
    failures += extra_id_failures(NAME, set(ref), list(got), "logprobs")

    failed = {f.request_id for f in failures}
    head = (
        f"{len(ref) - len(failed & set(ref))}/{len(ref)} requests within atol {atol:g}, "
        f"max abs diff {tally.max_abs_diff:.3g} over {tally.compared_values} values"
    )
    stats: dict[str, Any] = {
        "requests": len(ref),
        "failed_requests": len(failed),
        "compared_positions": tally.compared_positions,
        "compared_values": tally.compared_values,
        "failed_positions": tally.failed_positions,
        "max_abs_diff": tally.max_abs_diff,
        "stopped_after_divergence": tally.stopped,
        "atol": atol,
    }
    return build_result(NAME, head, failures, stats)


@dataclass(slots=True)
class _Tally:
    compared_positions: int = 0
    compared_values: int = 0
    failed_positions: int = 0
    max_abs_diff: float = 0.0
    stopped: dict[str, int] = field(default_factory=dict)  # request id -> last compared position


def _compare_request(
    request_id: str,
    ref_steps: list[TopK],
    got_steps: list[TopK],
    tokens: list[int] | None,
    atol: float,
    tally: _Tally,
) -> list[Failure]:
    failures: list[Failure] = []
    first_failing: int | None = None
    for position in range(min(len(ref_steps), len(got_steps))):
        ref_top, got_top = ref_steps[position], got_steps[position]
        problems = _compare_position(request_id, position, ref_top, got_top, atol, tally)
        if tokens is not None and tokens[position] not in got_top:
            problems.append(
                Failure(
                    request_id=request_id,
                    position=position,
                    message=f"request {request_id} position {position}: reference token "
                    f"{tokens[position]} is missing from the actual top-{len(got_top)}",
                    data={"reason": "reference_token_missing", "token": tokens[position]},
                )
            )
        tally.compared_positions += 1
        if problems:
            tally.failed_positions += 1
            if first_failing is None:
                # Everything after a request's first bad position is likely fallout from it.
                first_failing = position
                failures += problems
        if (
            tokens is not None
            and got_top
            and max(got_top, key=got_top.__getitem__) != tokens[position]
        ):
            tally.stopped[request_id] = position
            return failures
    if len(ref_steps) != len(got_steps):
        failures.append(
            Failure(
                request_id=request_id,
                position=min(len(ref_steps), len(got_steps)),
                message=f"request {request_id} has {len(got_steps)} logprob positions, "
                f"expected {len(ref_steps)}",
                data={
                    "reason": "position_count",
                    "expected_positions": len(ref_steps),
                    "actual_positions": len(got_steps),
                },
            )
        )
    return failures


def _compare_position(
    request_id: str, position: int, ref_top: TopK, got_top: TopK, atol: float, tally: _Tally
) -> list[Failure]:
    where = f"request {request_id} position {position}"
    if not ref_top or not got_top:
        if ref_top == got_top:
            return []
        empty = "actual" if not got_top else "expected"
        return [
            Failure(
                request_id=request_id,
                position=position,
                message=f"{where}: {empty} top-k is empty while the other side lists "
                f"{len(ref_top) or len(got_top)} tokens",
                data={"reason": "empty_top_k", "expected": ref_top, "actual": got_top},
            )
        ]

    problems: list[Failure] = []
    for token in sorted(ref_top.keys() & got_top.keys()):
        want, have = ref_top[token], got_top[token]
        diff = 0.0 if want == have else abs(have - want)  # equal -infs would give nan
        tally.compared_values += 1
        if math.isnan(diff) or diff > tally.max_abs_diff:
            tally.max_abs_diff = diff
        if not diff <= atol:  # written this way so nan fails
            problems.append(
                Failure(
                    request_id=request_id,
                    position=position,
                    message=f"{where} token {token}: expected logprob {want:.6g}, got {have:.6g} "
                    f"(|diff| {diff:.3g} > atol {atol:g})",
                    data={
                        "reason": "logprob_diff",
                        "token": token,
                        "expected": want,
                        "actual": have,
                        "diff": diff,
                        "atol": atol,
                    },
                )
            )
    problems += _outsiders(where, request_id, position, got_top, ref_top, "actual", atol)
    problems += _outsiders(where, request_id, position, ref_top, got_top, "expected", atol)
    return problems


def _outsiders(
    where: str,
    request_id: str,
    position: int,
    side: TopK,
    other: TopK,
    side_name: str,
    atol: float,
) -> list[Failure]:
    """Tokens listed only by ``side`` that beat ``other``'s weakest listed logprob by > atol."""
    other_name = "expected" if side_name == "actual" else "actual"
    floor = min(other.values())
    problems = []
    for token in sorted(side.keys() - other.keys()):
        value = side[token]
        if value - floor > atol:
            problems.append(
                Failure(
                    request_id=request_id,
                    position=position,
                    message=f"{where}: top-k sets disagree: token {token} has {side_name} "
                    f"logprob {value:.6g} but is absent from the {other_name} top-{len(other)}, "
                    f"whose lowest logprob is {floor:.6g} (exceeds it by {value - floor:.3g} > "
                    f"atol {atol:g})",
                    data={
                        "reason": "top_k_mismatch",
                        "token": token,
                        "listed_by": side_name,
                        "logprob": value,
                        "other_min_logprob": floor,
                        "expected_top_k": sorted(other if side_name == "actual" else side),
                        "actual_top_k": sorted(side if side_name == "actual" else other),
                        "atol": atol,
                    },
                )
            )
    return problems


def _as_positions(label: str, steps: Any) -> list[TopK]:
    if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, Sequence):
        raise TypeError(
            f"{label} must be a list with one {{token_id: logprob}} dict per generated position, "
            f"got {type(steps).__name__}"
        )
    positions: list[TopK] = []
    for position, top in enumerate(steps):
        if not isinstance(top, Mapping):
            raise TypeError(
                f"{label}[{position}] must be a {{token_id: logprob}} dict, "
                f"got {type(top).__name__}"
            )
        try:
            positions.append({operator.index(tok): float(lp) for tok, lp in top.items()})
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"{label}[{position}] must map int token ids to float logprobs ({error})"
            ) from None
    return positions


def _validate_tokens(
    expected_tokens: Mapping[str, Sequence[int]] | None, ref: dict[str, list[TopK]]
) -> dict[str, list[int]] | None:
    if expected_tokens is None:
        return None
    unknown = sorted(set(expected_tokens) - set(ref))
    if unknown:
        raise ValueError(
            f"expected_tokens has request ids {unknown} that expected does not; pass tokens only "
            "for the requests whose logprobs are in expected"
        )
    chosen: dict[str, list[int]] = {}
    for request_id, steps in ref.items():
        if request_id not in expected_tokens:
            raise ValueError(
                f"expected_tokens has no entry for request {request_id!r}; pass the reference's "
                "generated tokens for every request in expected, or expected_tokens=None"
            )
        tokens = [operator.index(token) for token in expected_tokens[request_id]]
        if len(tokens) != len(steps):
            raise ValueError(
                f"expected_tokens[{request_id!r}] has {len(tokens)} tokens but expected has "
                f"{len(steps)} logprob positions; they must be the same generation"
            )
        chosen[request_id] = tokens
    return chosen

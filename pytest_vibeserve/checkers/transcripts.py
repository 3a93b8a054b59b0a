"""Streaming transcripts: every partial and the final transcript of every stream, token-exact.

Each chunk of an audio stream is answered by one transcript of all the audio so far. The check
compares each with the reference's transcript for the same audio (tie-aware, as the token check:
a first divergence is forgiven only where the reference's top-2 logit margin is below the
tolerance). A wrong transcript is diagnosed where the cause is plain: an empty one, or a stale one
(the engine's own previous transcript, or the reference's for the previous chunk, sent again
where the reference's changed; a chunk that adds no audio, as an empty final one, rightly repeats).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .result import CheckResult, Failure, build_result, check_non_negative
from .tokens import ExpectedTokens, compare_tokens

NAME = "transcripts"


def check_transcripts(
    expected: Mapping[str, Sequence[ExpectedTokens]],
    actual: Mapping[str, Sequence[Sequence[int]]],
    *,
    tie_tolerance: float = 1e-3,
) -> CheckResult:
    """``expected[stream]``: the reference transcript after each chunk; ``actual[stream]``: the
    engine's answers to the chunks, in order (fewer than the chunks when some went unanswered)."""
    check_non_negative("tie_tolerance", tie_tolerance)
    failures: list[Failure] = []
    ties: list[dict[str, Any]] = []
    chunks = equal = compared = 0
    for stream_id, wanted in expected.items():
        got = [list(tokens) for tokens in actual.get(stream_id, ())]
        if len(got) > len(wanted):
            failures.append(
                Failure(
                    stream_id,
                    len(wanted),
                    f"stream {stream_id}: {len(got)} transcripts for {len(wanted)} chunks",
                    {"reason": "extra_transcripts"},
                )
            )
        for index, reference in enumerate(wanted):
            chunks += 1
            kind = "final" if index == len(wanted) - 1 else "partial"
            where = f"stream {stream_id} chunk {index} ({kind})"
            if index >= len(got):
                failures.append(
                    Failure(
                        stream_id,
                        index,
                        f"{where}: no transcript came back",
                        {"reason": "missing", "chunk": index},
                    )
                )
                continue
            outcome = compare_tokens(f"{stream_id}#{index}", reference, got[index], tie_tolerance)
            compared += outcome.compared
            if outcome.tie is not None:
                ties.append(outcome.tie)
            if outcome.failure is None:
                equal += 1
                continue
            failures.append(_diagnose(where, stream_id, index, reference, got, wanted, outcome))
    for stream_id in actual:
        if stream_id not in expected:
            failures.append(
                Failure(
                    stream_id,
                    None,
                    f"stream {stream_id} is not in the workload: unexpected transcripts",
                    {"reason": "extra_stream"},
                )
            )
    head = f"{equal}/{chunks} chunk transcripts equal over {len(expected)} stream(s)"
    head += f", {len(ties)} tolerated tie" + ("" if len(ties) == 1 else "s")
    stats = {
        "streams": len(expected),
        "chunks": chunks,
        "equal_chunks": equal,
        "compared_tokens": compared,
        "tolerated_ties": ties,
        "tolerated_tie_count": len(ties),
        "tie_tolerance": tie_tolerance,
    }
    return build_result(NAME, head, failures, stats)


def _diagnose(
    where: str,
    stream_id: str,
    index: int,
    reference: ExpectedTokens,
    got: list[list[int]],
    wanted: Sequence[ExpectedTokens],
    outcome: Any,
) -> Failure:
    tokens = got[index]
    data = {"chunk": index, **outcome.failure.data, "first_difference": outcome.failure.position}
    if not tokens:
        reason = "empty"
        message = f"{where}: empty transcript, the reference has {len(reference.tokens)} tokens"
    elif index > 0 and tokens == got[index - 1] and reference.tokens != wanted[index - 1].tokens:
        reason = "stale"
        message = (
            f"{where}: stale, the same {len(tokens)} tokens as its chunk {index - 1} transcript "
            "(the new audio changed nothing); the reference's differ at position "
            f"{outcome.failure.position}"
        )
    elif index > 0 and tokens == list(wanted[index - 1].tokens):
        reason = "stale"
        message = (
            f"{where}: stale, the reference's chunk {index - 1} transcript instead of this "
            f"chunk's; they differ at position {outcome.failure.position}"
        )
    else:
        reason = outcome.failure.data.get("reason", "mismatch")
        label = f"request {stream_id}#{index} "
        message = f"{where}: {outcome.failure.message.replace(label, '', 1)}"
    return Failure(stream_id, index, message, {**data, "reason": reason})

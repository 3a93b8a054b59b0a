"""Workloads of scenario ``predicted_outputs``: code-edit requests that carry an OpenAI prediction.

Two ways to get a prediction, chosen per scale by ``prediction`` in scenario.toml:
- ``as_sent``: the code as sent (what a real client sends). Only requests whose reference output
  overlaps the prediction the way real code-edit replies do are kept (``min_overlap_ratio``).
- ``perturbed``: for random-weight models, which never copy their prompt: the reference output with
  seeded substitutions, insertions and deletions in a few spans, so an engine has to verify and
  re-align, never trust.
Greedy output does not depend on the prediction, so the expected output is the reference's.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

from pytest_vibeserve.contract import Request
from pytest_vibeserve.metrics import median
from pytest_vibeserve.reference import Reference, ReferenceOutput
from pytest_vibeserve.workload import Workload
from pytest_vibeserve.workloads.code_edit import (
    build_code_edit_requests,
    perturb_prediction,
    prediction_overlap,
    render_prompt,
    select_copying_cases,
)

PREDICTION_MODES = ("as_sent", "perturbed")
WARMUP_TOKENS = 8
# Candidates whose reference outputs are computed together: the reference decodes them in one
# batch, at the cpu scale several times the throughput of one at a time (16 candidates of 256
# tokens: ~50 s in one batch, ~90 s as two batches of 8, ~150 s one at a time).
REFERENCE_CHUNK = 16


def _param(params: dict[str, Any], key: str, kind: type) -> Any:
    if key not in params:
        raise ValueError(f"scenario workload needs {key!r} (set it under [workload] or [scales.*])")
    return kind(params[key])


def build_workload(
    params: dict[str, Any], tokenizer: Any, reference: Reference, seed: int
) -> Workload:
    n = _param(params, "requests", int)
    max_new_tokens = _param(params, "max_new_tokens", int)
    mode = params.get("prediction", "as_sent")
    if mode not in PREDICTION_MODES:
        raise ValueError(f"prediction = {mode!r}; use one of {PREDICTION_MODES}")
    candidates = int(params.get("candidates", n)) if mode == "as_sent" else n
    cases = build_code_edit_requests(candidates, seed)
    stop = () if tokenizer.eos_token_id is None else (int(tokenizer.eos_token_id),)
    plain = [
        Request(f"edit-{i}", tuple(render_prompt(case.messages, tokenizer)), max_new_tokens, stop)
        for i, case in enumerate(cases)
    ]
    if mode == "as_sent":
        min_ratio = float(params.get("min_overlap_ratio", 0.5))
        predictions = [tokenizer.encode(c.prediction_text, add_special_tokens=False) for c in cases]
        # Reference outputs in chunks, stopping once n requests copy their prediction: at the
        # cpu scale each candidate costs seconds of greedy decoding.
        expected: dict[str, ReferenceOutput] = {}
        qualified = 0
        step = max(2 * n, REFERENCE_CHUNK)
        for start in range(0, len(plain), step):
            if qualified >= n:
                break
            chunk = plain[start : start + step]
            expected.update(reference.generate(chunk))
            qualified += sum(
                prediction_overlap(predictions[i], expected[r.request_id].tokens).difflib_ratio
                >= min_ratio
                for i, r in enumerate(chunk, start)
            )
        examined = len(expected)
        cases, plain, predictions = cases[:examined], plain[:examined], predictions[:examined]
        outputs = [expected[r.request_id].tokens for r in plain]
        keep = select_copying_cases(cases, outputs, predictions, min_ratio=min_ratio, n=n)
    else:
        expected = reference.generate(plain)
        outputs = [expected[r.request_id].tokens for r in plain]
        rng = random.Random(f"predicted_outputs:{seed}")
        vocab = len(tokenizer)
        spans = int(params.get("perturb_spans", 3))
        predictions = [
            perturb_prediction(out, rng, vocab_size=vocab, n_spans=spans).tokens for out in outputs
        ]
        keep = list(range(n))
    requests = tuple(
        dataclasses.replace(plain[i], prediction_token_ids=tuple(predictions[i])) for i in keep
    )
    overlaps = [prediction_overlap(predictions[i], outputs[i]) for i in keep]
    stats = {
        "prediction": mode,
        "requests": len(requests),
        "candidates": len(cases),
        "prompt_tokens_median": median([len(r.prompt_token_ids) for r in requests]),
        "output_tokens_total": sum(len(outputs[i]) for i in keep),
        "overlap_ratio_median": median([o.difflib_ratio for o in overlaps]),
        "accepted_per_16_median": median([o.accepted_per_block(16) for o in overlaps]),
        "functions": ", ".join(cases[i].function for i in keep),
    }
    warmup = (
        dataclasses.replace(
            requests[0], request_id="warmup-0", max_new_tokens=min(WARMUP_TOKENS, max_new_tokens)
        ),
    )
    return Workload(
        name=f"code-edit-seed{seed}",
        requests=requests,
        expected={r.request_id: expected[r.request_id] for r in requests},
        concurrency=int(params.get("concurrency", 1)),
        warmup=warmup,
        stats=stats,
    )


def with_predictions(
    workload: Workload, name: str, make: Callable[[Request, ReferenceOutput], Sequence[int] | None]
) -> Workload:
    """The same requests and expected outputs with other predictions (greedy ignores them)."""
    requests = tuple(
        dataclasses.replace(
            r,
            prediction_token_ids=None
            if (p := make(r, workload.expected[r.request_id])) is None
            else tuple(p),
        )
        for r in workload.requests
    )
    return dataclasses.replace(workload, name=f"{workload.name}-{name}", requests=requests)


def trap_prediction(seed: int) -> Callable[[Request, ReferenceOutput], list[int]]:
    """A prediction that agrees with the output except one token mid-way, and runs on past its end.

    An engine that trusts the prediction emits the wrong token or overruns the stop token.
    """

    def make(request: Request, expected: ReferenceOutput) -> list[int]:
        rng = random.Random(f"trap:{seed}:{request.request_id}")
        tokens = list(expected.tokens)
        # tokens of the output itself, so the trap stays inside the vocabulary
        others = sorted(set(tokens) | set(request.prompt_token_ids))
        at = rng.randrange(len(tokens))
        tokens[at] = rng.choice([t for t in others if t != tokens[at]] or [tokens[at]])
        return tokens + [rng.choice(others) for _ in range(32)]

    return make

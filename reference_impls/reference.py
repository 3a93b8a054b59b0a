"""Compute reference greedy outputs in a process of their own.

    python -m reference_impls.reference --model DIR --requests in.json --out out.json \
        [--threads N] [--device cpu] [--dtype float32] [--top-k 5] [--batch 16]

in.json: a list of contract `Request.to_dict()` dicts; one with a ``response_format`` is decoded
under the pinned grammar engine (reference_impls/constrained.py), alone. out.json (written
atomically): request_id -> {"tokens", "margins", "top_logprobs"}. Requests are decoded in
left-padded batches of up to ``--batch`` (1 = one at a time through the stepper the hf_greedy
baseline uses); the output is written after every batch. Progress goes to stderr, one line per
batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pytest_vibeserve.contract import Request
from reference_impls.files import write_text_atomic
from reference_impls.greedy import (
    DTYPE_NAMES,
    BatchItem,
    greedy_decode,
    greedy_decode_batch,
    load_model,
)


def read_requests(path: Path) -> list[Request]:
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of Request dicts, got {type(data).__name__}"
        )
    requests = [Request.from_dict(item) for item in data]
    ids = [r.request_id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: request_id values must be unique")
    return requests


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reference_impls.reference", description=__doc__
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument(
        "--batch", type=int, default=16, help="requests decoded together. Default: 16"
    )
    args = parser.parse_args(argv)

    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    requests = read_requests(args.requests)
    model = load_model(args.model, device=args.device, dtype=args.dtype, threads=args.threads)
    results: dict[str, dict] = {}
    for first in range(0, len(requests), args.batch):
        batch = requests[first : first + args.batch]
        start = time.perf_counter()
        if any(r.response_format is not None for r in batch):
            outputs = [_constrained(model, args.model, r, args.top_k) for r in batch]
        elif len(batch) == 1:
            (request,) = batch
            outputs = [
                greedy_decode(
                    model,
                    request.prompt_token_ids,
                    request.max_new_tokens,
                    stop_token_ids=request.stop_token_ids,
                    top_k=max(args.top_k, request.top_logprobs),
                )
            ]
        else:
            items = [
                BatchItem(
                    r.prompt_token_ids,
                    r.max_new_tokens,
                    r.stop_token_ids,
                    top_k=max(args.top_k, r.top_logprobs),
                )
                for r in batch
            ]
            outputs = greedy_decode_batch(model, items)
        elapsed = time.perf_counter() - start
        tokens = 0
        for request, out in zip(batch, outputs, strict=True):
            results[request.request_id] = out.to_dict()
            tokens += len(out.tokens)
        print(
            f"[reference {first + len(batch)}/{len(requests)}] {len(batch)} request(s): "
            f"{tokens} tokens in {elapsed:.2f} s ({tokens / elapsed:.1f} tok/s)",
            file=sys.stderr,
            flush=True,
        )
        # after every batch, so an interrupted run keeps what it finished
        write_text_atomic(args.out, json.dumps(results))
    if not requests:
        write_text_atomic(args.out, json.dumps(results))


def _constrained(model, model_dir: Path, request: Request, top_k: int):
    """A request with a response_format: the pinned grammar engine's constrained greedy decoding
    (reference_impls/constrained.py), one request at a time; a plain one in the same batch the
    plain greedy stepper."""
    if request.response_format is None:
        return greedy_decode(
            model,
            request.prompt_token_ids,
            request.max_new_tokens,
            stop_token_ids=request.stop_token_ids,
            top_k=max(top_k, request.top_logprobs),
        )
    from reference_impls.constrained import constrained_decode

    return constrained_decode(
        model,
        model_dir,
        request.prompt_token_ids,
        request.max_new_tokens,
        request.response_format,
        stop_token_ids=request.stop_token_ids,
        top_k=max(top_k, request.top_logprobs),
    )


if __name__ == "__main__":
    main()

"""Correctness cases of scenario ``standard``, in the spirit of the paper's 14: raw completions of
several lengths and chat-templated prompts, each ending at EOS or at its length.

Seed 0 gives the fixed cases below; any other seed (the Judge's private ones) draws held-out
prompts from combinations no engine has seen (a subject, a task, a length), so an engine cannot
special-case the visible set. Chat cases need a tokenizer with a chat template (the tiny model's
byte tokenizer has one too).
"""

from __future__ import annotations

import random
from typing import Any

from pytest_vibeserve.contract import Request
from pytest_vibeserve.reference import Reference
from pytest_vibeserve.workload import Workload

RAW = (
    ("The capital of France is", 16),
    ("def fibonacci(n):\n", 64),
    ("Once upon a time, in a small village by the sea,", 128),
    ("1, 2, 3, 4, 5,", 32),
    ("import numpy as np\n\n# compute the mean of each row\n", 64),
    ("Q: What is 12 times 7?\nA:", 16),
    ("The three primary colors are", 24),
)
CHAT = (
    ("Write a haiku about the ocean.", 48),
    ("Explain what a hash table is in two sentences.", 96),
    ("List three tips for writing clean Python code.", 128),
    ("What is the boiling point of water in Fahrenheit?", 32),
    ("Summarize the plot of Romeo and Juliet in one sentence.", 64),
    ("Give me a Python function that reverses a string.", 96),
    ("Say hello.", 16),
)
SUBJECTS = (
    "volcanoes", "the history of tea", "binary search", "honeybees", "the moon landing",
    "compound interest", "photosynthesis", "the Roman roads", "recursion", "glaciers",
    "jazz music", "public key cryptography", "coral reefs", "the printing press", "black holes",
)  # fmt: skip
RAW_TASKS = (
    "Here is a short essay about {s}.\n\n",
    "# Notes on {s}\n\n1.",
    "Fun fact about {s}:",
    "A dialogue between two friends about {s}.\nA:",
)
CHAT_TASKS = (
    "Explain {s} to a ten-year-old.",
    "Write two sentences about {s}.",
    "Give three facts about {s} as a list.",
    "Write a short poem about {s}.",
)
LENGTHS = (16, 32, 64, 96, 128)


def cases(seed: int, count: int) -> list[tuple[str, str, int]]:
    """``count`` (kind, text, max_new_tokens) cases: the fixed ones for seed 0, else drawn."""
    if seed == 0:
        fixed = [("raw", t, n) for t, n in RAW] + [("chat", t, n) for t, n in CHAT]
        return fixed[:count] if count < len(fixed) else fixed
    rng = random.Random(f"prompts:{seed}")
    drawn = []
    for i in range(count):
        kind = "raw" if i % 2 == 0 else "chat"
        template = rng.choice(RAW_TASKS if kind == "raw" else CHAT_TASKS)
        drawn.append((kind, template.format(s=rng.choice(SUBJECTS)), rng.choice(LENGTHS)))
    return drawn


def _chat_ids(tokenizer: Any, text: str) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return [int(t) for t in ids]


def build_prompt_workload(
    params: dict[str, Any], tokenizer: Any, reference: Reference, seed: int
) -> Workload:
    """Each case alone (one request in flight) or all at once, ``prompt_concurrency``."""
    count = int(params.get("prompt_cases", len(RAW) + len(CHAT)))
    cap = int(params.get("prompt_max_new_tokens", 128))
    eos = tokenizer.eos_token_id
    stop = () if eos is None else (int(eos),)
    requests = []
    for i, (kind, text, length) in enumerate(cases(seed, count)):
        if kind == "chat":
            ids = _chat_ids(tokenizer, text)
        else:
            ids = tokenizer(text).input_ids
            if tokenizer.bos_token_id is not None and ids[:1] != [tokenizer.bos_token_id]:
                ids = [tokenizer.bos_token_id, *ids]
        requests.append(Request(f"{kind}-{i}", tuple(ids), min(length, cap), stop))
    expected = reference.generate(requests)
    concurrency = params.get("prompt_concurrency")
    return Workload(
        name=f"prompts-seed{seed}-c{concurrency or 'all'}",
        requests=tuple(requests),
        expected={r.request_id: expected[r.request_id] for r in requests},
        concurrency=None if concurrency in (None, 0) else int(concurrency),
        warmup=(Request("warmup-0", requests[0].prompt_token_ids, 2, stop),),
        stats={
            "cases": len(requests),
            "chat": sum(1 for r in requests if r.request_id.startswith("chat")),
            "output_tokens_total": sum(len(expected[r.request_id].tokens) for r in requests),
        },
    )


def with_logprobs(workload: Workload, top: int) -> Workload:
    """The same requests asking for ``top`` logprobs per token (their expected values too)."""
    import dataclasses

    requests = tuple(dataclasses.replace(r, top_logprobs=top) for r in workload.requests)
    return dataclasses.replace(workload, name=f"{workload.name}-logprobs{top}", requests=requests)

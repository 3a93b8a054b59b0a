"""Renders a complete, self-contained ``engine.py`` for scenario hybrid_ssm from features.

As for predicted_outputs (``agents.recipes.greedy_engine``), ``engine_features.json`` next to
``engine.py`` records which techniques the rendered file holds; here it carries
``"family": "hybrid"`` so every recipe knows which renderer it is talking to. The engine source is
``hybrid_engine.tmpl``: plain Python with ``#if NAME`` / ``#if not NAME`` / ``#else`` / ``#endif``
lines (nestable) around the code a feature selects, and ``${name}`` for its numbers. Every feature
selects real code in the rendered file, never a flag read at run time:

- ``prefix_cache``: snapshot the whole model cache (attention KV and Mamba2 conv/SSM state) every
  ``snapshot_every`` prompt tokens, keyed by the exact tokens it holds; a new request restores the
  longest snapshot that is a proper prefix of its prompt and prefills only the rest.
- ``snapshot_budget_mb``: 0 = keep up to 64 snapshots (LRU by count); N = count every snapshot's
  bytes and evict least recently used ones to stay under N MiB.
- ``max_batch``: requests decoding at once; 1 = one request at a time (the starter). Requests
  admitted together with the same cached prefix prefill their remaining tokens as one batch.
- ``prefill_chunk``: 0 = each uncached stretch in one forward; N = N-token forwards.
- ``decode``: ``transformers`` (the model's forward and DynamicCache: batches only rows of the same
  length, each such cohort its own forward) or ``lean`` (``LeanDecoder``: one forward for every
  running row whatever its length, numpy GEMMs, in-place Mamba2 state, the shared prefix's keys
  read once per step for all rows restored from it).
- ``dtype``: ``float32`` (the reference's precision) or ``bfloat16``.
- ``threads``: None = the harness's ``spec.threads``, N = ``torch.set_num_threads(N)``.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from string import Template

from agents.recipes.greedy_engine import FamilyFeatureSet, FeatureError, _check_bool, _check_int

FAMILY = "hybrid"
TEMPLATE = Path(__file__).with_name("hybrid_engine.tmpl")
DECODES = ("transformers", "lean")
DTYPES = ("float32", "bfloat16")
MAX_BATCH = 256
DIRECTIVE = re.compile(r"^#(if|else|endif)\b ?(not )?(\w+)?\s*$")


@dataclass(frozen=True, slots=True)
class HybridFeatures(FamilyFeatureSet):
    family: str = FAMILY
    prefix_cache: bool = False
    snapshot_every: int = 256  # prompt tokens between snapshots (with prefix_cache)
    snapshot_budget_mb: int = 0  # 0 = at most 64 snapshots; N = at most N MiB of them
    max_batch: int = 1
    prefill_chunk: int = 0
    decode: str = "transformers"
    dtype: str = "float32"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise FeatureError(f"family={self.family!r}; this renderer draws {FAMILY!r} engines")
        _check_bool("prefix_cache", self.prefix_cache)
        _check_int("snapshot_every", self.snapshot_every, 1, None)
        _check_int("snapshot_budget_mb", self.snapshot_budget_mb, 0, None, "0 = count-limited")
        _check_int("max_batch", self.max_batch, 1, MAX_BATCH, "1 = one request at a time")
        _check_int("prefill_chunk", self.prefill_chunk, 0, None, "0 = one forward")
        if self.decode not in DECODES:
            raise FeatureError(f"decode={self.decode!r}; valid values: {', '.join(DECODES)}")
        if self.dtype not in DTYPES:
            raise FeatureError(f"dtype={self.dtype!r}; valid values: {', '.join(DTYPES)}")
        if self.threads is not None:
            _check_int("threads", self.threads, 1, None, "or null for the harness's spec.threads")
        if self.decode == "lean" and self.dtype != "float32":
            raise FeatureError(
                f"decode='lean' multiplies float32 in numpy (numpy has no {self.dtype}): set "
                "decode='transformers' for it"
            )
        if self.snapshot_budget_mb and not self.prefix_cache:
            raise FeatureError("snapshot_budget_mb bounds the prefix cache: set prefix_cache=true")


def render_engine(features: HybridFeatures) -> str:
    """The full source of an engine.py holding exactly the techniques ``features`` names."""
    f = features
    flags = {
        "prefix_cache": f.prefix_cache,
        "budget": f.snapshot_budget_mb > 0,
        "lean": f.decode == "lean",
        "chunked": f.prefill_chunk > 0,
        "threads": f.threads is not None,
    }
    text = select(TEMPLATE.read_text(), flags)
    return Template(text).substitute(
        describe=f.describe(),
        story=_story(f),
        max_batch=f.max_batch,
        prefill_chunk=f.prefill_chunk,
        snapshot_every=f.snapshot_every,
        snapshot_budget_mb=f.snapshot_budget_mb,
        threads=f.threads,
        dtype=f.dtype,
    )


def select(text: str, flags: dict[str, bool]) -> str:
    """Keep the lines whose ``#if`` conditions hold; drop the directive lines themselves."""
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # (this branch is kept, the enclosing block is kept)
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        match = DIRECTIVE.match(line.rstrip("\n"))
        if match is None:
            if all(kept for kept, _ in stack):
                out.append(line)
            continue
        word, negated, name = match.groups()
        if word == "if":
            if name not in flags:
                raise ValueError(f"template line {number}: unknown flag {name!r}")
            stack.append((flags[name] != bool(negated), True))
        elif not stack:
            raise ValueError(f"template line {number}: #{word} without #if")
        elif word == "else":
            kept, _ = stack.pop()
            stack.append((not kept, True))
        else:
            stack.pop()
    if stack:
        raise ValueError("template: an #if is never closed")
    return "".join(out)


def _story(f: HybridFeatures) -> str:
    """The docstring's account of what the engine does, one paragraph per technique."""
    paragraphs = []
    if f.prefix_cache:
        budget = (
            f"at most {f.snapshot_budget_mb} MiB of them, their bytes counted exactly and least "
            "recently used ones evicted first"
            if f.snapshot_budget_mb
            else "at most 64 of them, least recently used evicted first"
        )
        paragraphs.append(
            f"Prefix cache: every {f.snapshot_every} prompt tokens the whole model cache "
            "(attention keys/values and each Mamba2 layer's conv and SSM state) is snapshotted "
            "under the exact token tuple it holds; a request restores the longest snapshot that "
            f"is a proper prefix of its prompt and prefills only the rest. Snapshots: {budget}."
        )
    else:
        paragraphs.append("No prefix cache: every prompt is prefilled from its first token.")
    if f.max_batch == 1:
        paragraphs.append("One request at a time, one token per forward.")
    elif f.decode == "lean":
        paragraphs.append(
            f"Up to {f.max_batch} requests decode together in ONE forward per step whatever "
            "their lengths (LeanDecoder: numpy GEMMs over pre-transposed fp32 weights, Mamba2 "
            "conv/SSM states updated in place, attention over the shared prefix read once per "
            "group of rows restored from the same snapshot plus each row's own keys)."
        )
    else:
        paragraphs.append(
            f"Up to {f.max_batch} requests decode at once: rows admitted together with the same "
            "cached prefix and remaining length form a cohort that prefills and decodes as one "
            "batch (transformers' forward and DynamicCache); each cohort is its own forward."
        )
    if f.max_batch == 1 and f.decode == "lean":
        paragraphs.append(
            "Decode runs in LeanDecoder (numpy GEMMs, in-place Mamba2 state) instead of "
            "transformers' forward."
        )
    if f.prefill_chunk:
        paragraphs.append(f"Prefill runs in forwards of at most {f.prefill_chunk} tokens.")
    if f.dtype == "bfloat16":
        paragraphs.append(
            "Weights in bfloat16: NOT the reference's precision; greedy tokens may change."
        )
    return "\n\n".join(textwrap.fill(p, width=96, break_on_hyphens=False) for p in paragraphs)

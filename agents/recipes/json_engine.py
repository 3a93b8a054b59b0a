"""Renders a complete, self-contained ``engine.py`` for scenario json_decoding from features.

``engine_features.json`` beside ``engine.py`` carries ``"family": "json"``; the source is
``json_engine.tmpl`` (``#if``/``#else``/``#endif`` blocks, as ``hybrid_engine.tmpl``), and with
``forward = "lean"`` the ``LeanLlama`` class of ``serving_engine.tmpl`` (rendered with the same
``matmul`` and ``fused``), one slot. Every feature selects real code in the rendered file:

- ``fast_forward``: the tokens the grammar forces are taken without a model call of their own and
  fed to the next forward as one block with the sampled token before them (the starter runs one
  forward per token, forced or not).
- ``grammar_cache``: compiled matchers kept per schema, keyed by the whole schema serialised in
  its own key order; each request starts from a deep copy.
- ``overlap``: the mask of the next sampled position computed on a thread while the forward runs
  (it depends on the grammar alone).
- ``forward``: ``transformers`` (the model's forward over a DynamicCache), ``lean`` (LeanLlama,
  preallocated keys/values; ``matmul`` (``torch``/``numpy``) and ``fused`` apply to it) or
  ``numpy`` (predicted_outputs' LeanLlama in numpy: every op a numpy call, Q/K/V and gate/up fused,
  OpenBLAS matmuls, logits of the last rows of a block, rollback by ``crop``).
- ``draft``: 0, or N: prompt-lookup speculation under the grammar. Before each forward up to N
  tokens are drafted, walking the grammar (a forced token is drafted as it is; an open one is the
  token that followed the latest earlier occurrence of the context's last 1-4 tokens, in the prompt
  or the output); one forward verifies them with the reference's own rule at every position, and
  the cache is cropped back to the last right draft. Needs ``fast_forward`` and ``numpy``.
- ``min_ngram``: the shortest context suffix a draft may follow (1-4, default 2): with no match
  that long, an open token is drafted no further, and a forward over one unfed token is a GEMV,
  about half the cost of a forward over 2-8 rows here.
- ``threads``: None = the harness's ``spec.threads``, N = ``torch.set_num_threads(N)``.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from string import Template

from agents.recipes import serving_engine
from agents.recipes.greedy_engine import (
    FamilyFeatureSet,
    FeatureError,
    _check_bool,
    _check_int,
    numpy_lean_source,
)
from agents.recipes.hybrid_engine import select

FAMILY = "json"
TEMPLATE = Path(__file__).with_name("json_engine.tmpl")
FORWARDS = ("transformers", "lean", "numpy")
MAX_DRAFT = 64
MAX_NGRAM = 4  # the longest suffix the drafting looks up
MATMULS = ("torch", "numpy")


@dataclass(frozen=True, slots=True)
class JsonFeatures(FamilyFeatureSet):
    family: str = FAMILY
    fast_forward: bool = False
    grammar_cache: bool = False
    overlap: bool = False
    forward: str = "transformers"
    matmul: str = "torch"
    fused: bool = False
    threads: int | None = None
    draft: int = 0
    min_ngram: int = 2

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise FeatureError(f"family={self.family!r}; this renderer draws {FAMILY!r} engines")
        for name in ("fast_forward", "grammar_cache", "overlap", "fused"):
            _check_bool(name, getattr(self, name))
        if self.forward not in FORWARDS:
            raise FeatureError(f"forward={self.forward!r}; valid values: {', '.join(FORWARDS)}")
        if self.matmul not in MATMULS:
            raise FeatureError(f"matmul={self.matmul!r}; valid values: {', '.join(MATMULS)}")
        if self.threads is not None:
            _check_int("threads", self.threads, 1, None, "or null for the harness's spec.threads")
        _check_int("draft", self.draft, 0, MAX_DRAFT, "(0 = no drafting)")
        _check_int("min_ngram", self.min_ngram, 1, MAX_NGRAM, "(the shortest suffix looked up)")
        if self.draft and not (self.fast_forward and self.forward == "numpy"):
            raise FeatureError(
                f"draft={self.draft} needs fast_forward=true and forward='numpy' (the walk takes "
                "forced tokens without logits; the verify forward returns logits of every drafted "
                "row and rolls the cache back): set them, or draft=0"
            )
        if self.forward == "numpy" and (self.matmul != "torch" or self.fused):
            raise FeatureError(
                "forward='numpy' runs every op in numpy with Q/K/V and gate/up already fused; "
                "matmul and fused apply to forward='lean' only: leave them at 'torch' and false"
            )
        needs = [
            name
            for name, used in (("matmul='numpy'", self.matmul == "numpy"), ("fused", self.fused))
            if used
        ]
        if needs and self.forward != "lean":
            raise FeatureError(
                f"{', '.join(needs)} need forward='lean' (transformers' forward owns the "
                "weights): set forward='lean'"
            )


def lean_llama(features: JsonFeatures) -> str:
    """serving_engine.tmpl's LeanLlama class, rendered with these matmul and fused choices."""
    flags = {"lean": True, "numpy": features.matmul == "numpy", "fused": features.fused}
    flags["threads"] = False
    source = select(serving_engine.TEMPLATE.read_text(), flags)
    found = re.search(r"^class LeanLlama:.*?(?=^class |\Z)", source, re.S | re.M)
    if found is None:
        raise FeatureError("serving_engine.tmpl has no LeanLlama class to render")
    return "\n\n" + found.group(0).rstrip() + "\n\n\n"


def render_engine(features: JsonFeatures) -> str:
    """The full source of an engine.py holding exactly the techniques ``features`` names."""
    f = features
    if f.forward == "numpy":
        source = numpy_lean_source("forward='lean' or 'transformers'")
        model = "\n\n" + source.strip("\n") + "\n\n\n"
    elif f.forward == "lean":
        model = lean_llama(f)
    else:
        model = "\n"
    flags = {
        "lean": f.forward == "lean",
        "transformers": f.forward == "transformers",
        "numpy_forward": f.forward == "numpy",
        "draft": bool(f.draft),
        "fast_forward": f.fast_forward,
        "grammar_cache": f.grammar_cache,
        "overlap": f.overlap,
        "threads": f.threads is not None,
    }
    return Template(select(TEMPLATE.read_text(), flags)).substitute(
        describe=f.describe(),
        story=_story(f),
        threads=f.threads,
        draft=f.draft,
        min_ngram=f.min_ngram,
        lean_llama=model,
    )


def _story(f: JsonFeatures) -> str:
    """The docstring's account of what the engine does, one paragraph per technique."""
    paragraphs = [
        "One request at a time, FIFO, one forward per "
        + (
            "sampled token: the tokens the grammar forces are taken without a model call and "
            "join the next forward as one block."
            if f.fast_forward
            else "token, forced or not (the forward also writes the token's keys and values)."
        )
    ]
    if f.draft:
        paragraphs.append(
            f"Prompt-lookup speculation under the grammar: before each forward up to {f.draft} "
            "tokens are drafted by walking the grammar (forced tokens as they are, open ones "
            f"from the latest earlier occurrence of the context's last {f.min_ngram}-4 tokens in "
            "the prompt or the output); the forward returns logits for every drafted row, the "
            "reference's rule picks each token in turn, drafting is right as long as its tokens "
            "are the picked ones, and the cache is cropped back after the last right one. A token "
            "the grammar leaves open is always the argmax of logits computed after the "
            "reference's own tokens."
        )
    paragraphs.append(
        "Grammars compiled once per schema (keyed by the whole schema, in its own key order) and "
        "deep-copied per request."
        if f.grammar_cache
        else "Each request's schema compiled afresh."
    )
    if f.overlap:
        paragraphs.append("The mask is computed on a thread while the forward runs.")
    if f.forward == "numpy":
        paragraphs.append(
            "LeanLlama in numpy (predicted_outputs' forward): every op a numpy call, Q/K/V and "
            "gate/up fused, OpenBLAS matmuls, keys/values preallocated."
        )
    if f.forward == "lean":
        paragraphs.append(
            "LeanLlama forward (preallocated keys/values), "
            + ("numpy (OpenBLAS) sgemm" if f.matmul == "numpy" else "torch F.linear")
            + (", Q/K/V and gate/up fused." if f.fused else ".")
        )
    if f.threads is not None:
        paragraphs.append(f"{f.threads} torch threads.")
    return "\n\n".join(textwrap.fill(p, width=96, break_on_hyphens=False) for p in paragraphs)

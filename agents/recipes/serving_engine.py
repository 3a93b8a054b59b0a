"""Renders a complete, self-contained ``engine.py`` for scenario standard from features.

``engine_features.json`` beside ``engine.py`` carries ``"family": "serving"``; the source is
``serving_engine.tmpl`` (``#if``/``#else``/``#endif`` blocks, as ``hybrid_engine.tmpl``). Every
feature selects real code in the rendered file, never a flag read at run time:

- ``forward``: ``transformers`` (the model's forward with a fresh DynamicCache per request, one
  request at a time: the starter) or ``lean`` (``LeanLlama``: the Llama forward over the model's
  own weights, keys/values in preallocated per-request slots, continuous batching).
- ``max_batch``: sequences in flight at once with ``lean``; every step prefills newly admitted
  prompts and then decodes one token of every running sequence in ONE forward.
- ``prefill_budget``: 0 = each prompt in one forward; N = at most N prompt tokens per step
  (chunked prefill, so long prompts do not stall the decoding rows).
- ``matmul``: ``torch`` (F.linear) or ``numpy`` (OpenBLAS sgemm over pre-transposed weights).
- ``fused``: Q/K/V and gate/up as one matmul each instead of three and two.
- ``threads``: None = the harness's ``spec.threads``, N = ``torch.set_num_threads(N)``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from string import Template

from agents.recipes.greedy_engine import FamilyFeatureSet, FeatureError, _check_bool, _check_int
from agents.recipes.hybrid_engine import select

FAMILY = "serving"
TEMPLATE = Path(__file__).with_name("serving_engine.tmpl")
FORWARDS = ("transformers", "lean")
MATMULS = ("torch", "numpy")
MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class ServingFeatures(FamilyFeatureSet):
    family: str = FAMILY
    forward: str = "transformers"
    max_batch: int = 1
    prefill_budget: int = 0
    matmul: str = "torch"
    fused: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise FeatureError(f"family={self.family!r}; this renderer draws {FAMILY!r} engines")
        if self.forward not in FORWARDS:
            raise FeatureError(f"forward={self.forward!r}; valid values: {', '.join(FORWARDS)}")
        if self.matmul not in MATMULS:
            raise FeatureError(f"matmul={self.matmul!r}; valid values: {', '.join(MATMULS)}")
        _check_int("max_batch", self.max_batch, 1, MAX_BATCH, "1 = one request at a time")
        _check_int("prefill_budget", self.prefill_budget, 0, None, "0 = whole prompts")
        _check_bool("fused", self.fused)
        if self.threads is not None:
            _check_int("threads", self.threads, 1, None, "or null for the harness's spec.threads")
        lean_only = {
            "max_batch > 1": self.max_batch > 1,
            "prefill_budget": self.prefill_budget > 0,
            "matmul='numpy'": self.matmul == "numpy",
            "fused": self.fused,
        }
        needs = [name for name, used in lean_only.items() if used]
        if needs and self.forward != "lean":
            raise FeatureError(
                f"{', '.join(needs)} need forward='lean' (transformers' DynamicCache keeps one "
                "length for all its rows and its forward owns the weights): set forward='lean'"
            )


def render_engine(features: ServingFeatures) -> str:
    """The full source of an engine.py holding exactly the techniques ``features`` names."""
    f = features
    flags = {
        "lean": f.forward == "lean",
        "numpy": f.matmul == "numpy",
        "fused": f.fused,
        "threads": f.threads is not None,
    }
    return Template(select(TEMPLATE.read_text(), flags)).substitute(
        describe=f.describe(),
        story=_story(f),
        max_batch=f.max_batch,
        prefill_budget=f.prefill_budget,
        threads=f.threads,
    )


def _story(f: ServingFeatures) -> str:
    """The docstring's account of what the engine does, one paragraph per technique."""
    if f.forward == "transformers":
        paragraphs = [
            "One request at a time, FIFO: each prompt prefilled alone with a fresh transformers "
            "cache, then one token per forward."
        ]
    else:
        batching = (
            f"Continuous batching: up to {f.max_batch} sequences in flight; each step prefills "
            "newly admitted prompts, then decodes one token of EVERY running sequence in one "
            "forward whatever their lengths (keys/values in preallocated per-sequence slots)."
            if f.max_batch > 1
            else "One sequence at a time through LeanLlama (preallocated keys/values)."
        )
        paragraphs = [batching]
        if f.prefill_budget:
            paragraphs.append(f"Prefill: at most {f.prefill_budget} prompt tokens per step.")
        paragraphs.append(
            ("numpy (OpenBLAS) sgemm" if f.matmul == "numpy" else "torch F.linear")
            + " for every projection"
            + (", Q/K/V and gate/up fused into one matmul each." if f.fused else ".")
        )
    if f.threads is not None:
        paragraphs.append(f"{f.threads} torch threads.")
    return "\n\n".join(textwrap.fill(p, width=96, break_on_hyphens=False) for p in paragraphs)

"""Renders a complete, self-contained ``engine.py`` for scenario streaming_asr from features.

``engine_features.json`` carries ``"family": "asr"``. The source is ``asr_engine.tmpl``
(``#if NAME`` / ``#else`` / ``#endif`` lines around the code a feature selects, as for
hybrid_ssm). Every feature selects real code in the rendered file:

- ``encoder``: ``full`` (every chunk re-encodes all the stream's audio: the reference's own
  computation) or ``incremental`` (the causal convolutions carry their last inputs; each encoder
  layer keeps its inputs and recomputes only output frames that are not final yet: the previous
  chunk's lookahead tail and the new frames).
- ``cross_kv``: ``recompute`` (the decoder projects every encoder frame to cross-attention
  keys/values for every transcript) or ``append`` (each stream keeps the keys/values of its
  final encoder frames and computes only the rest; needs ``encoder = "incremental"``).
- ``max_batch``: chunks of different streams decoded together, one forward per token for all
  rows (1 = one chunk at a time).
- ``decoder``: ``transformers`` (the model's decoder module and its EncoderDecoderCache, one
  concatenation per step) or ``lean`` (``LeanDecoder``: the decoder step in plain torch ops,
  fused query/key/value projection, self-attention keys/values in buffers allocated once and
  grown when needed, cross-attention keys/values projected by the engine).
- ``admission``: ``tick`` (a scheduler tick takes the waiting chunks of up to ``max_batch``
  streams and decodes them to the end before the next tick) or ``step`` (continuous batching:
  before every decoder forward each stream's waiting chunk is admitted as a new row while rows
  are free, rows finish on their own; needs ``decoder = "lean"``).
- ``threads``: None = the harness's ``spec.threads``, N = ``torch.set_num_threads(N)``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from string import Template

from agents.recipes.greedy_engine import FamilyFeatureSet, FeatureError, _check_int
from agents.recipes.hybrid_engine import select

FAMILY = "asr"
TEMPLATE = Path(__file__).with_name("asr_engine.tmpl")
ENCODERS = ("full", "incremental")
DECODERS = ("transformers", "lean")
ADMISSIONS = ("tick", "step")
CROSS_KV = ("recompute", "append")
MAX_BATCH = 64


@dataclass(frozen=True, slots=True)
class AsrFeatures(FamilyFeatureSet):
    family: str = FAMILY
    encoder: str = "full"
    cross_kv: str = "recompute"
    max_batch: int = 1
    decoder: str = "transformers"
    admission: str = "tick"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise FeatureError(f"family={self.family!r}; this renderer draws {FAMILY!r} engines")
        if self.encoder not in ENCODERS:
            raise FeatureError(f"encoder={self.encoder!r}; valid values: {', '.join(ENCODERS)}")
        if self.cross_kv not in CROSS_KV:
            raise FeatureError(f"cross_kv={self.cross_kv!r}; valid values: {', '.join(CROSS_KV)}")
        _check_int("max_batch", self.max_batch, 1, MAX_BATCH, "1 = one chunk at a time")
        if self.decoder not in DECODERS:
            raise FeatureError(f"decoder={self.decoder!r}; valid values: {', '.join(DECODERS)}")
        if self.admission not in ADMISSIONS:
            raise FeatureError(
                f"admission={self.admission!r}; valid values: {', '.join(ADMISSIONS)}"
            )
        if self.admission == "step" and self.decoder != "lean":
            raise FeatureError(
                "admission='step' admits rows at different positions, which only LeanDecoder "
                "handles: set decoder='lean'"
            )
        if self.threads is not None:
            _check_int("threads", self.threads, 1, None, "or null for the harness's spec.threads")
        if self.cross_kv == "append" and self.encoder != "incremental":
            raise FeatureError(
                "cross_kv='append' keeps the keys/values of final encoder frames, which only the "
                "incremental encoder tracks: set encoder='incremental'"
            )


def render_engine(features: AsrFeatures) -> str:
    """The full source of an engine.py holding exactly the techniques ``features`` names."""
    f = features
    flags = {
        "incremental": f.encoder == "incremental",
        "append": f.cross_kv == "append",
        "lean": f.decoder == "lean",
        "continuous": f.admission == "step",
        "cross_cache": f.cross_kv == "append" or f.decoder == "lean",
        "threads": f.threads is not None,
    }
    text = select(TEMPLATE.read_text(), flags)
    return Template(text).substitute(
        describe=f.describe(), story=_story(f), max_batch=f.max_batch, threads=f.threads
    )


def _story(f: AsrFeatures) -> str:
    paragraphs = []
    if f.encoder == "incremental":
        paragraphs.append(
            "Incremental encoder: only the new audio goes through the front end (the causal "
            "convolutions carry their last 4 inputs), and each encoder layer recomputes only the "
            "output frames that were not final: the frames its lookahead window had not seen in "
            "full at the previous chunk, and the new ones. Final frames are kept, never redone."
        )
    else:
        paragraphs.append(
            "Every chunk re-encodes all the stream's audio from its start (the sliding windows "
            "apply because the attention mask is passed)."
        )
    if f.cross_kv == "append":
        paragraphs.append(
            "Cross-attention keys/values: each stream keeps those of its final encoder frames and "
            "computes only the frames after them, appended for the next transcript."
        )
    else:
        paragraphs.append(
            "Every transcript projects all encoder frames to cross-attention keys/values again."
        )
    if f.admission == "step":
        paragraphs.append(
            f"Continuous batching: before every decoder forward, the waiting chunk of each stream "
            f"not decoding is encoded and admitted as a new row (up to {f.max_batch} rows), each "
            "row at its own position; a row answers its chunk the step it finishes."
        )
    elif f.max_batch > 1:
        paragraphs.append(
            f"Up to {f.max_batch} streams' waiting chunks are taken per scheduler tick and their "
            "transcripts decode together: one decoder forward per token for every row (encoder "
            "states padded and masked), rows dropped as they finish."
        )
    else:
        paragraphs.append(
            "One chunk at a time: each transcript decodes alone, one row per forward."
        )
    if f.decoder == "lean":
        paragraphs.append(
            "Decoding runs in LeanDecoder: the decoder step in plain torch ops (fused "
            "query/key/value projection, self-attention keys/values in preallocated buffers "
            "reused across ticks, cross-attention over keys/values the engine projected)."
        )
    if f.threads is not None:
        paragraphs.append(f"torch runs {f.threads} intra-op thread(s).")
    return "\n\n".join(textwrap.fill(p, width=96, break_on_hyphens=False) for p in paragraphs)

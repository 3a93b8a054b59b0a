"""Renders a complete, self-contained ``engine.py`` for scenario unified_multimodal from features.

``engine_features.json`` carries ``"family": "image"``. The source is ``image_engine.tmpl``
(``#if NAME`` / ``#else`` / ``#endif`` lines around the code a feature selects). Features, each
selecting real code in the rendered file:

- ``logits``: ``keep`` (the tied lm_head's logits of every token at every step, computed and
  discarded: the original's dead compute) or ``drop``.
- ``tokens``: ``full`` (the whole padded sequence every step) or ``trim`` (the sequence ends at
  the image block: the EOI/EOS/pad tokens after it feed nothing the image reads).
- ``modulation``: ``loop`` (adaLN one row at a time, the original's Python loop) or ``vector``
  (one masked broadcast per layer).
- ``shared_input``: the input path (SigLIP + patch projection) and the time embedding run once
  for both guidance rows, which see the same latent and time.
- ``prefix_cache``: the text prefix's keys/values in the body and the flow head computed once per
  image, each step running only the time + image tokens (implies no logits, no trailing tokens
  and broadcast modulation, which its own layer code does).
- ``attention``: with ``prefix_cache``, how a step's block attends to the cached prefixes:
  ``padded`` (both rows in one masked call, the unconditional row's short prefix padded to the
  conditional one's length) or ``per_row`` (one unmasked call per row over its own prefix: no
  padded keys, and the unmasked kernel is faster).
- ``vae``: ``conv3d`` (the causal 3-D kernels over two zero frames and the real one) or
  ``conv2d`` (their last time tap alone: the same single-frame result).
- ``dtype``: ``float32`` (exact) or ``bfloat16`` (weights and activations; the latent and the
  Euler update stay fp32: approximate, the PSNR/SSIM and trajectory gates decide).
- ``cfg_stride``: 1 evaluates the unconditional branch every step; k > 1 only every k-th step,
  reusing its last velocity in between (approximate, the gates decide).
- ``compile``: ``torch.compile`` of the velocity function, warmed up at load on a throwaway image
  (the load time is reported apart from the latency); needs ``prefix_cache``, whose prefix is
  then padded to the longest prompt the model takes, so every prompt runs one graph (and
  attention stays ``padded``).
- ``threads``: None = the harness's ``spec.threads``, N = ``torch.set_num_threads(N)``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from string import Template

from agents.recipes.greedy_engine import FamilyFeatureSet, FeatureError, _check_bool, _check_int
from agents.recipes.hybrid_engine import select

FAMILY = "image"
TEMPLATE = Path(__file__).with_name("image_engine.tmpl")
LOGITS = ("keep", "drop")
TOKENS = ("full", "trim")
MODULATION = ("loop", "vector")
ATTENTION = ("padded", "per_row")
VAES = ("conv3d", "conv2d")
DTYPES = ("float32", "bfloat16")
MAX_CFG_STRIDE = 8


@dataclass(frozen=True, slots=True)
class ImageFeatures(FamilyFeatureSet):
    family: str = FAMILY
    logits: str = "keep"
    tokens: str = "full"
    modulation: str = "loop"
    shared_input: bool = False
    prefix_cache: bool = False
    attention: str = "padded"
    vae: str = "conv3d"
    dtype: str = "float32"
    cfg_stride: int = 1
    compile: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise FeatureError(f"family={self.family!r}; this renderer draws {FAMILY!r} engines")
        for name, valid in (
            ("logits", LOGITS),
            ("tokens", TOKENS),
            ("modulation", MODULATION),
            ("attention", ATTENTION),
            ("vae", VAES),
            ("dtype", DTYPES),
        ):
            if getattr(self, name) not in valid:
                raise FeatureError(
                    f"{name}={getattr(self, name)!r}; valid values: {', '.join(valid)}"
                )
        _check_bool("shared_input", self.shared_input)
        _check_bool("prefix_cache", self.prefix_cache)
        _check_bool("compile", self.compile)
        _check_int("cfg_stride", self.cfg_stride, 1, MAX_CFG_STRIDE, "1 = guidance every step")
        if self.threads is not None:
            _check_int("threads", self.threads, 1, None, "or null for the harness's spec.threads")
        if self.compile and not self.prefix_cache:
            raise FeatureError(
                "compile needs prefix_cache: its step has one shape for every prompt (the full "
                "path's sequence length varies with the prompt, a recompile each)"
            )
        if self.attention == "per_row" and not self.prefix_cache:
            raise FeatureError(
                "attention='per_row' splits the cached prefixes' attention by row: set "
                "prefix_cache=true with it (the full path attends over one padded sequence)"
            )
        if self.prefix_cache and (
            self.logits != "drop" or self.tokens != "trim" or self.modulation != "vector"
        ):
            raise FeatureError(
                "prefix_cache runs only the time + image tokens in its own layer code, which "
                "computes no logits, no trailing tokens and broadcast modulation: set "
                "logits='drop', tokens='trim', modulation='vector' with it"
            )

    @property
    def exact(self) -> bool:
        """Whether the engine computes the reference's image up to summation order."""
        return self.dtype == "float32" and self.cfg_stride == 1


def render_engine(features: ImageFeatures) -> str:
    """The full source of an engine.py holding exactly the techniques ``features`` names."""
    f = features
    flags = {
        "logits": f.logits == "keep",
        "trim": f.tokens == "trim",
        "vector_modulation": f.modulation == "vector" and not f.prefix_cache,
        "shared_input": f.shared_input,
        "prefix_cache": f.prefix_cache,
        "per_row": f.attention == "per_row",
        "vae_2d": f.vae == "conv2d",
        "bf16": f.dtype == "bfloat16",
        "compile": f.compile,
        "threads": f.threads is not None,
        "functional": f.prefix_cache or f.vae == "conv2d" or f.modulation == "vector",
    }
    text = select(TEMPLATE.read_text(), flags)
    return Template(text).substitute(
        describe=f.describe(), story=_story(f), cfg_stride=f.cfg_stride, threads=f.threads
    )


def _story(f: ImageFeatures) -> str:
    paragraphs = []
    if f.prefix_cache:
        paragraphs.append(
            "Text-prefix keys/values: each image computes the body's and the flow head's keys "
            "and values of [BOS] text [BOI] once (for both guidance rows); every step then runs "
            "only the time token and the image tokens, attending to them. No logits, no trailing "
            "tokens."
            + (
                " Each row's block attends to its own prefix in its own unmasked call (no "
                "padded keys)."
                if f.attention == "per_row"
                else " Both rows attend in one masked call, the shorter prefix padded."
            )
        )
    else:
        paragraphs.append(
            "Every step runs both guidance rows through the body and the flow head over "
            + (
                "the sequence up to the end of the image block."
                if f.tokens == "trim"
                else "the whole padded sequence, as the original does."
            )
            + (
                " The lm_head logits are computed and discarded."
                if f.logits == "keep"
                else " No lm_head logits (nothing reads them)."
            )
        )
        if f.modulation == "vector":
            paragraphs.append("adaLN modulation is one masked broadcast per layer.")
        else:
            paragraphs.append("adaLN modulation loops over the batch rows, as the original.")
    if f.shared_input:
        paragraphs.append(
            "The input path and the time embedding run once per step for both guidance rows."
        )
    paragraphs.append(
        "The VAE decodes the single frame with 2-D convolutions (each causal 3-D kernel's last "
        "time tap)."
        if f.vae == "conv2d"
        else "The VAE runs its causal 3-D convolutions over the frame and two zero frames."
    )
    if f.dtype == "bfloat16":
        paragraphs.append(
            "Weights and activations in bfloat16; the latent and the Euler update stay fp32."
        )
    if f.cfg_stride > 1:
        paragraphs.append(
            f"CFG stride {f.cfg_stride}: the unconditional branch runs every {f.cfg_stride}th "
            "step; the steps between reuse its last velocity."
        )
    if f.compile:
        paragraphs.append(
            "The velocity function is compiled with torch.compile and warmed up at load."
        )
    if f.threads is not None:
        paragraphs.append(f"torch runs {f.threads} intra-op thread(s).")
    return "\n\n".join(textwrap.fill(p, width=96, break_on_hyphens=False) for p in paragraphs)

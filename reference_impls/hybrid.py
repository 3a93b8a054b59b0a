"""Hybrid reference models: seeded random NemotronH (Mamba2 + attention + MLP), built offline.

NemotronH keeps a KV cache only in its attention layers and a fixed-size convolution and SSM
state in its Mamba2 layers. transformers continues it exactly from a cached prefix on the CPU
(a restored cache gives the logits of a from-scratch run to ~1e-6) and vLLM's CPU build serves
it token-identically, so it is the family of the `hybrid_ssm` scenario.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reference_impls.tiny import BOS_ID, EOS_ID, save_seeded_model

if TYPE_CHECKING:  # torch and transformers load only when a model is built
    import torch
    from transformers import NemotronHConfig

# Layer codes as NemotronH writes them: M = Mamba2 mixer, * = attention, - = MLP.
LAYER_TYPES = {"M": "linear_attention", "*": "full_attention", "-": "mlp"}


@dataclass(frozen=True, slots=True)
class HybridRecipe:
    """Every number that decides the bytes of a built hybrid model."""

    name: str
    pattern: str  # one code per layer, see LAYER_TYPES
    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int  # of the MLP layers (squared ReLU, no gate)
    mamba_num_heads: int
    mamba_head_dim: int  # mamba_num_heads * mamba_head_dim = expand * hidden_size
    ssm_state_size: int
    n_groups: int
    conv_kernel: int = 4
    chunk_size: int = 128  # the SSD scan's chunk in prefill
    max_position_embeddings: int = 8192
    # As for the tiny Llama: 0.02 gives flat logits, 0.1 diverse greedy output.
    initializer_range: float = 0.1
    # Std of the attention logits (q and k projections drawn to give it): peaked, content-keyed
    # attention, so outputs depend on tokens far back and a cache that serves a prefix one token
    # off changes them (tiny model, a token 9 or 60 positions back: 22 of 24 prompts change; at
    # std ~0.6, the plain init at hidden 64, only 4 of 12 did).
    attention_logit_std: float = 8.0
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    seed: int = 0
    revision: int = 1  # bump whenever the build code below changes the bytes it writes

    def __post_init__(self) -> None:
        unknown = set(self.pattern) - set(LAYER_TYPES)
        if unknown:
            raise ValueError(f"pattern {self.pattern!r}: unknown layer codes {sorted(unknown)}")
        if "M" not in self.pattern or "*" not in self.pattern:
            raise ValueError(
                f"pattern {self.pattern!r}: a hybrid needs Mamba2 (M) and attention (*)"
            )
        if self.mamba_num_heads * self.mamba_head_dim != 2 * self.hidden_size:
            raise ValueError("mamba_num_heads * mamba_head_dim must be 2 * hidden_size (expand 2)")

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.digest()}"


# Seconds to build and test with (byte vocabulary, ~0.2M parameters).
HYBRID_TINY = HybridRecipe(
    name="hybrid-tiny",
    pattern="M*M*-",
    vocab_size=258,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    mamba_num_heads=8,
    mamba_head_dim=16,
    ssm_state_size=16,
    n_groups=1,
    chunk_size=32,
)

# The cpu scale: ~125M parameters in NemotronH's own proportions (mostly Mamba2 and MLP layers,
# one attention layer in eight or so), a 32k vocabulary.
HYBRID_CPU = HybridRecipe(
    name="hybrid-cpu",
    pattern="M-M*-M-M-M-M*-M-M-",
    vocab_size=32768,
    hidden_size=768,
    num_attention_heads=12,
    num_key_value_heads=4,
    head_dim=64,
    intermediate_size=3072,
    mamba_num_heads=24,
    mamba_head_dim=64,
    ssm_state_size=64,
    n_groups=1,
)

RECIPES = {recipe.name: recipe for recipe in (HYBRID_TINY, HYBRID_CPU)}


def build_config(recipe: HybridRecipe) -> NemotronHConfig:
    from transformers import NemotronHConfig

    return NemotronHConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden_size,
        layers_block_type=[LAYER_TYPES[code] for code in recipe.pattern],
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        head_dim=recipe.head_dim,
        intermediate_size=recipe.intermediate_size,
        mlp_hidden_act="relu2",
        mamba_num_heads=recipe.mamba_num_heads,
        mamba_head_dim=recipe.mamba_head_dim,
        ssm_state_size=recipe.ssm_state_size,
        n_groups=recipe.n_groups,
        conv_kernel=recipe.conv_kernel,
        chunk_size=recipe.chunk_size,
        expand=2,
        max_position_embeddings=recipe.max_position_embeddings,
        initializer_range=recipe.initializer_range,
        time_step_min=recipe.time_step_min,
        time_step_max=recipe.time_step_max,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        dtype="float32",
    )


def _init_weights(model: torch.nn.Module, recipe: HybridRecipe) -> None:
    """Our own seeded init, so the bytes depend only on the recipe (not on transformers' init).

    Matrices and convolution kernels: N(0, initializer_range), but the attention query and key
    projections, drawn so that attention logits have std ``attention_logit_std`` (a unit-variance
    input through two N(0, s^2) projections gives q.k/sqrt(d) a std of s^2 * hidden_size). Norm
    weights 1, biases 0. The
    Mamba2 constants as Mamba2 initialises them, but without randomness: A = -(1..heads),
    D = 1, and dt_bias the inverse softplus of time steps spaced log-uniformly in
    [time_step_min, time_step_max].
    """
    import torch

    heads = recipe.mamba_num_heads
    steps = torch.exp(
        torch.linspace(math.log(recipe.time_step_min), math.log(recipe.time_step_max), heads)
    )
    constants = {
        "A_log": torch.log(torch.arange(1, heads + 1, dtype=torch.float32)),
        "D": torch.ones(heads),
        "dt_bias": steps + torch.log(-torch.expm1(-steps)),  # softplus(dt_bias) == steps
    }
    qk_std = math.sqrt(recipe.attention_logit_std / recipe.hidden_size)
    gen = torch.Generator().manual_seed(recipe.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in constants:
                param.copy_(constants[leaf])
            elif param.ndim == 1:
                param.fill_(1.0 if "norm" in name else 0.0)
            else:
                std = qk_std if name.endswith(("q_proj.weight", "k_proj.weight")) else None
                std = std or recipe.initializer_range
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def build_hybrid(out_dir: Path, recipe: HybridRecipe) -> None:
    """Write config, safetensors weights, generation config and tokenizer files into out_dir."""
    from transformers import NemotronHForCausalLM

    save_seeded_model(
        out_dir,
        NemotronHForCausalLM,
        build_config(recipe),
        lambda model: _init_weights(model, recipe),
        recipe.vocab_size,
    )

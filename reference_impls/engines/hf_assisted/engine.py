"""Peer engine: transformers assisted generation with early-exit self-speculation, greedy.

The first L layers of the model (plus its final norm and LM head) draft tokens; the full model
verifies them. Options: `assistant_early_exit` (L, default max(1, num_hidden_layers // 4)),
`num_assistant_tokens` (draft length; transformers' default schedule when absent).
Counters: `model_forward_calls` counts full-model forwards, `draft_forward_calls` early-exit ones.
"""

from __future__ import annotations

from pytest_vibeserve.contract import EngineSpec
from reference_impls.greedy import load_model
from reference_impls.hf_streaming import StreamingGenerateEngine


def create_engine(spec: EngineSpec) -> StreamingGenerateEngine:
    model = load_model(spec.model_path, device=spec.device, dtype=spec.dtype, threads=spec.threads)
    n_layers = model.config.num_hidden_layers
    early_exit = int(spec.options.get("assistant_early_exit", max(1, n_layers // 4)))
    if not 1 <= early_exit < n_layers:
        raise ValueError(
            f"assistant_early_exit must be in [1, {n_layers - 1}] for this {n_layers}-layer "
            f"model, got {early_exit}"
        )
    options: dict[str, int] = {"assistant_early_exit": early_exit}
    if "num_assistant_tokens" in spec.options:
        options["num_assistant_tokens"] = int(spec.options["num_assistant_tokens"])
    return StreamingGenerateEngine(spec, options, model=model)

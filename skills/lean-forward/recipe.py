"""Recipe of skill lean-forward: the Llama forward written out over the model's own weights.

python skills/lean-forward/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, main_for
from agents.recipes.greedy_engine import EngineFeatures


def apply(features: EngineFeatures, params: dict) -> Change:
    note = "" if features.kv_cache == "static" else " (with its own preallocated KV cache)"
    also = {} if features.kv_cache == "static" else {"static-kv-cache": {}}
    return Change(
        features.replace(forward="lean", kv_cache="static", compile="none"),
        summary="forward transformers -> lean: LeanLlama over the same weights, fused QKV and "
        f"gate/up matmuls, no per-step mask or cache objects{note}",
        expected="fewer aten ops per forward (~20 per layer instead of ~40): 15-40% less time per "
        "forward on a small many-layer model at batch 1; the same logits, so identical tokens",
        also=also,
    )


if __name__ == "__main__":
    main_for("lean-forward", [], apply)

"""Recipe of skill static-kv-cache: a preallocated StaticCache instead of a growing DynamicCache.

python skills/static-kv-cache/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, main_for
from agents.recipes.greedy_engine import EngineFeatures


def apply(features: EngineFeatures, params: dict) -> Change:
    before = features.kv_cache
    return Change(
        features.replace(kv_cache="static"),
        summary=f"KV cache {before} -> static: a StaticCache preallocated per request "
        "(prompt + max_new_tokens), written in place; a rollback moves its write position back",
        expected="5-10% less time per forward at 300-500 cached tokens (no torch.cat of every "
        "layer's K/V per step); identical tokens; the prerequisite of torch-compile",
    )


if __name__ == "__main__":
    main_for("static-kv-cache", [], apply)

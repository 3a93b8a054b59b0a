"""Recipe of skill cond-uncond-batching: one input path and time embedding for both CFG rows.

python skills/cond-uncond-batching/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, main_for
from agents.recipes.image_engine import ImageFeatures


def apply(features: ImageFeatures, params: dict) -> Change:
    return Change(
        features.replace(shared_input=True),
        summary="the input path (SigLIP + patch projection) and the time embedding once per "
        "step, shared by the conditional and unconditional rows (batched through body and head)",
        expected="half of the input path's ~10% of a model call at the cpu scale; exact",
    )


if __name__ == "__main__":
    main_for("cond-uncond-batching", [], apply, families=(ImageFeatures,))

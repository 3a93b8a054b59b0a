"""Recipe of skill dead-compute-removal: no unused logits, no tokens after the image block.

python skills/dead-compute-removal/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, main_for
from agents.recipes.image_engine import ImageFeatures


def apply(features: ImageFeatures, params: dict) -> Change:
    return Change(
        features.replace(logits="drop", tokens="trim"),
        summary="no lm_head logits (nothing reads them) and the sequence ends at the image "
        "block: no EOI/EOS/pad tokens through the body and the head",
        expected="logits are ~8% of a model call's FLOPs at the cpu scale, the trailing tokens "
        "27-33% of each row's tokens for a short prompt; exact",
    )


if __name__ == "__main__":
    main_for("dead-compute-removal", [], apply, families=(ImageFeatures,))

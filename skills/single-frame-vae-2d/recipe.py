"""Recipe of skill single-frame-vae-2d: the single frame's causal 3-D convs as 2-D convs.

python skills/single-frame-vae-2d/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, main_for
from agents.recipes.image_engine import ImageFeatures


def apply(features: ImageFeatures, params: dict) -> Change:
    return Change(
        features.replace(vae="conv2d"),
        summary="the VAE decodes the single frame with 2-D convolutions: each causal 3x3x3 "
        "kernel's last time tap (the other two only ever see zero padding)",
        expected="decode 0.7-0.9 s -> 0.15 s an image at the cpu scale (19.5 -> 9.1 GFLOP); exact",
    )


if __name__ == "__main__":
    main_for("single-frame-vae-2d", [], apply, families=(ImageFeatures,))

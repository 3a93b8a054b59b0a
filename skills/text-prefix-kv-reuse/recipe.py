"""Recipe of skill text-prefix-kv-reuse: the text prefix's keys/values computed once per image.

python skills/text-prefix-kv-reuse/recipe.py --engine-dir DIR [--param attention=per_row|padded]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, Param, main_for
from agents.recipes.image_engine import ImageFeatures

# per_row: one unmasked attention call per guidance row (faster on the cpu); padded: both rows in
# one masked call (faster on an H100, where the extra launches cost more than the padding)
PARAMS = [Param("attention", "per_row", choices=("per_row", "padded"))]


def apply(features: ImageFeatures, params: dict) -> Change:
    also = {}
    if features.logits != "drop" or features.tokens != "trim":
        also["dead-compute-removal"] = {}
    if features.modulation != "vector":
        also["vectorised-modulation"] = {}
    if not features.shared_input:
        also["cond-uncond-batching"] = {}
    return Change(
        features.replace(
            prefix_cache=True,
            logits="drop",
            tokens="trim",
            modulation="vector",
            shared_input=True,
            attention=params["attention"],
        ),
        summary="text-prefix keys/values in the body and the flow head computed once per image, "
        f"attention {params['attention']}; every step runs only the time + image tokens of both "
        "rows against them, with one input path and time embedding for both",
        expected="body and head work per step from 2 x the padded sequence to 2 x the block "
        "(257 of 392 tokens a row at the cpu scale, prefix paid once): 2.5-2.8 s -> 2.1-2.5 s an "
        "image measured with the other exact techniques on, and per-row attention ~3-7% more "
        "than one masked call over padded prefixes; exact (PSNR > 88 dB)",
        also=also,
    )


if __name__ == "__main__":
    main_for("text-prefix-kv-reuse", PARAMS, apply, families=(ImageFeatures,))

"""Recipe of skill mask-overlap: the grammar's mask computed while the forward runs.

python skills/mask-overlap/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, main_for
from agents.recipes.json_engine import JsonFeatures


def apply(features: JsonFeatures, params: dict) -> Change:
    return Change(
        features.replace(overlap=True),
        summary="mask overlap: the mask of allowed tokens for the next open position computed on "
        "a worker thread while the model's forward runs (it depends on the grammar state alone)",
        expected="at most the mask time per open token back (the table's grammar line); on 2 "
        "shared cores less, as the mask thread competes with the forward's kernels",
    )


if __name__ == "__main__":
    main_for("mask-overlap", [], apply, families=(JsonFeatures,))

"""Recipe of skill hybrid-lean-decode: the NemotronH decode step written out (LeanDecoder).

python skills/hybrid-lean-decode/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, main_for
from agents.recipes.hybrid_engine import HybridFeatures


def apply(features: HybridFeatures, params: dict) -> Change:
    changes: dict = {"decode": "lean"}
    note = ""
    if features.dtype != "float32":
        changes["dtype"] = "float32"  # numpy GEMMs multiply float32 only
        note = "; weights back to float32 (numpy has no bfloat16)"
    return Change(
        features.replace(**changes),
        summary="decode steps run in LeanDecoder: one forward for every running request whatever "
        "its length, GEMMs in numpy over pre-transposed fp32 weights, Mamba2 conv/SSM states "
        "updated in place, the shared prefix's keys read once per step for all rows restored "
        f"from it (prefill stays on transformers){note}",
        expected="F.linear at 1-16 rows reads weights at a third to a half of numpy's rate here, "
        "and DynamicCache concatenates every row's KV each step: a 16-row decode step ~250 ms -> "
        "~100 ms on the cpu hybrid model; same arithmetic in another order, so only near-ties flip",
    )


if __name__ == "__main__":
    main_for("hybrid-lean-decode", [], apply, families=(HybridFeatures,))

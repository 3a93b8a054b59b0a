"""Recipe of skill prediction-realignment: re-find the place in the prediction after a mismatch.

python skills/prediction-realignment/recipe.py --engine-dir DIR [--param anchor=3]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, Param, main_for
from agents.recipes.greedy_engine import MAX_ANCHOR, EngineFeatures

PARAMS = [Param("anchor", 3, minimum=1, maximum=MAX_ANCHOR)]
DEFAULT_BLOCK = 15  # prediction-block-verification's first sweep value (16 rows per forward)


def apply(features: EngineFeatures, params: dict) -> Change:
    anchor = params["anchor"]
    note = ""
    also = {}
    if not features.verify_block:
        features = features.replace(verify_block=DEFAULT_BLOCK)
        note = f" (block verification was off: turned on with block {DEFAULT_BLOCK})"
        also = {"prediction-block-verification": {"block_size": DEFAULT_BLOCK}}
    return Change(
        features.replace(realign=True, anchor=anchor),
        summary=f"re-align the prediction after a mismatch on the output's last {anchor} "
        f"tokens, so drafting resumes after an edit{note}",
        expected="tokens per forward from ~1.3 to ~3 on the cpu code-edit workload (drafting "
        "no longer ends at the bug fix or the first rewritten line); no change on garbage "
        "predictions (anchors do not match)",
        also=also,
    )


if __name__ == "__main__":
    main_for("prediction-realignment", PARAMS, apply)

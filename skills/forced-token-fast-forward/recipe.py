"""Recipe of skill forced-token-fast-forward: forced tokens without a model call of their own.

python skills/forced-token-fast-forward/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, main_for
from agents.recipes.json_engine import JsonFeatures


def apply(features: JsonFeatures, params: dict) -> Change:
    return Change(
        features.replace(fast_forward=True),
        summary="forced-token fast-forward: the tokens the grammar forces (compute_ff_tokens) are "
        "taken without a model call, emitted at once, and fed to the next forward as one block "
        "with the sampled token; the document's opening joins the prefill and the request ends "
        "when the grammar completes",
        expected="one forward per sampled (open) token instead of one per output token: up to "
        "1/(1 - forced share) fewer forwards; the block forwards move logits in the last bits",
    )


if __name__ == "__main__":
    main_for("forced-token-fast-forward", [], apply, families=(JsonFeatures,))

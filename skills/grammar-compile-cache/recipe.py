"""Recipe of skill grammar-compile-cache: compiled matchers per schema, deep-copied per request.

python skills/grammar-compile-cache/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, main_for
from agents.recipes.json_engine import JsonFeatures


def apply(features: JsonFeatures, params: dict) -> Change:
    return Change(
        features.replace(grammar_cache=True),
        summary="grammar compile cache: matchers compiled once per schema, keyed by the whole "
        "schema serialised in its own key order (never its name or title), deep-copied at each "
        "request's "
        "start",
        expected="the compile (llguidance: ~1.5 ms plus the matcher's setup) leaves every repeat "
        "of a schema's request; small where compiles are cheap, large with slow compilers",
    )


if __name__ == "__main__":
    main_for("grammar-compile-cache", [], apply, families=(JsonFeatures,))

"""Recipe of skill grammar-prompt-lookup: drafts from the prompt, verified under the grammar.

python skills/grammar-prompt-lookup/recipe.py --engine-dir DIR [--param draft=16]
    [--param min_ngram=2]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.cli import Change, Param, main_for
from agents.recipes.json_engine import MAX_DRAFT, MAX_NGRAM, JsonFeatures

PARAMS = [
    Param("draft", 16, minimum=1, maximum=MAX_DRAFT),
    Param("min_ngram", 2, minimum=1, maximum=MAX_NGRAM),
]


def apply(features: JsonFeatures, params: dict) -> Change:
    draft, shortest = params["draft"], params["min_ngram"]
    also = {}
    if not features.fast_forward:
        also["forced-token-fast-forward"] = {}
    if features.forward != "numpy":
        also["openblas-matmul"] = {}
    notes = []
    if also:
        notes.append(" (with " + " and ".join(also) + ", which it needs)")
    # the numpy forward as openblas-matmul sets it up: torch's own pool at 1 thread
    threads = 1 if features.forward != "numpy" else features.threads
    return Change(
        features.replace(
            draft=draft,
            min_ngram=shortest,
            fast_forward=True,
            forward="numpy",
            matmul="torch",
            fused=False,
            threads=threads,
        ),
        summary=f"prompt-lookup speculation under the grammar{''.join(notes)}: up to {draft} "
        "tokens drafted per forward by walking the grammar (forced tokens as they are, open ones "
        f"from the latest earlier occurrence of the context's last {shortest}-4 tokens), verified "
        "in one forward with the reference's rule at every position, the cache cropped after "
        "the last right draft",
        expected="tokens per forward up to the workload's lookup_tokens_per_forward (~3.6 at the "
        "cpu scale); a block forward costs ~1.5-2.5x a one-token one here, so ~1.5-2x lower "
        "latency; logits move in the last bits",
        also=also,
    )


if __name__ == "__main__":
    main_for("grammar-prompt-lookup", PARAMS, apply, families=(JsonFeatures,))

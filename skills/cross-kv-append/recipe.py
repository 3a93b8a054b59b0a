"""Recipe of skill cross-kv-append: keep each stream's cross-attention keys/values of final
encoder frames and project only the rest.

    python skills/cross-kv-append/recipe.py --engine-dir DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for agents.recipes

from agents.recipes.asr_engine import AsrFeatures
from agents.recipes.cli import Change, main_for


def apply(features: AsrFeatures, params: dict) -> Change:
    also = {}
    note = ""
    if features.encoder != "incremental":
        also["incremental-encoder"] = {}
        note = " (with incremental-encoder, which tells which frames are final)"
    return Change(
        features.replace(encoder="incremental", cross_kv="append"),
        summary="cross-attention keys/values appended: each stream keeps those of its final "
        f"encoder frames and projects only the frames after them{note}",
        expected="the decoder's cross-attention projections per transcript shrink from the whole "
        "stream to the new frames plus the lookahead tail; a few % of a transcript at the cpu "
        "scale, more with a deeper decoder or longer streams",
        also=also,
    )


if __name__ == "__main__":
    main_for("cross-kv-append", [], apply, families=(AsrFeatures,))

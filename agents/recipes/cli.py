"""The command line every recipe shares: ``recipe.py --engine-dir DIR [--param key=value ...]``.

A recipe reads ``DIR/engine_features.json`` (absent = the starter), applies its change, re-renders
``DIR/engine.py`` and prints one JSON line: ``{"skill", "params", "summary", "expected", "also",
"features"}``. A wrong parameter exits with status 2 and a message naming the valid values.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.recipes.asr_engine import AsrFeatures
from agents.recipes.engines import Features, load_features, write_engine
from agents.recipes.greedy_engine import EngineFeatures, FeatureError
from agents.recipes.hybrid_engine import HybridFeatures
from agents.recipes.json_engine import JsonFeatures
from agents.recipes.serving_engine import ServingFeatures

# what each features class is the engine of, for messages
ENGINE_KINDS = {
    EngineFeatures: "a predicted_outputs engine (no family in engine_features.json)",
    HybridFeatures: 'a hybrid_ssm engine ("family": "hybrid" in engine_features.json)',
    ServingFeatures: 'a standard engine ("family": "serving" in engine_features.json)',
    JsonFeatures: 'a json_decoding engine ("family": "json" in engine_features.json)',
    AsrFeatures: 'a streaming_asr engine ("family": "asr" in engine_features.json)',
}


@dataclass(frozen=True, slots=True)
class Param:
    """One recipe parameter: its default and the values it accepts."""

    name: str
    default: Any
    choices: tuple[Any, ...] | None = None  # the only valid values, or None for an int range
    minimum: int | None = None  # bounds of an integer parameter without fixed choices
    maximum: int | None = None

    def parse(self, text: str) -> Any:
        if self.choices is not None:
            for choice in self.choices:
                if text == str(choice):
                    return choice
            raise ValueError(
                f"--param {self.name}={text}: valid values are {', '.join(map(str, self.choices))}"
            )
        try:
            value = int(text)
        except ValueError:
            value = None
        low_ok = value is not None and (self.minimum is None or value >= self.minimum)
        if not low_ok or (self.maximum is not None and value > self.maximum):
            bounds = [f">= {self.minimum}"] if self.minimum is not None else []
            bounds += [f"<= {self.maximum}"] if self.maximum is not None else []
            raise ValueError(
                f"--param {self.name}={text}: valid values are integers {' and '.join(bounds)}"
            )
        return value


@dataclass(frozen=True, slots=True)
class Change:
    """What a recipe did: the new features, a one-line summary and the expected effect."""

    features: Features
    summary: str
    expected: str
    # other skills this change applied on the way (skill -> the params it used), e.g. block
    # verification turned on by re-alignment: the loop counts them as tried and done
    also: dict[str, dict[str, Any]] = field(default_factory=dict)


Apply = Callable[[Features, dict[str, Any]], Change]


def run_recipe(
    skill: str,
    params: Sequence[Param],
    apply: Apply,
    argv: Sequence[str] | None = None,
    *,
    families: tuple[type, ...] = (EngineFeatures,),
) -> int:
    """Apply a recipe to ``--engine-dir``; ``families`` are the features classes (engine kinds)
    the recipe knows how to change: any other kind exits 2 naming what the directory holds."""
    parser = argparse.ArgumentParser(
        prog=f"skills/{skill}/recipe.py",
        description=f"Apply skill {skill!r} to an engine directory and re-render its engine.py.",
    )
    parser.add_argument("--engine-dir", type=Path, required=True, metavar="DIR")
    names = ", ".join(p.name for p in params) or "none"
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"recipe parameter (repeatable); known: {names}",
    )
    args = parser.parse_args(argv)
    if not args.engine_dir.is_dir():
        parser.error(f"--engine-dir {args.engine_dir} is not a directory")
    known = {p.name: p for p in params}
    values = {p.name: p.default for p in params}
    try:
        for item in args.param:
            key, sep, text = item.partition("=")
            if not sep:
                raise ValueError(f"--param {item!r}: write it as KEY=VALUE")
            if key not in known:
                raise ValueError(f"--param {key}: unknown parameter; {skill} takes: {names}")
            values[key] = known[key].parse(text)
        current = load_features(args.engine_dir)
        if not isinstance(current, families):
            kinds = " or ".join(ENGINE_KINDS[family].split(" (")[0] for family in families)
            raise FeatureError(
                f"{skill} changes {kinds}; {args.engine_dir} holds {ENGINE_KINDS[type(current)]}"
            )
        change = apply(current, values)
    except (ValueError, FeatureError) as error:
        parser.error(str(error))  # exits with status 2
    write_engine(args.engine_dir, change.features)
    result = {
        "skill": skill,
        "params": values,
        "summary": change.summary,
        "expected": change.expected,
        "also": change.also,
        "features": change.features.to_dict(),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def main_for(
    skill: str,
    params: Sequence[Param],
    apply: Apply,
    *,
    families: tuple[type, ...] = (EngineFeatures,),
) -> None:
    """Entry point of a recipe script."""
    sys.exit(run_recipe(skill, params, apply, families=families))

"""Which renderer draws an engine directory: ``engine_features.json`` names its family.

No file, or a file without ``family``, is a predicted_outputs engine (``greedy_engine``, whose
starter has no features file); ``"family": "hybrid"`` is a hybrid_ssm engine (``hybrid_engine``),
``"family": "serving"`` a standard one (``serving_engine``), ``"family": "json"`` a
json_decoding one (``json_engine``), ``"family": "asr"`` a streaming_asr one (``asr_engine``) and
``"family": "image"`` a unified_multimodal one (``image_engine``);
their starters ship the file.
Recipes load, change and write features through here.
"""

from __future__ import annotations

import json
from pathlib import Path

from agents.recipes import (
    asr_engine,
    greedy_engine,
    hybrid_engine,
    image_engine,
    json_engine,
    serving_engine,
)
from agents.recipes.greedy_engine import ENGINE_FILE, FEATURES_FILE, FeatureError

Features = (
    greedy_engine.EngineFeatures
    | hybrid_engine.HybridFeatures
    | serving_engine.ServingFeatures
    | json_engine.JsonFeatures
    | asr_engine.AsrFeatures
    | image_engine.ImageFeatures
)
FAMILIES = {
    hybrid_engine.FAMILY: hybrid_engine.HybridFeatures,
    serving_engine.FAMILY: serving_engine.ServingFeatures,
    json_engine.FAMILY: json_engine.JsonFeatures,
    asr_engine.FAMILY: asr_engine.AsrFeatures,
    image_engine.FAMILY: image_engine.ImageFeatures,
}


def load_features(engine_dir: Path) -> Features:
    """The engine's recorded features; a directory without the file holds the
    predicted_outputs starter."""
    path = Path(engine_dir) / FEATURES_FILE
    if not path.is_file():
        return greedy_engine.EngineFeatures()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FeatureError(f"{path} is not valid JSON ({error}); delete it to start over") from None
    if not isinstance(data, dict):
        raise FeatureError(f"{path} must hold a JSON object of features")
    family = data.get("family")
    if family is None:
        return greedy_engine.EngineFeatures.from_dict(data)
    if family not in FAMILIES:
        raise FeatureError(
            f"{path}: family={family!r}; known families: {', '.join(FAMILIES)} (or none for "
            "predicted_outputs engines)"
        )
    return FAMILIES[family].from_dict(data)


def render_engine(features: Features) -> str:
    if isinstance(features, hybrid_engine.HybridFeatures):
        return hybrid_engine.render_engine(features)
    if isinstance(features, serving_engine.ServingFeatures):
        return serving_engine.render_engine(features)
    if isinstance(features, json_engine.JsonFeatures):
        return json_engine.render_engine(features)
    if isinstance(features, asr_engine.AsrFeatures):
        return asr_engine.render_engine(features)
    if isinstance(features, image_engine.ImageFeatures):
        return image_engine.render_engine(features)
    return greedy_engine.render_engine(features)


def write_engine(engine_dir: Path, features: Features) -> Path:
    """Render ``engine.py`` for ``features`` into ``engine_dir`` and record the features."""
    engine_dir = Path(engine_dir)
    source = render_engine(features)
    compile(source, str(engine_dir / ENGINE_FILE), "exec")  # never leave a broken engine behind
    engine_dir.mkdir(parents=True, exist_ok=True)
    # engine first, then the record of it: a kill in between leaves the old features, which the
    # next recipe re-renders from; each file is replaced whole, never half-written
    greedy_engine._replace(engine_dir / ENGINE_FILE, source)
    greedy_engine._replace(
        engine_dir / FEATURES_FILE, json.dumps(features.to_dict(), indent=2) + "\n"
    )
    return engine_dir / ENGINE_FILE

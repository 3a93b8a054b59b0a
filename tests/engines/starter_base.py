"""Loads the predicted_outputs starter so the wrong engines below can subclass it."""

import importlib.util
from pathlib import Path

STARTER = Path(__file__).resolve().parents[2] / "scenarios/predicted_outputs/starter/engine.py"


def load_starter():
    spec = importlib.util.spec_from_file_location("predicted_outputs_starter", STARTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

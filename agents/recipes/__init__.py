"""Offline recipes: parameterised, real code changes the offline backend applies to an engine.

A recipe script (``skills/<name>/recipe.py``) reads the engine's feature set, changes it and
re-renders the engine through a renderer here; the renderer owns the code, the features are its
state (``engine_features.json`` next to ``engine.py``).
"""

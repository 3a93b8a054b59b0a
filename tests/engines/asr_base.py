"""streaming_asr engines for the harness's tests: the rendered engine of given features, loaded
as a module, optionally with one line changed (the fault a wrong engine injects)."""

import types

from agents.recipes.asr_engine import AsrFeatures, render_engine


def rendered_module(features: AsrFeatures, fault: tuple[str, str] | None = None):
    source = render_engine(features)
    if fault is not None:
        old, new = fault
        if source.count(old) != 1:
            raise AssertionError(f"the fault's target must occur once in the engine: {old!r}")
        source = source.replace(old, new)
    module = types.ModuleType("asr_rendered")
    exec(compile(source, "asr_rendered.py", "exec"), module.__dict__)
    return module

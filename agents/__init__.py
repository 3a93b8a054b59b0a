"""vibeserve's synthesis loop: planner, Implementer, Judge, Evaluator, backends, workspace, memory.

The plugin imports this package lazily, only for ``--vibeserve-synth``. Importing it has no side
effects and loads nothing but the standard library; the submodules are imported by name
(``agents.workspace``, ``agents.memory``, ...).

``agents`` is also the import name of OpenAI's Agents SDK (distribution ``openai-agents``). Where
both are installed, whichever comes first on ``sys.path`` wins, and the other is shadowed.
``ensure_vibeserve_agents()`` says which file won; because this file imports only the standard
library, a caller may load it by path (``importlib.util.spec_from_file_location``) and run the
check before anything imports ``agents`` by name.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

_THIS_FILE = Path(__file__).resolve()


def ensure_vibeserve_agents() -> ModuleType:
    """Return the module that ``import agents`` resolves to, checked to be this package.

    Raises ImportError naming the file that shadows this one, and the fix.
    """
    checkout = _THIS_FILE.parent.parent
    module = sys.modules.get("agents")
    if module is None:
        try:
            module = importlib.import_module("agents")
        except ImportError as error:
            raise ImportError(
                f"cannot import vibeserve's synthesis loop (package 'agents' at "
                f"{_THIS_FILE.parent}): {error}. Run from the vibeserve checkout ({checkout}) "
                f"or install it with `pip install -e {checkout}`."
            ) from error
    found = getattr(module, "__file__", None)
    if found is not None and Path(found).resolve() == _THIS_FILE:
        return module
    raise ImportError(_shadowing_message(found, module, checkout))


def _shadowing_message(found: str | None, module: ModuleType, checkout: Path) -> str:
    portions = [str(path) for path in getattr(module, "__path__", [])]
    if found is None and str(_THIS_FILE.parent) in portions:
        return (
            f"`import agents` found vibeserve's {_THIS_FILE.parent} as a namespace package, so "
            f"its __init__.py never ran: the editable install predates agents/__init__.py. Fix: "
            f"`pip install -e {checkout}` again."
        )
    where = found or f"a namespace package at {portions}"
    owner = ""
    try:
        from importlib.metadata import packages_distributions

        owners = set(packages_distributions().get("agents", [])) - {"vibeserve"}
        if owners:
            owner = f" (installed by {', '.join(sorted(owners))})"
    except Exception:  # noqa: BLE001 -- the message is still right without the owner's name
        owner = ""
    return (
        f"`import agents` found {where}{owner}, which shadows vibeserve's synthesis loop at "
        f"{_THIS_FILE}. The name 'agents' is also the import name of OpenAI's Agents SDK. Fix: "
        f"`pip uninstall openai-agents` in this environment (or use a separate virtualenv), or "
        f"run from the vibeserve checkout ({checkout}) with `python -m pytest ...` so that its "
        f"directory comes first on sys.path."
    )

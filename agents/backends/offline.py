"""The offline backend: no network, no model. The Implementer runs the chosen skill's recipe — a
real, parameterised code change to the workspace engine — as a black-box script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agents.backends.base import BackendError, Implementation
from agents.planner import Task
from agents.skills import Skill

RECIPE_TIMEOUT_S = 300


class OfflineBackend:
    name = "offline"
    rejection_is_final = True

    def __init__(self, library: dict[str, Skill]) -> None:
        self.library = library

    def implement(self, task: Task, engine_dir: Path, feedback: list[str]) -> Implementation:
        skill = self.library.get(task.skill)
        if skill is None or skill.recipe is None:
            raise BackendError(f"skill {task.skill!r} has no recipe the offline backend can run")
        if feedback:
            # A recipe is deterministic: running it again cannot address the Judge's reasons.
            raise BackendError(
                f"recipe {task.skill} was rejected ({feedback[0]}); the offline backend has no "
                "other way to implement it"
            )
        before = _engine_state(engine_dir)
        command = [sys.executable, str(skill.recipe), "--engine-dir", str(engine_dir)]
        for key, value in task.params.items():
            command += ["--param", f"{key}={value}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=RECIPE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BackendError(f"recipe {skill.recipe} ran over {RECIPE_TIMEOUT_S} s") from None
        if done.returncode != 0:
            raise BackendError(
                f"recipe {skill.recipe} failed ({done.returncode}): {done.stderr.strip()[-1500:]}"
            )
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise BackendError(
                f"recipe {skill.recipe} printed no JSON result line: {done.stdout[-500:]!r}"
            ) from None
        if _engine_state(engine_dir) == before:
            # e.g. openblas-matmul already turned the lean forward on: judging and measuring the
            # same engine again would spend a round on noise
            raise BackendError(
                f"recipe {skill.name} {task.params} changed nothing: the engine already has it"
            )
        also = result.get("also") or {}
        return Implementation(
            summary=result.get("summary", f"{task.skill} {task.params}"),
            skills_used=[task.skill, *also],
            expected=result.get("expected", ""),
            details=result,
        )


def _engine_state(engine_dir: Path) -> dict[str, bytes]:
    """Every file of the engine (caches aside), to tell whether a recipe changed anything."""
    return {
        str(path.relative_to(engine_dir)): path.read_bytes()
        for path in sorted(engine_dir.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }

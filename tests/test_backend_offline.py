"""The offline backend: a skill's recipe run as a black box on the workspace engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agents.backends.base import BackendError
from agents.backends.offline import OfflineBackend
from agents.planner import Task
from agents.skills import load_library

STARTER = Path(__file__).resolve().parent.parent / "scenarios" / "predicted_outputs" / "starter"


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(STARTER, tmp_path / "engine"))


def test_a_recipe_changes_the_engine_and_says_what_it_expects(engine_dir):
    backend = OfflineBackend(load_library(scenario="predicted_outputs"))
    task = Task(1, "prediction-block-verification", {"block_size": 8}, 2, "test")
    done = backend.implement(task, engine_dir, [])
    assert done.skills_used == ["prediction-block-verification"]
    assert "VERIFY_BLOCK = 8" in (engine_dir / "engine.py").read_text()
    assert done.summary and done.expected


def test_a_recipe_names_the_skills_it_applied_on_the_way(engine_dir):
    backend = OfflineBackend(load_library(scenario="predicted_outputs"))
    done = backend.implement(
        Task(1, "prediction-realignment", {"anchor": 3}, 2, "t"), engine_dir, []
    )
    assert done.skills_used == ["prediction-realignment", "prediction-block-verification"]
    assert done.details["also"] == {"prediction-block-verification": {"block_size": 15}}


def test_a_recipe_that_changes_nothing_is_refused(engine_dir):
    """openblas-matmul turns the lean forward on; lean-forward afterwards is a no-op round."""
    backend = OfflineBackend(load_library(scenario="predicted_outputs"))
    backend.implement(Task(1, "openblas-matmul", {}, 1, "test"), engine_dir, [])
    with pytest.raises(BackendError, match="changed nothing: the engine already has it"):
        backend.implement(Task(2, "lean-forward", {}, 1, "test"), engine_dir, [])


def test_a_rejected_recipe_is_not_run_again(engine_dir):
    backend = OfflineBackend(load_library(scenario="predicted_outputs"))
    task = Task(1, "bf16-weights", {}, 1, "test")
    with pytest.raises(BackendError, match="no other way to implement it"):
        backend.implement(task, engine_dir, ["test_tokens_equal_reference: position 7"])
    assert (engine_dir / "engine.py").read_text() == (STARTER / "engine.py").read_text()

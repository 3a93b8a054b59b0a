"""What every Implementer backend provides: change the workspace engine for one task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agents.planner import Task


class BackendError(RuntimeError):
    """The backend could not produce a candidate (API error, recipe failure, timeout)."""


@dataclass(frozen=True, slots=True)
class Implementation:
    summary: str  # what changed, one line, for the commit message
    skills_used: list[str]
    expected: str  # what the Implementer expects the change to do
    cost_usd: float = 0.0
    tokens: int = 0
    details: dict = field(default_factory=dict)


class Backend(Protocol):
    name: str
    # True when a Judge rejection condemns the technique itself (a deterministic recipe), so the
    # roadmap abandons it; False when another attempt may implement it better (an LLM).
    rejection_is_final: bool

    def implement(self, task: Task, engine_dir: Path, feedback: list[str]) -> Implementation:
        """Edit ``engine_dir`` for ``task``; ``feedback`` holds the Judge's last reasons."""
        ...

"""The planner: picks the next task from the roadmap, the rounds so far and the Evaluator's hints.

Rules (the paper's, kept honest in code):
- a skill is a candidate when one of its triggers matches a current hint; the hint's estimated
  gain ranks it; abandoned skills never come back, parked ones at most twice more;
- after a failed round the next task must be strictly smaller (a smaller ``size``), or the planner
  says that no smaller task exists;
- plateau: when the last three accepted results are within 5%, it pivots to a skill not yet done,
  and names the change that should break the plateau;
- done skills may still be tuned (the rest of their parameter sweep), at half priority;
- on equal gain, a skill that also turns on a technique not yet in place (``covers``) goes first:
  one round then takes what two would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.evaluator import Hint
from agents.skills import Skill

PLATEAU_WINDOW = 3
PLATEAU_SPREAD = 0.05
MAX_PARKED_RETRIES = 2


@dataclass(frozen=True, slots=True)
class Task:
    round: int
    skill: str
    params: dict[str, Any]
    size: int
    why: str

    def key(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        return task_key(self.skill, self.params)


def task_key(skill: str, params: dict[str, Any]) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return skill, tuple(sorted(params.items()))


@dataclass(frozen=True, slots=True)
class PlannerState:
    round: int
    statuses: dict[str, str]  # technique -> todo / in progress / done / parked / abandoned
    attempts: dict[str, int]  # technique -> rounds that tried it
    tried: frozenset[tuple[str, tuple[tuple[str, Any], ...]]]  # (skill, params) already tried
    hints: tuple[Hint, ...]
    accepted_ratios: tuple[float, ...]  # oldest first
    last_failed_size: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    task: Task | None
    notes: list[str] = field(default_factory=list)  # why, for progress.md


def plateaued(ratios: tuple[float, ...]) -> bool:
    if len(ratios) < PLATEAU_WINDOW:
        return False
    window = ratios[-PLATEAU_WINDOW:]
    return (max(window) - min(window)) / min(window) <= PLATEAU_SPREAD


class Planner:
    def __init__(self, library: dict[str, Skill], *, needs_recipe: bool = True) -> None:
        self.library = library
        # The offline backend can only run recipes; an LLM Implementer can apply any skill.
        self.needs_recipe = needs_recipe

    def _score(self, skill: Skill, hints: tuple[Hint, ...]) -> tuple[float, Hint | None]:
        matching = [hint for hint in hints if hint.keyword in skill.triggers]
        if not matching:
            return 0.0, None
        best = max(matching, key=lambda hint: hint.estimated_gain)
        return best.estimated_gain, best

    def plan(self, state: PlannerState) -> Plan:
        notes: list[str] = []
        pivot = plateaued(state.accepted_ratios)
        if pivot:
            window = ", ".join(f"{r:.2f}" for r in state.accepted_ratios[-PLATEAU_WINDOW:])
            notes.append(
                f"plateau: the last {PLATEAU_WINDOW} accepted ratios ({window}) are "
                f"within {PLATEAU_SPREAD:.0%}; pivoting to a technique not yet done"
            )
        # (rank, task); rank = (exact before approximate, weighted gain, techniques it would also
        # turn on, table order)
        candidates: list[tuple[tuple[int, float, int, int], Task]] = []
        for order, skill in enumerate(self.library.values()):
            status = state.statuses.get(skill.name, "todo")
            if status == "abandoned" or (self.needs_recipe and skill.recipe is None):
                continue
            if status == "parked" and state.attempts.get(skill.name, 0) > MAX_PARKED_RETRIES:
                continue
            if pivot and status == "done":
                continue
            gain, hint = self._score(skill, state.hints)
            if hint is None:
                continue
            weight = 0.5 if status in ("done", "parked") else 1.0
            # covering a technique not yet in place takes more of the hint's gain at once
            covered = sum(state.statuses.get(c, "todo") != "done" for c in skill.covers)
            for params in skill.param_grid():
                if task_key(skill.name, params) in state.tried:
                    continue
                why = f"{hint.describe()} -> {skill.name}"
                if status == "done":
                    why = f"tune {skill.name}: {hint.describe()}"
                task = Task(state.round, skill.name, params, skill.size, why)
                rank = (int(not hint.approximate), gain * weight, covered, -order)
                candidates.append((rank, task))
        if state.last_failed_size is not None and candidates:
            smaller = [c for c in candidates if c[1].size < state.last_failed_size]
            if smaller:
                notes.append(
                    f"the last round failed: only tasks smaller than size "
                    f"{state.last_failed_size} are considered"
                )
                candidates = smaller
            else:
                notes.append(
                    f"the last round failed, and no task is smaller than size "
                    f"{state.last_failed_size}: taking the smallest one left"
                )
                least = min(task.size for _, task in candidates)
                candidates = [c for c in candidates if c[1].size == least]
        if not candidates:
            notes.append("no skill's triggers match the current hints with an untried change")
            return Plan(None, notes)
        task = max(candidates, key=lambda c: c[0])[1]
        if pivot:
            notes.append(f"the change that should break the plateau: {task.skill} {task.params}")
        return Plan(task, notes)

"""The task brief every LLM-driven Implementer gets: one self-contained text, built only from what
the Implementer may see (the task, the skill, the engine contract, the Judge's last reasons).

It never names the Judge's held-out seed, the reference outputs or the private run directory.
"""

from __future__ import annotations

from pathlib import Path

from agents.planner import Task
from agents.skills import Skill

# What the Implementer writes next to the engine when it is done (read by the backends).
RESULT_FILE = ".vibeserve-implementation.json"

RULES = """\
Rules (the Accuracy Judge enforces them; a breach rejects the round):
- Every emitted token must be the model's own greedy choice from a forward pass of the real
  weights. Never emit prediction tokens without verifying them, never cache completions keyed on
  the prompt, never hard-code token ids, never touch clocks or timers.
- The engine may import only `pytest_vibeserve.contract` from the harness; no `reference_impls`,
  no `pytest`, no reading files outside this directory.
- Count every model forward in the `model_forward_calls` counter returned by `counters()`.
- Keep `create_engine(spec)` and the Engine protocol of `pytest_vibeserve/contract.py`.
- Work only inside the engine directory; do not read or write anything outside it."""


def build_task_prompt(
    task: Task, engine_dir: Path, feedback: list[str], skill: Skill | None
) -> str:
    """The brief for one attempt at ``task`` on the engine in ``engine_dir``."""
    params = ", ".join(f"{key}={value}" for key, value in task.params.items()) or "none"
    parts = [
        f"# Round {task.round}: apply the technique `{task.skill}` to the engine",
        "",
        f"Engine directory (your working directory): {engine_dir}",
        f"Parameters to use: {params}",
        f"Why the planner chose it: {task.why}",
        "",
        "The engine is `engine.py` in that directory; it implements the engine contract of "
        "`pytest_vibeserve/contract.py` (EngineSpec, Request, Event, `create_engine`). Change it "
        "so that it applies the technique, stays exact (the same greedy tokens as the reference) "
        "and gets faster on the scenario's headline metric.",
        "",
        RULES,
        "",
    ]
    if skill is not None:
        parts += [f"## The skill `{skill.name}`", "", skill.description, "", skill.body.strip(), ""]
    if feedback:
        parts += [
            "## The Accuracy Judge rejected the previous attempt",
            "",
            *(f"- {reason}" for reason in feedback),
            "",
            "Fix these problems; the Judge re-checks on inputs you have not seen.",
            "",
        ]
    parts += [
        "## When you are done",
        "",
        f"Write `{RESULT_FILE}` in the engine directory: a JSON object with `summary` (one line: "
        "what changed), `skills_used` (a list of skill names) and `expected` (what you expect the "
        "change to do to the headline metric, with a number).",
    ]
    return "\n".join(parts) + "\n"

"""The planner's rules, on a hand-made skills library (no recipes are run)."""

from __future__ import annotations

from pathlib import Path

from agents.evaluator import Hint
from agents.planner import Planner, PlannerState, plateaued, task_key
from agents.skills import Skill

RECIPE = Path(__file__)  # any existing file: the planner only needs to know a recipe exists


def skill(
    name: str, triggers: tuple[str, ...], params: dict | None = None, covers: tuple = ()
) -> Skill:
    return Skill(
        name, f"{name} skill", Path("."), triggers, (), RECIPE, params or {}, covers=covers
    )


LIBRARY = {
    s.name: s
    for s in (
        skill("block-verify", ("prediction-unused", "low-acceptance"), {"block": [8, 16, 32]}),
        skill("static-cache", ("decode-bound",)),
        skill("bf16", ("memory-bandwidth",)),
        skill("threads", ("decode-bound",), {"n": [1, 2]}),
    )
}
HINTS = (
    Hint("prediction-unused", 5.0, "1.00 tok/forward"),
    Hint("memory-bandwidth", 2.0, "25% of roofline"),
    Hint("decode-bound", 1.2, "TPOT 70 ms"),
)


def state(**changes) -> PlannerState:
    base = dict(
        round=1,
        statuses={},
        attempts={},
        tried=frozenset(),
        hints=HINTS,
        accepted_ratios=(1.0,),
        last_failed_size=None,
    )
    base.update(changes)
    return PlannerState(**base)


def test_the_biggest_hint_picks_the_skill():
    plan = Planner(LIBRARY).plan(state())
    assert plan.task.skill == "block-verify"
    assert plan.task.params == {"block": 8}
    assert "prediction-unused" in plan.task.why


def test_on_equal_gain_a_skill_covering_a_missing_technique_goes_first():
    library = dict(LIBRARY)
    library["realign"] = skill(
        "realign", ("prediction-unused", "low-acceptance"), {"anchor": [3]}, ("block-verify",)
    )
    plan = Planner(library).plan(state())
    assert (plan.task.skill, plan.task.params) == ("realign", {"anchor": 3})
    # once the covered technique is in place, covering it is worth nothing: table order again
    plan = Planner(library).plan(state(statuses={"block-verify": "done"}))
    assert plan.task.skill == "realign"  # block-verify is done: half priority
    plan = Planner(library).plan(
        state(statuses={"block-verify": "done", "realign": "done"}, hints=HINTS[:1])
    )
    assert plan.task.skill == "block-verify"  # equal weight now, earlier in the table


def test_tried_params_move_the_sweep_on():
    tried = frozenset({task_key("block-verify", {"block": 8})})
    plan = Planner(LIBRARY).plan(state(tried=tried))
    assert plan.task.params == {"block": 16}


def test_abandoned_skills_never_return():
    statuses = {"block-verify": "abandoned"}
    plan = Planner(LIBRARY).plan(state(statuses=statuses))
    assert plan.task.skill == "bf16"


def test_after_a_failure_the_next_task_is_strictly_smaller():
    plan = Planner(LIBRARY).plan(state(last_failed_size=2))
    assert plan.task.size < 2
    assert plan.task.skill == "bf16"
    assert any("smaller than size 2" in note for note in plan.notes)


def test_after_a_failure_with_nothing_smaller_it_says_so():
    plan = Planner(LIBRARY).plan(state(last_failed_size=1))
    assert plan.task is not None
    assert any("no task is smaller" in note for note in plan.notes)


def test_plateau_pivots_away_from_done_skills_and_names_the_change():
    statuses = {"block-verify": "done"}
    plan = Planner(LIBRARY).plan(state(statuses=statuses, accepted_ratios=(3.0, 3.05, 3.1)))
    assert plan.task.skill != "block-verify"
    assert any(note.startswith("plateau") for note in plan.notes)
    assert any("should break the plateau" in note for note in plan.notes)


def test_done_skill_is_tuned_when_no_plateau():
    statuses = {
        "block-verify": "done",
        "bf16": "abandoned",
        "static-cache": "done",
        "threads": "abandoned",
    }
    tried = frozenset({task_key("block-verify", {"block": 8})})
    plan = Planner(LIBRARY).plan(state(statuses=statuses, tried=tried))
    assert plan.task.skill == "block-verify"
    assert plan.task.why.startswith("tune")


def test_no_matching_hint_means_no_task():
    plan = Planner(LIBRARY).plan(state(hints=(Hint("prefill-bound", 1.5, "TTFT 40%"),)))
    assert plan.task is None
    assert "no skill's triggers match" in plan.notes[-1]


def test_plateau_detection():
    assert plateaued((1.0, 2.0, 2.02, 2.05))
    assert not plateaued((1.0, 2.0, 2.5))
    assert not plateaued((2.0, 2.0))

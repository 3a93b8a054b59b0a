"""The loop's control flow with scripted collaborators and a real git workspace.

The Implementer writes a marker into engine.py, the Judge and the Evaluator answer from a script,
so rounds, retries, rollback, memory updates, budgets and resume are checked in seconds.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.backends.base import BackendError, Implementation
from agents.evaluator import Evaluation, Hint
from agents.judge import JudgeVerdict
from agents.loop import Budget, LoopConfig, SynthesisLoop
from agents.planner import Plan, Planner, Task
from agents.skills import Skill
from agents.workspace import Workspace

HINTS = [
    Hint("prediction-unused", 5.0, "1.00 tokens per forward"),
    Hint("memory-bandwidth", 2.0, "25%"),
]
LIBRARY = {
    s.name: s
    for s in (
        Skill(
            "block-verify",
            "verify",
            Path("."),
            ("prediction-unused",),
            (),
            Path(__file__),
            {"block": [8, 16]},
        ),
        Skill("bf16", "bf16", Path("."), ("memory-bandwidth",), (), Path(__file__), {}),
    )
}


@dataclass
class ScriptedBackend:
    name: str = "scripted"
    rejection_is_final: bool = True
    calls: list = field(default_factory=list)
    fail_skills: set = field(default_factory=set)

    def implement(self, task, engine_dir: Path, feedback):
        self.calls.append((task.skill, dict(task.params), list(feedback)))
        if task.skill in self.fail_skills:
            raise BackendError(f"cannot build {task.skill}")
        engine = engine_dir / "engine.py"
        engine.write_text(engine.read_text() + f"# {task.skill} {task.params}\n")
        return Implementation(f"{task.skill} {task.params}", [task.skill], "faster")


@dataclass
class ScriptedJudge:
    reject: set = field(default_factory=set)
    seeds: list = field(default_factory=list)

    def judge(self, engine_dir, diff, *, heldout_seed, work_dir):
        self.seeds.append(heldout_seed)
        text = (engine_dir / "engine.py").read_text()
        for skill in self.reject:
            if f"# {skill}" in text:
                return JudgeVerdict(
                    False, [f"test_tokens_equal_reference: {skill} changed token 3"]
                )
        return JudgeVerdict(True, [])


@dataclass
class ScriptedEvaluator:
    ratios: dict = field(default_factory=lambda: {"": 1.0})
    calls: list = field(default_factory=list)

    def evaluate(
        self,
        engine_dir,
        *,
        work_dir,
        against=None,
        against_ratio=1.0,
        alone=False,
        with_profile=True,
        full_workload=False,
    ):
        self.calls.append({"alone": alone, "against": against, "against_ratio": against_ratio})
        self.full = [*getattr(self, "full", []), full_workload]
        self.profiled = [*getattr(self, "profiled", []), with_profile]
        text = (engine_dir / "engine.py").read_text()
        ratio = self.ratios[""]
        for marker, value in self.ratios.items():
            if marker and marker in text:
                ratio = value
        hints = HINTS if ratio < 3 else [HINTS[1]]
        return Evaluation(
            True, "output_tok_per_s", "tok/s", True, 10 * ratio, 10.0, ratio, 0.01, hints
        )


@dataclass
class TimedEvaluator(ScriptedEvaluator):
    """Each evaluation takes 100 s of the fake clock ``now[0]``."""

    now: list = field(default_factory=lambda: [0.0])

    def evaluate(self, engine_dir, **kwargs):
        self.now[0] += 100.0
        return ScriptedEvaluator.evaluate(self, engine_dir, **kwargs)


def make_loop(tmp_path, backend, judge, evaluator, budget=None, workspace=None):
    starter = tmp_path / "starter"
    starter.mkdir(exist_ok=True)
    (starter / "engine.py").write_text("def create_engine(spec):\n    return None\n")
    budget = budget or Budget(rounds=6)
    config = LoopConfig("toy", starter, tmp_path / "run", budget=budget, retries=2)
    if workspace is None:
        workspace = Workspace.create(
            tmp_path / "run" / "workspace", starter, scenario="toy", seed=0
        )
    roadmap = workspace.memory
    for name in LIBRARY:
        if name not in roadmap.statuses():
            roadmap.add(name, f"{name} why")
    loop = SynthesisLoop(
        config,
        workspace=workspace,
        roadmap_store=roadmap,
        planner=Planner(LIBRARY),
        backend=backend,
        judge=judge,
        evaluator=evaluator,
    )
    return loop, workspace


def test_accepts_gains_rejects_hacks_and_records_everything(tmp_path):
    backend = ScriptedBackend()
    judge = ScriptedJudge(reject={"bf16"})
    evaluator = ScriptedEvaluator(
        {"": 1.0, "block-verify {'block': 8}": 4.0, "block-verify {'block': 16}": 5.0}
    )
    loop, workspace = make_loop(tmp_path, backend, judge, evaluator)
    loop.run(loop.measure_starter(), 1)
    rounds = workspace.rounds_as_dicts()
    verdicts = [(r["round"], r["skill"], r["verdict"]) for r in rounds]
    assert verdicts[0] == (0, None, "accepted")
    assert (1, "block-verify", "accepted") in verdicts
    assert any(skill == "bf16" and verdict == "rejected" for _, skill, verdict in verdicts)
    # bf16 was judged twice (retries=2), its reasons fed back, then abandoned
    bf16_calls = [c for c in backend.calls if c[0] == "bf16"]
    assert len(bf16_calls) == 2 and bf16_calls[1][2] == [
        "test_tokens_equal_reference: bf16 changed token 3"
    ]
    assert workspace.memory.statuses()["bf16"] == "abandoned"
    memory = (workspace.root / "memory.md").read_text()
    assert "fails exactness on held-out inputs" in memory
    # the rejected candidate was rolled back: the engine is the best accepted round's
    assert "# bf16" not in (workspace.engine_dir / "engine.py").read_text()
    assert workspace.accepted_rounds()[-1] == max(
        r["round"] for r in rounds if r["verdict"] == "accepted"
    )
    # held-out seeds come from the loop's private pool, vary across judgements and never
    # appear in the workspace
    assert set(judge.seeds) <= set(loop._judge_pool) and len(set(judge.seeds)) > 1
    assert all(
        str(seed) not in (workspace.root / "progress.md").read_text() for seed in judge.seeds
    )
    report = (tmp_path / "run" / "report.json").read_text()
    assert '"best"' in report and (tmp_path / "run" / "report.md").exists()
    # round 0 measured the starter alone (it is the loop's baseline); each later candidate ran
    # against the best engine so far, its ratio chained to the starter
    assert evaluator.calls[0] == {"alone": True, "against": None, "against_ratio": 1.0}
    assert all(not c["alone"] for c in evaluator.calls[1:])
    assert all(c["against"] is not None for c in evaluator.calls[1:])
    assert '"baseline": "starter"' in report
    assert "x the starter" in (tmp_path / "run" / "report.md").read_text()


def test_round_budget_stops_the_loop(tmp_path):
    loop, workspace = make_loop(
        tmp_path,
        ScriptedBackend(),
        ScriptedJudge(),
        ScriptedEvaluator({"": 1.0, "block": 2.0}),
        budget=Budget(rounds=1),
    )
    loop.run(loop.measure_starter(), 1)
    assert [r["round"] for r in workspace.rounds_as_dicts()] == [0, 1]
    assert "stop: round budget of 1 spent" in (workspace.root / "progress.md").read_text()


def test_wall_budget_stops_the_loop(tmp_path):
    ticks = iter(range(0, 10_000, 100))
    loop, workspace = make_loop(
        tmp_path,
        ScriptedBackend(),
        ScriptedJudge(),
        ScriptedEvaluator(),
        budget=Budget(rounds=10, wall_s=150),
    )
    loop.clock = lambda: next(ticks)
    loop._started = 0
    loop.run(loop.measure_starter(), 1)
    assert "wall-time budget" in (workspace.root / "progress.md").read_text()


def test_a_round_starts_only_if_it_and_the_final_confirmation_still_fit(tmp_path):
    """Each evaluation takes 100 s of the (fake) clock: the first A/B against the starter sets
    the confirmation's estimate, rounds their own; the whole run ends inside the wall budget."""
    now = [0.0]

    evaluator = TimedEvaluator(
        {"": 1.0, "block-verify {'block': 8}": 4.0, "block-verify {'block': 16}": 5.0}, now=now
    )
    loop, workspace = make_loop(
        tmp_path,
        ScriptedBackend(),
        ScriptedJudge(),
        evaluator,
        budget=Budget(rounds=20, wall_s=450),
    )
    loop.clock = lambda: now[0]
    loop._started = 0.0
    loop.run(loop.measure_starter(), 1)  # round 0 ends at 100 s
    # round 1 (100-200 s) and round 2 (200-300 s) fit; round 3 would end at 400 s and the
    # confirmation at 500 s, past 450: it never starts, and the confirmation ends at 400 s
    assert [r["round"] for r in workspace.rounds_as_dicts()] == [0, 1, 2]
    assert now[0] == 400.0 <= loop.config.budget.wall_s
    progress = (workspace.root / "progress.md").read_text()
    assert (
        "stop: wall-time budget of 450 s: 150 s left, and a round takes ~100 s here, the final "
        "confirmation ~100 s" in progress
    )
    assert "confirm: round 1 is 4.00x the starter" in progress
    assert evaluator.profiled[-1] is False  # the confirmation: no plan follows, no profile
    assert all(evaluator.profiled[:-1])
    # only the confirmation runs the scenario's full workload (rounds may run a subset)
    assert evaluator.full == [False] * (len(evaluator.full) - 1) + [True]


def test_rounds_that_end_before_measuring_do_not_shorten_the_round_estimate(tmp_path):
    """Evaluations take 100 s, failed rounds 20 s. After two quick failures the next round may
    still need the Evaluator: the estimate stays 100 s, so it does not start when it and the
    confirmation no longer fit (a median over all rounds would have said ~20 s and overrun)."""
    now = [0.0]

    @dataclass
    class SlowFailingBackend(ScriptedBackend):
        def implement(self, task, engine_dir: Path, feedback):
            if task.skill in self.fail_skills:
                now[0] += 20.0
            return ScriptedBackend.implement(self, task, engine_dir, feedback)

    class ScriptedPlanner:
        def __init__(self):
            self.tasks = [("block-verify", {"block": 8}, 2), ("bf16", {}, 1), ("bf16", {}, 1)]
            self.tasks += [("block-verify", {"block": 16}, 2)] * 3

        def plan(self, state):
            skill, params, size = self.tasks[state.round - 1]
            return Plan(Task(state.round, skill, params, size, "scripted"))

    evaluator = TimedEvaluator({"": 1.0, "block-verify {'block': 8}": 2.0}, now=now)
    loop, workspace = make_loop(
        tmp_path,
        SlowFailingBackend(fail_skills={"bf16"}),
        ScriptedJudge(),
        evaluator,
        budget=Budget(rounds=20, wall_s=420),
    )
    loop.planner = ScriptedPlanner()
    loop.clock = lambda: now[0]
    loop._started = 0.0
    loop.run(loop.measure_starter(), 1)  # round 0: 0-100 s
    # round 1 100-200 s (measured), bf16 fails at 220 s and 240 s; then 240 + 100 + 100 > 420
    rounds = workspace.rounds_as_dicts()
    assert [(r["skill"], r["verdict"]) for r in rounds[1:]] == [
        ("block-verify", "accepted"),
        ("bf16", "failed"),
        ("bf16", "failed"),
    ]
    assert now[0] == 340.0 <= loop.config.budget.wall_s  # the confirmation ended at 340 s
    assert loop._round_seconds == [100.0]
    assert "a round takes ~100 s here" in (workspace.root / "progress.md").read_text()


def test_rounds_are_expected_to_cost_what_the_last_measured_one_did(tmp_path):
    """The first A/B runs against the slow starter (200 s); once the best engine is fast, rounds
    take 60 s. The loop plans with the last one, so it keeps going where a median over the
    first rounds would have stopped it."""
    now = [0.0]
    seconds = iter([100.0, 200.0] + [60.0] * 20)

    class FasterEvaluator(ScriptedEvaluator):
        def evaluate(self, engine_dir, **kwargs):
            now[0] += next(seconds)
            return ScriptedEvaluator.evaluate(self, engine_dir, **kwargs)

    ratios = {"": 1.0, "block-verify {'block': 8}": 2.0, "block-verify {'block': 16}": 2.5}
    loop, workspace = make_loop(
        tmp_path,
        ScriptedBackend(),
        ScriptedJudge(),
        FasterEvaluator(ratios),
        budget=Budget(rounds=20, wall_s=700),
    )
    loop.clock = lambda: now[0]
    loop._started = 0.0
    loop.run(loop.measure_starter(), 1)
    # r0 0-100, r1 100-300 (the confirmation is learnt from it: 200 s), r2 300-360; at 360 the
    # last round says 60 s: 360 + 60 + 200 <= 700, so r3 (bf16) runs 360-420; a median of
    # r1 and r2 (200 s) would have stopped the loop at 360
    assert [r["round"] for r in workspace.rounds_as_dicts()] == [0, 1, 2, 3]
    assert now[0] <= 700


def test_the_confirmation_estimate_scales_to_the_full_workload(tmp_path):
    """Rounds on half the requests: the confirmation (all of them) is reserved twice the time
    of the first A/B against the starter, so the loop stops one round earlier."""
    import dataclasses

    now = [0.0]

    loop, workspace = make_loop(
        tmp_path,
        ScriptedBackend(),
        ScriptedJudge(),
        TimedEvaluator({"": 1.0, "block-verify {'block': 8}": 4.0}, now=now),
        budget=Budget(rounds=20, wall_s=450),
    )
    loop.config = dataclasses.replace(loop.config, confirm_cost_scale=2.0)
    loop.clock = lambda: now[0]
    loop._started = 0.0
    loop.run(loop.measure_starter(), 1)
    assert [r["round"] for r in workspace.rounds_as_dicts()] == [0, 1]
    assert "the final confirmation ~200 s" in (workspace.root / "progress.md").read_text()


def test_an_implementer_failure_parks_the_skill_and_the_next_task_is_smaller(tmp_path):
    backend = ScriptedBackend(fail_skills={"block-verify"})
    loop, workspace = make_loop(
        tmp_path, backend, ScriptedJudge(), ScriptedEvaluator({"": 1.0, "bf16": 1.5})
    )
    loop.run(loop.measure_starter(), 1)
    rounds = workspace.rounds_as_dicts()
    assert rounds[1]["skill"] == "block-verify" and rounds[1]["verdict"] == "failed"
    assert "implementer: cannot build block-verify" in rounds[1]["reasons"][0]
    assert rounds[2]["skill"] == "bf16"  # size 1 < size 2 of the failed task
    assert workspace.memory.statuses()["block-verify"] == "parked"


def test_no_gain_is_rejected_and_rolled_back(tmp_path):
    loop, workspace = make_loop(
        tmp_path,
        ScriptedBackend(),
        ScriptedJudge(),
        ScriptedEvaluator({"": 1.0}),
        budget=Budget(rounds=1),
    )
    loop.run(loop.measure_starter(), 1)
    last = workspace.rounds_as_dicts()[-1]
    assert last["verdict"] == "rejected"
    assert last["reasons"][0].startswith("no gain beyond noise")


def test_resume_rebuilds_the_state_and_continues(tmp_path):
    evaluator = ScriptedEvaluator(
        {"": 1.0, "block-verify {'block': 8}": 4.0, "block-verify {'block': 16}": 5.0}
    )
    loop, workspace = make_loop(
        tmp_path, ScriptedBackend(), ScriptedJudge(), evaluator, budget=Budget(rounds=1)
    )
    loop.run(loop.measure_starter(), 1)
    workspace.close()
    reopened = Workspace.open(tmp_path / "run" / "workspace")
    state = reopened.resume_state()
    loop2, _ = make_loop(
        tmp_path,
        ScriptedBackend(),
        ScriptedJudge(),
        evaluator,
        budget=Budget(rounds=3),
        workspace=reopened,
    )
    resumed = loop2.state_from_records()
    assert resumed.best_ratio == pytest.approx(4.0)
    assert resumed.hints[0].keyword == "memory-bandwidth"
    loop2.run(resumed, state.next_round)
    rounds = reopened.rounds_as_dicts()
    assert [r["round"] for r in rounds] == list(range(len(rounds)))
    assert rounds[1]["verdict"] == "accepted"  # nothing accepted before the restart was lost


def test_the_confirmation_estimate_follows_the_engines_rates(tmp_path):
    """Fixed seconds + repeats x tokens at each engine's rate, learnt from the first A/B against
    the starter and replayed on the full workload with the best engine so far."""
    import dataclasses

    from agents.loop import LoopState

    loop, _ = make_loop(tmp_path, ScriptedBackend(), ScriptedJudge(), ScriptedEvaluator())
    loop.config = dataclasses.replace(loop.config, confirm_cost_scale=2.0)
    report = {"performance": {"repeats": 2, "workload_stats": {"output_tokens_total": 300}}}
    first = Evaluation(True, "output_tok_per_s", "tok/s", True, 20.0, 10.0, 2.0, 0.01, [], report)
    # 150 s = fixed + 2 repeats x 300 tokens x (1/10 + 1/20 s per token): fixed = 60 s
    loop._learn_confirm_cost(first, 150.0)
    state = LoopState(
        best_ratio=4.0, best_round=3, hints=(), accepted_ratios=[], last_failed_size=None
    )
    # full workload: 600 tokens; best = 4 x 10 tok/s: 60 + 2 x 600 x (1/10 + 1/40) = 210 s
    assert loop._confirm_estimate(state) == pytest.approx(210.0)
    nothing_yet = dataclasses.replace(state, best_round=0)
    assert loop._confirm_estimate(nothing_yet) == 0.0
    # without the numbers (another metric, no report): the first A/B's time, scaled
    loop._confirm_model = None
    loop._learn_confirm_cost(dataclasses.replace(first, report=None), 150.0)
    assert loop._confirm_estimate(state) == 300.0


def test_the_round_estimate_prices_the_next_ab_at_the_best_engines_speed(tmp_path):
    """The first round's A/B ran the slow starter and its Judge run computed the held-out
    references (a one-time cost the Judge's report names): the next round is priced as the last
    Judge run without them, the A/B's fixed seconds, and the tokens at the best engine's rate."""
    from agents.loop import LoopState

    loop, _ = make_loop(tmp_path, ScriptedBackend(), ScriptedJudge(), ScriptedEvaluator())
    report = {"performance": {"repeats": 2, "workload_stats": {"output_tokens_total": 200}}}
    first = Evaluation(True, "output_tok_per_s", "tok/s", True, 20.0, 10.0, 2.0, 0.01, [], report)
    # 100 s = fixed + 2 repeats x 200 tokens x (1/10 + 1/20 s per token): fixed = 40 s
    loop._learn_round_cost(first, 100.0)
    loop._starter_value = 10.0
    loop._round_seconds = [250.0]  # the whole first round, its Judge run included
    state = LoopState(
        best_ratio=2.0, best_round=1, hints=(), accepted_ratios=[], last_failed_size=None
    )
    # Judge 30 s + fixed 40 s + 2 x 200 x 2 / 20 tok/s = 110 s
    loop._judge_seconds = 30.0
    assert loop._next_round_estimate(state) == pytest.approx(110.0)
    # never more than the last measured round took
    loop._judge_seconds = 500.0
    assert loop._next_round_estimate(state) == 250.0
    # without a model (another metric): the last round's seconds
    loop._round_model = None
    assert loop._next_round_estimate(state) == 250.0

    # the Judge's reference seconds are taken off its run time
    clock = [0.0]

    class TimedJudge(ScriptedJudge):
        def judge(self, engine_dir, diff, *, heldout_seed, work_dir):
            clock[0] += 120.0  # 90 s of it computing references
            return JudgeVerdict(True, [], report={"reference_seconds": 90.0})

    (tmp_path / "b").mkdir()
    loop, _ = make_loop(tmp_path / "b", ScriptedBackend(), TimedJudge(), ScriptedEvaluator())
    loop.clock = lambda: clock[0]
    task = Task(1, "block-verify", {"block": 8}, 2, "scripted")
    loop.run_round(1, task, loop.measure_starter())
    assert loop._judge_seconds == pytest.approx(30.0)


def test_a_technique_applied_on_the_way_is_done_and_counts_as_tried(tmp_path):
    """A round whose change also turned on another skill (re-alignment turning block
    verification on) marks that skill done and never re-runs the same change under its name."""

    @dataclass
    class CoveringBackend(ScriptedBackend):
        def implement(self, task, engine_dir: Path, feedback):
            done = ScriptedBackend.implement(self, task, engine_dir, feedback)
            if task.skill == "bf16":  # stands in for a covering recipe
                also = {"block-verify": {"block": 8}}
                return Implementation(
                    done.summary, [task.skill, *also], done.expected, details={"also": also}
                )
            return done

    backend = CoveringBackend()
    # bf16 (the covering stand-in) wins round 1: block-verify is out of the hints so it can't
    evaluator = ScriptedEvaluator({"": 1.0, "bf16": 2.0, "block-verify {'block': 16}": 2.5})
    loop, workspace = make_loop(tmp_path, backend, ScriptedJudge(), evaluator)
    state = loop.measure_starter()
    state.hints = (HINTS[1],)  # only memory-bandwidth: bf16 first
    loop.run(state, 1)
    rounds = workspace.rounds_as_dicts()
    assert rounds[1]["skill"] == "bf16" and rounds[1]["verdict"] == "accepted"
    assert rounds[1]["also"] == {"block-verify": {"block": 8}}
    assert workspace.memory.statuses()["block-verify"] == "done"
    memory_history = subprocess.run(
        ["git", "-C", str(workspace.root), "log", "-p", "--", "memory.md"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| block-verify | done | applied by bf16 in round 1 |" in memory_history
    # block 8 counts as tried: the sweep went on to 16, never back to 8
    block_calls = [params for skill, params, _ in backend.calls if skill == "block-verify"]
    assert {"block": 8} not in block_calls


def test_the_report_gives_what_the_confirmed_engines_report_about_themselves(tmp_path):
    """The confirmation's table carries engine-reported figures (tokens per forward, the share
    of output tokens the grammar forced, grammar work per token): report.md states them."""
    from agents.loop import _engine_figures
    from agents.report import write_reports

    table = [
        {"engine": "candidate", "tokens_per_forward": 3.21, "forced_fraction": 0.277},
        {"engine": "baseline", "tokens_per_forward": 1.0, "forced_fraction": 0.277},
        {"engine": "hf_guided", "tokens_per_forward": 1.0},
        {"engine": "x", "forced_fraction": float("nan")},
    ]
    engines = _engine_figures({"performance": {"table": table}})
    assert engines == {
        "best": {"tokens_per_forward": 3.21, "forced_fraction": 0.277},
        "starter": {"tokens_per_forward": 1.0, "forced_fraction": 0.277},
    }
    confirmed = {
        "round": 2,
        "ok": True,
        "ratio_vs_starter": 3.31,
        "noise": 0.03,
        "value": 1450.0,
        "starter_value": 4799.0,
        "unit": "ms",
        "engines": engines,
    }
    rounds = [{"round": 0, "verdict": "accepted", "ratio": 1.0, "value": 4695.0}]
    write_reports(tmp_path, "json_decoding", rounds, {"confirmed": confirmed})
    text = (tmp_path / "report.md").read_text()
    assert (
        "Engine-reported in that run: the best engine 3.21 tokens per forward, 28% of output "
        "tokens forced by the grammar; the starter 1.00 tokens per forward, 28% of output tokens "
        "forced by the grammar." in text
    )
    assert _engine_figures(None) == {}


def test_the_report_gives_audio_figures_for_audio_streams(tmp_path):
    from agents.loop import _engine_figures
    from agents.report import _figures_line

    row = {
        "chunk_latency_ms_p50": 1841.0,
        "chunk_latency_ms_p90": 5399.0,
        "real_time_factor": 1.1,
        "decode_rows_per_step": 3.2,
        "encoder_frames_per_audio_frame": 1.0,
        "tokens_per_forward": 0.18,  # meaningless for transcripts: left out
    }
    engines = _engine_figures({"performance": {"table": [{"engine": "candidate", **row}]}})
    assert engines["best"] == {
        k: v for k, v in row.items() if k not in ("chunk_latency_ms_p50", "tokens_per_forward")
    }
    assert _figures_line(engines) == (
        "Engine-reported in that run: the best engine (measured) chunk latency p90 5399 ms, "
        "(measured) real-time factor 1.10, 3.20 token rows per decoder forward, 1.00 encoder "
        "frames per frame of audio."
    )

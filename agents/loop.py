"""The synthesis loop: planner -> Implementer -> Judge -> Evaluator -> accept/reject -> memory.

Every phase ends in a workspace commit, every finished round in a line of rounds.jsonl, so a crash,
a Ctrl-C or a kill -9 loses at most the round in flight, and ``resume`` picks up from the last
consistent state. The Judge's held-out seeds come from a private RNG the Implementer never sees.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents.backends.base import Backend, BackendError
from agents.evaluator import Evaluation, Evaluator, Hint
from agents.judge import Judge
from agents.planner import Planner, PlannerState, Task, task_key
from agents.report import write_reports

DEFAULT_MIN_GAIN = 0.02  # [loop] min_gain overrides it per scenario


@dataclass(frozen=True, slots=True)
class Budget:
    rounds: int = 24
    wall_s: float = 6 * 3600.0
    dollars: float = 50.0


@dataclass(frozen=True, slots=True)
class LoopConfig:
    scenario: str
    starter: Path
    run_dir: Path  # holds workspace/ (the git repo) and private/ (never shown to the Implementer)
    metric: str = "output_tok_per_s"  # the headline, fixed in unit and direction for the loop
    unit: str = "tok/s"
    higher_is_better: bool = True
    seed: int = 0
    retries: int = 3
    budget: Budget = Budget()
    min_gain: float = DEFAULT_MIN_GAIN  # accepted: beats the best by this much beyond the noise
    # Measure each candidate against the best engine so far (same-run A/B, ratio chained to the
    # baseline) instead of against the baseline: the comparison that decides acceptance, and at
    # the cpu scale several times cheaper than re-running a slow baseline every round.
    against_best: bool = True
    confirm: bool = True  # at the end: the best engine vs the starter, same run
    # The Judge's held-out seeds: a private pool drawn once per loop, one seed per judgement.
    # A pool, not a fresh seed each time: the reference outputs of a seed cost minutes at the
    # cpu scale and are cached; the Implementer sees none of them either way.
    judge_seeds: int = 3
    # The confirmation runs the scenario's full workload; rounds may run a subset (the
    # Evaluator's workload overrides). Its cost is estimated from the first A/B against the
    # starter, times this (full requests / round requests).
    confirm_cost_scale: float = 1.0


@dataclass(slots=True)
class RoundResult:
    round: int
    skill: str | None
    params: dict[str, Any] | None
    verdict: str  # accepted / rejected / failed
    reasons: list[str]
    metric: str = ""
    higher_is_better: bool = True
    value: float | None = None
    ratio: float | None = None
    noise: float | None = None
    unit: str | None = None
    commit: str | None = None
    tag: str | None = None
    attempts: int = 0
    started: float = 0.0
    ended: float = 0.0
    hints: list[str] = field(default_factory=list)
    also: dict[str, dict[str, Any]] = field(default_factory=dict)  # skills applied on the way


@dataclass(slots=True)
class LoopState:
    best_ratio: float
    best_round: int
    hints: tuple[Hint, ...]
    accepted_ratios: list[float]
    last_failed_size: int | None
    cost_usd: float = 0.0


HINT_TEXT = re.compile(
    r"^(?P<keyword>[\w-]+) \(~(?P<gain>[\d.]+)x possible(?P<approximate>, approximate)?\): "
    r"(?P<evidence>.*)$"
)


def parse_hint(text: str) -> Hint:
    """The inverse of ``Hint.describe``, for hints read back from rounds.jsonl."""
    match = HINT_TEXT.match(text)
    if match is None:
        return Hint(text.split(" ")[0], 1.0, text)
    approximate = match["approximate"] is not None
    return Hint(match["keyword"], float(match["gain"]), match["evidence"], approximate)


def ab_cost(evaluation: Evaluation, seconds: float) -> tuple[float, float, int] | None:
    """An A/B of throughput engines that took ``seconds``, split into (fixed seconds: start-up,
    warm-up, reference lookups; output tokens per engine run; repeats): per repeat, each engine
    spends the tokens at its own rate. None when the run's numbers do not allow it."""
    performance = (evaluation.report or {}).get("performance") or {}
    tokens = (performance.get("workload_stats") or {}).get("output_tokens_total")
    repeats = performance.get("repeats")
    against, candidate = evaluation.baseline, evaluation.value
    if (
        evaluation.metric != "output_tok_per_s"
        or not tokens
        or not repeats
        or not against > 0
        or not candidate > 0
    ):
        return None
    measuring = repeats * tokens * (1 / against + 1 / candidate)
    return max(0.0, seconds - measuring), tokens, repeats


def reason_for_abandon(reasons: list[str]) -> str:
    """A named, code-level reason from the Judge's findings (a number alone is never enough)."""
    head = reasons[0] if reasons else "rejected by the Judge"
    return f"fails exactness on held-out inputs: {head[:300]}"


class SynthesisLoop:
    def __init__(
        self,
        config: LoopConfig,
        *,
        workspace: Any,
        roadmap_store: Any,
        planner: Planner,
        backend: Backend,
        judge: Judge,
        evaluator: Evaluator,
        clock: Callable[[], float] = time.monotonic,
        on_progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.config = config
        self.workspace = workspace
        self.roadmap = roadmap_store
        self.planner = planner
        self.backend = backend
        self.judge = judge
        self.evaluator = evaluator
        self.clock = clock
        self.on_progress = on_progress
        private_rng = random.Random(f"judge:{config.seed}:{config.scenario}")
        self._judge_pool = [private_rng.randrange(1, 2**31) for _ in range(config.judge_seeds)]
        self._judge_seeds = private_rng
        self._started = clock()
        self._started_wall = time.time()
        # For the wall budget: how long rounds take here, and how long the final confirmation
        # will (an A/B against the starter, like the first candidate's evaluation).
        self._round_seconds: list[float] = []
        self._confirm_seconds: float | None = None  # fallback: the first A/B's wall time, scaled
        # (fixed seconds, tokens per engine run of the full workload, starter tok/s, repeats)
        self._confirm_model: tuple[float, float, float, int] | None = None
        # A round is a Judge run plus an A/B against the best engine: (the last Judge run's
        # seconds, an A/B's fixed seconds, tokens per engine run, repeats), and the starter's
        # tok/s on the rounds' workload (round 0), to which every ratio is chained.
        self._judge_seconds = 0.0
        self._round_model: tuple[float, float, int] | None = None
        self._starter_value: float | None = None

    # -- helpers ---------------------------------------------------------------------------
    def _private(self, round_number: int) -> Path:
        path = self.config.run_dir / "private" / f"round-{round_number}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _log(self, text: str) -> None:
        self.workspace.append_progress(text)
        self.on_progress(text)

    def _out_of_budget(self, round_number: int, state: LoopState) -> str | None:
        """Why no new round may start, or None.

        The wall budget covers the whole run: a round starts only if it (as long as the last
        round the Evaluator measured) and the final confirmation still fit, so the loop ends
        within the budget instead of starting one past it.
        """
        budget = self.config.budget
        if round_number > budget.rounds:
            return f"round budget of {budget.rounds} spent"
        elapsed = self.clock() - self._started
        if elapsed > budget.wall_s:
            return f"wall-time budget of {budget.wall_s:.0f} s spent"
        # As long as the last measured round: every round's A/B runs against the best engine so
        # far, so rounds get cheaper as it gets faster (the first, against the starter, can take
        # twice the later ones), and the last one ran against the current best.
        next_round = self._next_round_estimate(state)
        confirm = self._confirm_estimate(state) if self.config.confirm else 0.0
        if elapsed + next_round + confirm > budget.wall_s:
            return (
                f"wall-time budget of {budget.wall_s:.0f} s: {budget.wall_s - elapsed:.0f} s "
                f"left, and a round takes ~{next_round:.0f} s here"
                + (f", the final confirmation ~{confirm:.0f} s" if confirm else "")
            )
        if state.cost_usd > budget.dollars:
            return f"dollar budget of ${budget.dollars:.2f} spent"
        return None

    def _next_round_estimate(self, state: LoopState) -> float:
        """How long the next round will take: the last measured round's seconds, or less when
        the cost model says so. The model prices the next A/B against the best engine so far at
        its speed (the candidate assumed no faster), plus the A/B's fixed seconds and the last
        Judge run's: the first round's A/B runs the slow starter and its Judge run computes the
        held-out references, so later rounds cost much less (hybrid_ssm at the cpu scale: ~300 s
        for round 1, ~150 s after)."""
        last = self._round_seconds[-1] if self._round_seconds else 0.0
        if self._round_model is None or not self._starter_value:
            return last
        fixed, tokens, repeats = self._round_model
        best = self._starter_value * state.best_ratio
        measuring = repeats * tokens * 2 / best
        return min(last, self._judge_seconds + fixed + measuring)

    def _learn_round_cost(self, evaluation: Evaluation, seconds: float) -> None:
        if (split := ab_cost(evaluation, seconds)) is not None:
            fixed, tokens, repeats = split
            self._round_model = (fixed, tokens, repeats)

    def _learn_confirm_cost(self, evaluation: Evaluation, seconds: float) -> None:
        """From the first A/B against the starter: what the final confirmation will cost.

        An A/B of throughput engines costs fixed seconds (start-up, warm-up, reference lookups)
        plus, per repeat, the workload's tokens at each engine's rate; the confirmation runs the
        full workload (``confirm_cost_scale`` times the rounds') with the best engine instead.
        """
        self._confirm_seconds = seconds * self.config.confirm_cost_scale
        if (split := ab_cost(evaluation, seconds)) is not None:
            fixed, tokens, repeats = split
            scaled = tokens * self.config.confirm_cost_scale
            self._confirm_model = (fixed, scaled, evaluation.baseline, repeats)

    def _confirm_estimate(self, state: LoopState) -> float:
        if state.best_round == 0:
            return 0.0  # nothing to confirm (yet)
        if self._confirm_model is None:
            return self._confirm_seconds or 0.0
        fixed, tokens, starter, repeats = self._confirm_model
        best = starter * state.best_ratio  # ratios are chained to the starter
        return fixed + repeats * tokens * (1 / starter + 1 / best)

    # -- the round -------------------------------------------------------------------------
    @property
    def baseline_name(self) -> str:
        """What the loop's ratios are relative to."""
        return "starter" if self.config.against_best else "baseline"

    def measure_starter(self) -> LoopState:
        """Round 0: the starter, recorded as accepted.

        Measured against best (the default), every ratio of the loop is chained to the starter,
        so round 0 needs no A/B: one run alone gives its figures and hints, and its ratio is 1.
        Otherwise it is measured against the scenario's baseline like every candidate.
        """
        evaluation = self.evaluator.evaluate(
            self.workspace.engine_dir, work_dir=self._private(0), alone=self.config.against_best
        )
        if not evaluation.ok:
            raise RuntimeError(f"the starter could not be measured: {evaluation.problem}")
        self._starter_value = evaluation.value
        record = RoundResult(
            0,
            None,
            {},
            "accepted",
            [],
            metric=evaluation.metric,
            higher_is_better=evaluation.higher_is_better,
            value=evaluation.value,
            ratio=evaluation.ratio,
            noise=evaluation.noise,
            unit=evaluation.unit,
            commit=self.workspace.head(),
            tag="round-0",
            started=self._started_wall,
            ended=time.time(),
            hints=[hint.describe() for hint in evaluation.hints],
        )
        self.workspace.append_round(asdict(record))
        if self.config.against_best:
            note = "the loop's baseline"
        else:
            note = f"{evaluation.ratio:.2f}x baseline"
        self.workspace.commit_phase(0, "evaluator", f"starter: {note}")
        self._log(f"round 0: starter {evaluation.value:.4g} {evaluation.unit} ({note})")
        return LoopState(evaluation.ratio, 0, tuple(evaluation.hints), [evaluation.ratio], None)

    def state_from_records(self) -> LoopState:
        """The loop's state rebuilt from rounds.jsonl (after a resume)."""
        rounds = self.workspace.rounds_as_dicts()
        accepted = [r for r in rounds if r["verdict"] == "accepted" and r["ratio"] is not None]
        best = max(accepted, key=lambda r: r["ratio"])
        self._starter_value = next((r["value"] for r in rounds if r["round"] == 0), None)
        last = rounds[-1]
        failed_size = None
        if last["verdict"] != "accepted" and last.get("skill"):
            failed_size = 1 + len(last.get("params") or {})
        return LoopState(
            best_ratio=best["ratio"],
            best_round=best["round"],
            hints=tuple(parse_hint(text) for text in accepted[-1]["hints"]),
            accepted_ratios=[r["ratio"] for r in accepted],
            last_failed_size=failed_size,
        )

    def run_round(self, number: int, task: Task, state: LoopState) -> RoundResult:
        result = RoundResult(
            number,
            task.skill,
            task.params,
            "failed",
            [],
            metric=self.config.metric,
            higher_is_better=self.config.higher_is_better,
            unit=self.config.unit,
            started=time.time(),
        )
        feedback: list[str] = []  # the Judge's reasons, handed to the next attempt
        implementer_error = ""
        passed = False
        self.roadmap.start(task.skill, number)
        for attempt in range(1, self.config.retries + 1):
            result.attempts = attempt
            try:
                implementation = self.backend.implement(task, self.workspace.engine_dir, feedback)
            except BackendError as error:
                state.cost_usd += getattr(error, "cost_usd", 0.0)  # a failed attempt still costs
                implementer_error = f"implementer: {error}"
                break
            state.cost_usd += implementation.cost_usd
            result.also = dict(implementation.details.get("also") or {})
            self.workspace.commit_phase(
                number,
                "implementer",
                f"{implementation.summary} (expects: {implementation.expected})",
            )
            judge_started = self.clock()
            verdict = self.judge.judge(
                self.workspace.engine_dir,
                self.workspace.diff_since(f"round-{state.best_round}"),
                heldout_seed=self._judge_seeds.choice(self._judge_pool),
                work_dir=self._private(number),
            )
            # held-out references are computed once per seed and cached: not a recurring cost
            once = float((verdict.report or {}).get("reference_seconds") or 0.0)
            self._judge_seconds = max(0.0, self.clock() - judge_started - once)
            self.workspace.commit_phase(
                number, "judge", "passed" if verdict.passed else f"rejected: {verdict.reasons[0]}"
            )
            if verdict.passed:
                passed = True
                break
            feedback = list(verdict.reasons)
        if not passed:
            if feedback:
                result.verdict = "rejected"
                result.reasons = feedback + ([implementer_error] if implementer_error else [])
                if self.backend.rejection_is_final:
                    self.roadmap.abandon(task.skill, reason_for_abandon(feedback), number)
                else:
                    self.roadmap.park(task.skill, f"rejected: {feedback[0][:300]}", number)
            else:
                result.reasons = [implementer_error]
                self.roadmap.park(task.skill, implementer_error[:300], number)
            return result
        against = None
        if self.config.against_best:  # the starter too: round 0 is the loop's baseline
            against = self.workspace.export_engine(
                state.best_round, self.config.run_dir / "private" / "best-engine"
            )
        evaluation_started = self.clock()
        evaluation = self.evaluator.evaluate(
            self.workspace.engine_dir,
            work_dir=self._private(number),
            against=against,
            against_ratio=state.best_ratio,
        )
        if state.best_round == 0 and self._confirm_seconds is None and evaluation.ok:
            self._learn_confirm_cost(evaluation, self.clock() - evaluation_started)
        if evaluation.ok:
            self._learn_round_cost(evaluation, self.clock() - evaluation_started)
        self.workspace.commit_phase(
            number,
            "evaluator",
            f"{evaluation.metric} {evaluation.value:.4g} {evaluation.unit}, "
            f"{evaluation.ratio:.2f}x {self.baseline_name}"
            if evaluation.ok
            else evaluation.problem[:200],
        )
        if not evaluation.ok:
            result.reasons = [evaluation.problem]
            self.roadmap.park(task.skill, "the performance run failed", number)
            return result
        result.value, result.ratio = evaluation.value, evaluation.ratio
        result.noise, result.unit = evaluation.noise, evaluation.unit
        result.hints = [hint.describe() for hint in evaluation.hints]
        threshold = state.best_ratio * (1 + max(self.config.min_gain, evaluation.noise))
        if evaluation.ratio > threshold:
            result.verdict = "accepted"
            self.roadmap.done(task.skill, f"{evaluation.ratio:.2f}x {self.baseline_name}", number)
            for other in result.also:  # applied on the way: in place now too
                if other != task.skill and self.roadmap.statuses().get(other) != "abandoned":
                    why = f"applied by {task.skill} in round {number}"
                    self.roadmap.start(other, number, why)
                    self.roadmap.done(other, why, number)
            state.hints = tuple(evaluation.hints)
        else:
            result.verdict = "rejected"
            result.reasons = [
                f"no gain beyond noise: {evaluation.ratio:.3f}x vs best {state.best_ratio:.3f}x "
                f"(needs > {threshold:.3f}x)"
            ]
            self.roadmap.park(task.skill, result.reasons[0], number)
        return result

    def confirm_best(self, state: LoopState) -> dict[str, Any] | None:
        """The best engine against the starter in one same-run A/B: the figure a user quotes."""
        if not self.config.confirm or state.best_round == 0:
            return None
        private = self.config.run_dir / "private"
        best = self.workspace.export_engine(state.best_round, private / "best-engine")
        starter = self.workspace.export_engine(0, private / "starter-engine")
        self._log(f"confirm: round {state.best_round} against the starter, same run")
        evaluation = self.evaluator.evaluate(
            best,
            work_dir=private / "confirm",
            against=starter,
            against_ratio=1.0,
            with_profile=False,  # no plan follows: only the figure counts
            full_workload=True,  # the scenario's benchmark, not the rounds' subset
        )
        if not evaluation.ok:
            self._log(f"confirm: the run failed: {evaluation.problem[:300]}")
            return {"round": state.best_round, "ok": False, "problem": evaluation.problem[:2000]}
        confirmed = {
            "round": state.best_round,
            "ok": True,
            "ratio_vs_starter": evaluation.ratio,
            "noise": evaluation.noise,
            "value": evaluation.value,
            "starter_value": evaluation.baseline,
            "unit": evaluation.unit,
            "engines": _engine_figures(evaluation.report),
        }
        self._log(
            f"confirm: round {state.best_round} is {evaluation.ratio:.2f}x the starter "
            f"(± {evaluation.noise:.1%}; {evaluation.value:.4g} vs {evaluation.baseline:.4g} "
            f"{evaluation.unit})"
        )
        return confirmed

    # -- the loop --------------------------------------------------------------------------
    def run(self, state: LoopState, first_round: int) -> LoopState:
        number = first_round
        while True:
            if stop := self._out_of_budget(number, state):
                self._log(f"stop: {stop}")
                break
            plan = self.planner.plan(
                PlannerState(
                    round=number,
                    statuses=self.roadmap.statuses(),
                    attempts=self.roadmap.attempts(),
                    tried=frozenset(
                        key
                        for r in self.workspace.rounds_as_dicts()
                        if r.get("skill")
                        for key in [
                            task_key(r["skill"], r["params"] or {}),
                            *(task_key(k, v) for k, v in (r.get("also") or {}).items()),
                        ]
                    ),
                    hints=state.hints,
                    accepted_ratios=tuple(state.accepted_ratios),
                    last_failed_size=state.last_failed_size,
                )
            )
            for note in plan.notes:
                self._log(f"round {number} planner: {note}")
            if plan.task is None:
                self._log("stop: nothing left to try")
                break
            self._log(
                f"round {number} planner: {plan.task.skill} {plan.task.params} — {plan.task.why}"
            )
            self.workspace.commit_phase(number, "planner", f"{plan.task.skill} {plan.task.params}")
            round_started = self.clock()
            result = self.run_round(number, plan.task, state)
            if result.value is not None:
                # Only measured rounds set the estimate: a recipe that changed nothing or a
                # candidate the Judge rejected ends in seconds, and the next round may not.
                self._round_seconds.append(self.clock() - round_started)
            result.ended = time.time()
            if result.verdict == "accepted":
                result.tag = self.workspace.accept(
                    number, f"{result.ratio:.2f}x {self.baseline_name}"
                )
                state.best_ratio, state.best_round = result.ratio, number
                state.accepted_ratios.append(result.ratio)
                state.last_failed_size = None
            else:
                self.workspace.rollback(state.best_round, round=number)
                state.last_failed_size = plan.task.size
            result.commit = self.workspace.head()
            self.workspace.append_round(asdict(result))
            self.workspace.commit_phase(number, "loop", f"round {number} {result.verdict}")
            self._log(
                f"round {number}: {result.verdict} "
                + (f"{result.ratio:.2f}x " if result.ratio else "")
                + "; ".join(result.reasons)[:300]
            )
            number += 1
        extra = {
            "seed": self.config.seed,
            "backend": self.backend.name,
            "cost_usd": state.cost_usd,
            "baseline": self.baseline_name,
        }
        write_reports(
            self.config.run_dir, self.config.scenario, self.workspace.rounds_as_dicts(), extra
        )
        confirmed = self.confirm_best(state)
        if confirmed is not None:
            extra["confirmed"] = confirmed
            write_reports(
                self.config.run_dir, self.config.scenario, self.workspace.rounds_as_dicts(), extra
            )
        return state


# What an engine reports about itself in the run's table and the confirmation repeats.
ENGINE_FIGURES = ("tokens_per_forward", "forced_fraction", "mask_ms_per_token")
# audio streams: the run's chunk-latency tail and pace, and what the engines report of their work
AUDIO_FIGURES = (
    "chunk_latency_ms_p90",
    "real_time_factor",
    "decode_rows_per_step",
    "encoder_frames_per_audio_frame",
)


def _engine_figures(report: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """The confirmation's engine-reported figures, candidate and starter: tokens per forward and,
    under a grammar, the share of output tokens it forced and its grammar work per token; for
    audio streams the chunk latency p90, the real-time factor, the token rows per decoder forward
    and the encoder frames per frame of audio."""
    table = ((report or {}).get("performance") or {}).get("table") or []
    figures = {}
    for row in table:
        if row.get("engine") in ("candidate", "baseline"):
            audio = isinstance(row.get("chunk_latency_ms_p50"), int | float) and (
                row["chunk_latency_ms_p50"] == row["chunk_latency_ms_p50"]
            )
            found = {
                key: float(row[key])
                for key in (AUDIO_FIGURES if audio else ENGINE_FIGURES)
                if isinstance(row.get(key), int | float) and row[key] == row[key]  # not NaN
            }
            figures["best" if row["engine"] == "candidate" else "starter"] = found
    return figures

"""The Performance Evaluator: a performance pytest run (same-run A/B against the baseline), read
into the headline metric in the scenario's fixed unit and direction, plus ranked bottleneck hints
with numbers. The hints' keywords are what skills list as their triggers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.pytest_runs import ScenarioRun, run_scenario_tests


@dataclass(frozen=True, slots=True)
class Hint:
    keyword: str  # matched against skills' metadata.triggers
    estimated_gain: float  # rough factor on the headline metric if fixed; ranks the hints
    evidence: str  # the numbers behind it

    def describe(self) -> str:
        return f"{self.keyword} (~{self.estimated_gain:.1f}x possible): {self.evidence}"


@dataclass(frozen=True, slots=True)
class Evaluation:
    ok: bool
    metric: str
    unit: str
    higher_is_better: bool
    value: float  # the candidate's headline value
    baseline: float
    ratio: float  # > 1: better than the baseline
    noise: float
    hints: list[Hint] = field(default_factory=list)
    report: dict[str, Any] | None = None
    problem: str = ""


def _row(report: dict[str, Any], engine: str) -> dict[str, Any]:
    return next(row for row in report["performance"]["table"] if row["engine"] == engine)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def derive_hints(report: dict[str, Any]) -> list[Hint]:
    """Bottlenecks ranked by what fixing them could gain, from the run's own numbers."""
    performance = report["performance"]
    candidate = _row(report, "candidate")
    stats = performance.get("workload_stats", {})
    hints = []
    per_forward = _number(candidate.get("tokens_per_forward"))
    acceptable = _number(stats.get("accepted_per_16_median"))
    if per_forward <= 1.05 and acceptable > 2:
        hints.append(
            Hint(
                "prediction-unused",
                (acceptable + 1) / 2,
                f"{per_forward:.2f} tokens per forward while the workload's predictions would "
                f"let ~{acceptable:.1f} of 16 drafted tokens be accepted",
            )
        )
    elif per_forward > 1.05 and acceptable > 2 and per_forward < 0.6 * (acceptable + 1):
        hints.append(
            Hint(
                "low-acceptance",
                (acceptable + 1) / per_forward,
                f"{per_forward:.2f} tokens per forward against ~{acceptable + 1:.1f} possible",
            )
        )
    efficiency = _number(candidate.get("roofline_pct"))
    if efficiency < 60:
        hints.append(
            Hint(
                "memory-bandwidth",
                min(60 / max(efficiency, 1.0), 3.0),
                f"{efficiency:.0f}% of the batch-1 roofline "
                f"({_number(report['roofline']['roofline_tok_per_s']):.0f} tok/s)",
            )
        )
    ttft, e2e = _number(candidate.get("ttft_p50_ms")), _number(candidate.get("e2e_p50_ms"))
    if e2e > 0 and ttft / e2e > 0.25:
        hints.append(
            Hint("prefill-bound", 1 / (1 - ttft / e2e), f"TTFT is {ttft / e2e:.0%} of latency")
        )
    if per_forward <= 1.05:
        hints.append(
            Hint("decode-bound", 1.2, f"TPOT p50 {_number(candidate.get('tpot_p50_ms')):.1f} ms")
        )
    return sorted(hints, key=lambda hint: hint.estimated_gain, reverse=True)


class Evaluator:
    def __init__(self, run: ScenarioRun, *, seed: int = 0) -> None:
        self.run = run
        self.seed = seed  # the public workload seed: the same every round, so rounds compare

    def evaluate(self, engine_dir: Path, *, work_dir: Path) -> Evaluation:
        outcome = run_scenario_tests(
            self.run,
            engine_dir,
            select="performance",
            seed=self.seed,
            report_path=work_dir / "evaluator-report.json",
            log_path=work_dir / "evaluator.log",
        )
        report = outcome.report
        if report is None or report.get("performance") is None:
            return Evaluation(
                False,
                "",
                "",
                True,
                math.nan,
                math.nan,
                math.nan,
                math.nan,
                [],
                report,
                f"the performance run produced no measurement (pytest exit "
                f"{outcome.returncode}):\n{outcome.log_tail[-1500:]}",
            )
        performance = report["performance"]
        return Evaluation(
            ok=True,
            metric=performance["metric"],
            unit=performance["unit"],
            higher_is_better=performance["higher_is_better"],
            value=performance["candidate"],
            baseline=performance["baseline"],
            ratio=performance["ratio"],
            noise=performance["noise"],
            hints=derive_hints(report),
            report=report,
        )

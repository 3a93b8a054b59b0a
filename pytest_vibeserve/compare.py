"""Same-run A/B measurement: candidate and baseline alternate, compared as a ratio with noise.

Order per repeat is ABBA-style (candidate first on even repeats, baseline first on odd ones) so
slow drifts of the machine (thermal, a neighbour job) hit both sides alike. ``ratio`` is always
oriented so that > 1 means the candidate is better, whatever the metric's direction.

Without a baseline (``--vibeserve-baseline none``) ``measure_alone`` records the candidate's own
figures: no ratio, and a noise that is the spread of its repeats. The synthesis loop measures its
starter that way (the starter is the loop's baseline: its ratio is 1 by definition).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_vibeserve.metrics import RunMetrics, Slo, compute_metrics, median
from pytest_vibeserve.runner import RunResult
from pytest_vibeserve.scenario import Gates


@dataclass(frozen=True, slots=True)
class Comparison:
    metric: str
    unit: str
    higher_is_better: bool
    candidate: float  # median over repeats, in `unit`
    baseline: float | None  # None: measured alone, no baseline
    ratio: float | None  # > 1: the candidate is better; None without a baseline
    noise: float  # relative half-spread of the per-repeat ratios (alone: of the candidate's values)
    repeats: int
    candidate_runs: list[RunMetrics]
    baseline_runs: list[RunMetrics]
    peers: dict[str, list[RunMetrics]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "noise": self.noise,
            "repeats": self.repeats,
            "candidate_runs": [m.to_dict() for m in self.candidate_runs],
            "baseline_runs": [m.to_dict() for m in self.baseline_runs],
            "peers": {name: [m.to_dict() for m in runs] for name, runs in self.peers.items()},
        }


def oriented_ratio(candidate: float, baseline: float, higher_is_better: bool) -> float:
    if candidate <= 0 or baseline <= 0:
        raise ValueError(f"cannot compare non-positive values {candidate} and {baseline}")
    return candidate / baseline if higher_is_better else baseline / candidate


def compare_alternating(
    run_candidate: Callable[[], RunResult],
    run_baseline: Callable[[], RunResult],
    *,
    metric: str,
    unit: str,
    higher_is_better: bool,
    repeats: int,
    peers: dict[str, Callable[[], RunResult]] | None = None,
    slo: Slo | None = None,
) -> Comparison:
    """Warm-up runs are the caller's job; every run here counts."""
    if repeats < 2:
        raise ValueError("repeats must be >= 2 to estimate noise")
    candidate_runs: list[RunMetrics] = []
    baseline_runs: list[RunMetrics] = []
    ratios: list[float] = []
    for index in range(repeats):
        order = (run_candidate, run_baseline) if index % 2 == 0 else (run_baseline, run_candidate)
        results = {id(fn): compute_metrics(fn(), slo) for fn in order}
        cand, base = results[id(run_candidate)], results[id(run_baseline)]
        candidate_runs.append(cand)
        baseline_runs.append(base)
        ratios.append(oriented_ratio(cand.get(metric), base.get(metric), higher_is_better))
    peer_runs = _measure_peers(peers, repeats, slo)
    center = median(ratios)
    return Comparison(
        metric=metric,
        unit=unit,
        higher_is_better=higher_is_better,
        candidate=median([m.get(metric) for m in candidate_runs]),
        baseline=median([m.get(metric) for m in baseline_runs]),
        ratio=center,
        noise=(max(ratios) - min(ratios)) / 2 / center,
        repeats=repeats,
        candidate_runs=candidate_runs,
        baseline_runs=baseline_runs,
        peers=peer_runs,
    )


@dataclass(frozen=True, slots=True)
class RatioGate:
    """Fails when even the top of the noise band is below ``min_ratio``."""

    min_ratio: float

    def fails(self, comparison: Comparison) -> str | None:
        if comparison.ratio is None:
            raise ValueError(
                "a ratio gate needs a baseline; this run measured the candidate alone "
                "(--vibeserve-baseline none)"
            )
        upper = comparison.ratio * (1 + comparison.noise)
        if upper >= self.min_ratio:
            return None
        direction = "higher" if comparison.higher_is_better else "lower"
        return (
            f"{comparison.metric}: candidate {comparison.candidate:.4g} {comparison.unit} vs "
            f"baseline {comparison.baseline:.4g} {comparison.unit} ({direction} is better) is a "
            f"ratio of {comparison.ratio:.3f} ± {comparison.noise:.1%}, below the gate "
            f"min_ratio={self.min_ratio:g}"
        )


@dataclass(frozen=True, slots=True)
class NoiseGate:
    """Fails when repeats disagree too much for the ratio to mean anything."""

    max_noise: float

    def fails(self, comparison: Comparison) -> str | None:
        if comparison.noise <= self.max_noise:
            return None
        return (
            f"{comparison.metric}: the repeats' ratios spread ±{comparison.noise:.1%}, over "
            f"max_noise={self.max_noise:.1%}; the machine is too busy or the workload too short "
            "(raise --vibeserve-repeats or the workload size)"
        )


def _measure_peers(
    peers: dict[str, Callable[[], RunResult]] | None, repeats: int, slo: Slo | None = None
) -> dict[str, list[RunMetrics]]:
    """Peers are context, not the comparison: half the repeats (at least one) each."""
    return {
        name: [compute_metrics(fn(), slo) for _ in range(max(1, repeats // 2))]
        for name, fn in (peers or {}).items()
    }


def measure_alone(
    run_candidate: Callable[[], RunResult],
    *,
    metric: str,
    unit: str,
    higher_is_better: bool,
    repeats: int,
    peers: dict[str, Callable[[], RunResult]] | None = None,
    slo: Slo | None = None,
) -> Comparison:
    """The candidate (and peers) without a baseline: its median and the spread of its repeats."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    candidate_runs = [compute_metrics(run_candidate(), slo) for _ in range(repeats)]
    values = [m.get(metric) for m in candidate_runs]
    center = median(values)
    peer_runs = _measure_peers(peers, repeats, slo)
    return Comparison(
        metric=metric,
        unit=unit,
        higher_is_better=higher_is_better,
        candidate=center,
        baseline=None,
        ratio=None,
        noise=(max(values) - min(values)) / 2 / center if center > 0 else 0.0,
        repeats=repeats,
        candidate_runs=candidate_runs,
        baseline_runs=[],
        peers=peer_runs,
    )


def gates_from_spec(gates: Gates) -> Sequence[RatioGate | NoiseGate]:
    built: list[RatioGate | NoiseGate] = []
    if gates.min_ratio is not None:
        built.append(RatioGate(gates.min_ratio))
    if gates.max_noise is not None:
        built.append(NoiseGate(gates.max_noise))
    return built

"""A scenario's spec: ``scenarios/<name>/scenario.toml`` read into validated dataclasses."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vibeserve.metrics import METRICS, Slo

SCALES = ("tiny", "cpu", "gpu")  # every scenario's; a scenario may add its own (e.g. cpu-large)
SCALE_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
SPEC_FILE = "scenario.toml"


class ScenarioError(ValueError):
    """scenario.toml is missing or wrong; the message names the file, the key and the fix."""


@dataclass(frozen=True, slots=True)
class ScaleSpec:
    name: str
    model: str  # "tiny", "cpu" (a model the reference builds) or "path" (--vibeserve-model)
    device: str
    dtype: str
    threads: int
    workload: dict[str, Any]  # the scenario's [workload] table overlaid with [scales.<name>]
    peers: tuple[str, ...] | None = None  # this scale's peers; None: [performance] peers


@dataclass(frozen=True, slots=True)
class Gates:
    min_ratio: float | None = None  # candidate/baseline in the better direction, noise allowed
    max_noise: float | None = None  # relative half-spread of the repeat ratios


@dataclass(frozen=True, slots=True)
class PerformanceSpec:
    metric: str
    unit: str
    higher_is_better: bool
    repeats: int
    baseline: str
    peers: tuple[str, ...]
    gates: Gates
    # Every measured run on a newly started engine process (warmed up again, not timed): state an
    # engine keeps across requests (a prefix cache) cannot carry one repeat's work into the next.
    fresh_engine: bool = False
    slo: Slo | None = None  # goodput's objectives ([performance] slo = {ttft_ms = ..., ...})


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    root: Path
    description: str
    scales: dict[str, ScaleSpec]
    correctness: dict[str, Any]
    performance: PerformanceSpec
    engine_options: dict[str, Any] = field(default_factory=dict)
    loop: dict[str, Any] = field(default_factory=dict)

    @property
    def starter(self) -> Path:
        return self.root / "starter"

    def scale(self, name: str) -> ScaleSpec:
        if name not in self.scales:
            raise ScenarioError(
                f"scenario {self.name!r} has no scale {name!r} ({self.root / SPEC_FILE} defines "
                f"{', '.join(self.scales)}); add [scales.{name}] or pick another --vibeserve-scale"
            )
        return self.scales[name]


def find_scenario_root(path: Path) -> Path | None:
    """The nearest directory at or above ``path`` that holds a scenario.toml."""
    path = path.resolve()
    for directory in (path, *path.parents) if path.is_dir() else path.parents:
        if (directory / SPEC_FILE).is_file():
            return directory
    return None


def _require_bool(table: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}: {key} = {value!r} must be true or false")
    return value


def _require(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise ScenarioError(f"{where}: missing key {key!r}")
    value = table[key]
    if not isinstance(value, kind):
        raise ScenarioError(f"{where}: {key!r} = {value!r} is not of type {kind}")
    return value


def _slo(perf: dict[str, Any], at: str) -> Slo | None:
    if "slo" not in perf:
        return None
    table = perf["slo"]
    if not isinstance(table, dict):
        raise ScenarioError(f"{at}: slo = {table!r} must be a table, e.g. {{ ttft_ms = 2000 }}")
    try:
        return Slo.from_table(table, f"{at}.slo")
    except (TypeError, ValueError) as error:
        raise ScenarioError(str(error)) from None


def load_scenario(root: Path) -> Scenario:
    spec_path = Path(root) / SPEC_FILE
    if not spec_path.is_file():
        raise ScenarioError(f"{spec_path} does not exist; a scenario folder needs a {SPEC_FILE}")
    try:
        data = tomllib.loads(spec_path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{spec_path} is not valid TOML: {error}") from None
    where = str(spec_path)
    meta = _require(data, "scenario", dict, where)
    name = _require(meta, "name", str, f"{where} [scenario]")
    if name != spec_path.parent.name:
        raise ScenarioError(f"{where}: [scenario] name {name!r} must equal the folder name")
    workload = data.get("workload", {})
    scales = {}
    for scale_name, table in _require(data, "scales", dict, where).items():
        if not SCALE_NAME.match(scale_name):
            raise ScenarioError(
                f"{where}: scale name {scale_name!r} must be lowercase kebab-case, like "
                f"{', '.join(SCALES)} or cpu-large"
            )
        at = f"{where} [scales.{scale_name}]"
        scales[scale_name] = ScaleSpec(
            name=scale_name,
            model=_require(table, "model", str, at),
            device=table.get("device", "cpu"),
            dtype=table.get("dtype", "float32"),
            threads=int(table.get("threads", 1)),
            workload={**workload, **table.get("workload", {})},
            peers=tuple(table["peers"]) if "peers" in table else None,
        )
    perf = _require(data, "performance", dict, where)
    at = f"{where} [performance]"
    metric = _require(perf, "metric", str, at)
    if metric not in METRICS:
        raise ScenarioError(f"{at}: metric {metric!r} is unknown; use one of {', '.join(METRICS)}")
    unit, higher_is_better = METRICS[metric]
    declared = perf.get("higher_is_better", higher_is_better)
    if declared != higher_is_better:
        raise ScenarioError(
            f"{at}: higher_is_better = {declared} contradicts metric {metric!r} ({unit}); "
            "remove the key or fix it"
        )
    gates = perf.get("gates", {})
    unknown = set(gates) - {"min_ratio", "max_noise"}
    if unknown:
        raise ScenarioError(
            f"{at}.gates: unknown gate(s) {sorted(unknown)}; use min_ratio, max_noise"
        )
    performance = PerformanceSpec(
        metric=metric,
        unit=unit,
        higher_is_better=higher_is_better,
        repeats=int(perf.get("repeats", 3)),
        baseline=_require(perf, "baseline", str, at),
        peers=tuple(perf.get("peers", ())),
        gates=Gates(**gates),
        fresh_engine=_require_bool(perf, "fresh_engine", False, at),
        slo=_slo(perf, at),
    )
    if performance.repeats < 2:
        raise ScenarioError(f"{at}: repeats must be >= 2 to estimate noise")
    return Scenario(
        name=name,
        root=spec_path.parent.resolve(),
        description=meta.get("description", ""),
        scales=scales,
        correctness=data.get("correctness", {}),
        performance=performance,
        engine_options=data.get("engine", {}).get("options", {}),
        loop=data.get("loop", {}),
    )

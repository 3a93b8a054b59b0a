"""The Judge and the Evaluator *are* pytest runs: this starts one and reads its JSON report.

The run is a subprocess with an environment scrubbed of API keys (the engine's worker scrubs its own
again), so nothing the loop holds — keys, held-out seeds of other rounds — reaches engine code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.credentials import is_secret_name

LOG_TAIL_CHARS = 6000


@dataclass(frozen=True, slots=True)
class ScenarioRun:
    """How to run a scenario's tests against one engine."""

    scenario_dir: Path
    scale: str
    cache_dir: Path | None = None
    threads: int | None = None
    repeats: int | None = None
    peers: str = "none"
    step_timeout_s: float = 120.0
    timeout_s: float = 3600.0
    extra_args: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class PytestOutcome:
    returncode: int
    report: dict[str, Any] | None
    log_tail: str
    command: list[str]

    @property
    def crashed(self) -> bool:
        """pytest itself failed (usage error, internal error, timeout) rather than a test."""
        return self.report is None or self.returncode not in (0, 1)


def scrubbed_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) without the names that hold credentials."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if not is_secret_name(name)}


def run_scenario_tests(
    run: ScenarioRun,
    engine_dir: Path,
    *,
    select: str,
    seed: int,
    report_path: Path,
    log_path: Path,
    extra_args: tuple[str, ...] = (),
) -> PytestOutcome:
    """``select`` is a ``-k`` expression: "correctness" (Judge) or "performance" (Evaluator);
    ``extra_args`` go after the run's own (``-x``, ``--vibeserve-baseline DIR``)."""
    command = [sys.executable, "-m", "pytest", str(run.scenario_dir), "-k", select]
    command += ["--vibeserve-engine", str(engine_dir), "--vibeserve-scale", run.scale]
    command += ["--vibeserve-seed", str(seed), "--vibeserve-report", str(report_path)]
    command += ["--vibeserve-peers", run.peers, "--vibeserve-step-timeout", str(run.step_timeout_s)]
    command += ["-p", "no:cacheprovider", "-q", "-rfE"]
    if run.cache_dir is not None:
        command += ["--vibeserve-cache", str(run.cache_dir)]
    if run.threads is not None:
        command += ["--vibeserve-threads", str(run.threads)]
    if run.repeats is not None:
        command += ["--vibeserve-repeats", str(run.repeats)]
    command += list(run.extra_args) + list(extra_args)
    report_path.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        try:
            done = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=scrubbed_environment(),
                cwd=Path(__file__).resolve().parent.parent,
                timeout=run.timeout_s,
            )
            returncode = done.returncode
        except subprocess.TimeoutExpired:
            returncode = -9
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    tail = log_path.read_bytes()[-LOG_TAIL_CHARS:].decode(errors="replace")
    return PytestOutcome(returncode, report, tail, command)


def workload_args(settings: dict) -> list[str]:
    """``--vibeserve-workload KEY=VALUE`` arguments, values written as TOML."""
    args = []
    for key, value in settings.items():
        text = json.dumps(value) if isinstance(value, str) else str(value).lower()
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value)
        args += ["--vibeserve-workload", f"{key}={text}"]
    return args

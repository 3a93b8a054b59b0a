"""``pytest --vibeserve-synth scenarios/<name>``: one pytest item per independent loop (seed).

The plugin imports this module only in synth mode. Each item builds the loop's collaborators
(workspace, roadmap, planner, backend, Judge, Evaluator) and runs it; the controller then writes
the spread of the final speedup across seeds.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.backends.offline import OfflineBackend
from agents.evaluator import Evaluator
from agents.judge import Judge
from agents.loop import DEFAULT_MIN_GAIN, Budget, LoopConfig, SynthesisLoop
from agents.planner import Planner
from agents.pytest_runs import ScenarioRun
from agents.skills import load_library
from agents.workspace import Workspace
from pytest_vibeserve.options import Options
from pytest_vibeserve.scenario import load_scenario
from pytest_vibeserve.synth_options import SynthOptions

SUMMARY_FILE = "summary.json"


def run_dir_for(synth: SynthOptions, scenario: str, seed: int) -> Path:
    return synth.workdir / scenario / f"seed-{seed}"


def make_backend(synth: SynthOptions, library: dict) -> Any:
    if synth.backend == "offline":
        return OfflineBackend(library)
    if synth.backend == "cli":
        from agents.backends.cli_agent import CliBackend

        assert synth.cli_command is not None  # SynthOptions insists on it
        return CliBackend(library, synth.cli_command)
    if synth.backend == "anthropic":
        from agents.backends.anthropic_api import AnthropicBackend

        return AnthropicBackend(library)
    raise pytest.UsageError(f"--vibeserve-backend {synth.backend}: no such backend")


def open_workspace(config: LoopConfig, *, resume: bool) -> tuple[Workspace, int | None, str]:
    """The loop's workspace, fresh or resumed; the next round (None: measure the starter first)."""
    root = config.run_dir / "workspace"
    if not resume:
        if root.exists():
            raise pytest.UsageError(
                f"{root} already holds a loop: pass --vibeserve-resume to continue it, or "
                "remove it (or pick another --vibeserve-workdir) to start afresh"
            )
        workspace = Workspace.create(
            root, config.starter, scenario=config.scenario, seed=config.seed
        )
        return workspace, None, "fresh workspace"
    workspace = Workspace.open(root)
    if not workspace.rounds():  # interrupted before the starter was measured
        state = workspace.resume_state()
        return workspace, None, f"resumed before round 0 ({'; '.join(state.discarded)})"
    state = workspace.resume_state()
    note = f"resumed at round {state.next_round}"
    if state.discarded:
        note += f"; set aside: {'; '.join(state.discarded)}"
    return workspace, state.next_round, note


def _workload_size(params: dict[str, Any]) -> float | None:
    """What a run of the workload costs, relatively: its requests, its images, or its seconds
    of audio."""
    if params.get("requests"):
        return float(params["requests"])
    if params.get("prompts"):
        return float(params["prompts"])
    if params.get("streams") and params.get("seconds"):
        return float(params["streams"]) * float(params["seconds"])
    return None


def run_one_loop(
    options: Options,
    synth: SynthOptions,
    seed: int,
    on_progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    scenario = load_scenario(synth.scenario_dir)
    performance = scenario.performance
    config = LoopConfig(
        scenario=scenario.name,
        starter=scenario.starter,
        run_dir=run_dir_for(synth, scenario.name, seed),
        metric=performance.metric,
        unit=performance.unit,
        higher_is_better=performance.higher_is_better,
        seed=seed,
        retries=int(scenario.loop.get("retries", 3)),
        judge_seeds=int(scenario.loop.get("judge_seeds", 3)),
        min_gain=float(scenario.loop.get("min_gain", DEFAULT_MIN_GAIN)),
        budget=Budget(
            rounds=synth.rounds or int(scenario.loop.get("rounds", 24)),
            wall_s=(synth.budget_minutes or scenario.loop.get("budget_minutes") or 1e9) * 60,
            dollars=synth.budget_dollars,
        ),
    )
    eval_workload = scenario.loop.get("eval_workload", {}).get(options.scale) or {}
    full = scenario.scale(options.scale).workload
    full_size, round_size = _workload_size(full), _workload_size({**full, **eval_workload})
    if full_size and round_size:
        config = dataclasses.replace(config, confirm_cost_scale=full_size / round_size)
    library = load_library(scenario=scenario.name)
    run = ScenarioRun(
        synth.scenario_dir,
        options.scale,
        cache_dir=options.cache_dir,
        threads=options.threads,
        repeats=options.repeats or scenario.loop.get("repeats"),
        step_timeout_s=options.step_timeout_s,
    )
    backend = make_backend(synth, library)  # a missing API key fails here, before any work
    workspace, next_round, note = open_workspace(config, resume=synth.resume)
    try:
        roadmap = workspace.memory
        known = roadmap.statuses()
        for skill in library.values():
            if skill.name not in known:
                roadmap.add(skill.name, skill.description.split(". ")[0][:200])
        loop = SynthesisLoop(
            config,
            workspace=workspace,
            roadmap_store=roadmap,
            planner=Planner(library, needs_recipe=backend.name == "offline"),
            backend=backend,
            judge=Judge(run, workload=scenario.loop.get("judge_workload", {}).get(options.scale)),
            evaluator=Evaluator(
                run, workload=eval_workload, profile=bool(scenario.loop.get("profile", True))
            ),
            on_progress=on_progress,
        )
        workspace.append_progress(f"loop start ({note}); backend {synth.backend}")
        if next_round is None:
            state, next_round = loop.measure_starter(), 1
        else:
            state = loop.state_from_records()
        loop.run(state, next_round)
    finally:
        workspace.close()
    return json.loads((config.run_dir / "report.json").read_text())


class SynthItem(pytest.Item):
    def __init__(self, *, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed

    def runtest(self) -> None:
        from pytest_vibeserve.plugin import session_key

        vibe = self.config.stash[session_key]
        synth = vibe.synth
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")

        def progress(line: str) -> None:
            """A live status line: written past pytest's output capture."""
            if reporter is None:
                return
            if capture is None:
                reporter.write_line(f"[seed {self.seed}] {line}")
                return
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"[seed {self.seed}] {line}")

        report = run_one_loop(vibe.options, synth, self.seed, progress)
        best = report.get("best")
        self.user_properties.append(("vibeserve_synth_report", json.dumps(report.get("best"))))
        if best is None or best["round"] == 0:
            raise AssertionError(
                f"the loop accepted no improvement over the starter; see "
                f"{run_dir_for(synth, report['scenario'], self.seed) / 'report.md'}"
            )

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, self.name


class SynthCollector(pytest.Collector):
    def __init__(self, *, synth: SynthOptions, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.synth = synth

    def collect(self) -> list[pytest.Item]:
        name = self.synth.scenario_dir.name
        return [
            SynthItem.from_parent(self, name=f"synth[{name}-seed{seed}]", seed=seed)
            for seed in range(self.synth.seeds)
        ]


def collect_synth_items(session: pytest.Session, synth: SynthOptions) -> list[pytest.Item]:
    collector = SynthCollector.from_parent(
        session, name="vibeserve-synth", path=synth.scenario_dir, synth=synth
    )
    return collector.collect()


def summarize_seeds(synth: SynthOptions) -> dict[str, Any] | None:
    """The spread of the best ratio across the seeds' reports (the paper ran one seed)."""
    scenario = synth.scenario_dir.name
    ratios, rows = [], []
    for seed in range(synth.seeds):
        path = run_dir_for(synth, scenario, seed) / "report.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        best = report.get("best")
        rows.append(
            {
                "seed": seed,
                "best": best,
                "baseline": report.get("baseline", "baseline"),
                "confirmed": report.get("confirmed"),
            }
        )
        if best is not None and best.get("ratio") is not None:
            ratios.append(best["ratio"])
    if not rows:
        return None
    summary = {
        "scenario": scenario,
        "seeds": rows,
        "ratio_median": statistics.median(ratios) if ratios else None,
        "ratio_min": min(ratios, default=None),
        "ratio_max": max(ratios, default=None),
        "ratio_stdev": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
    }
    out = synth.workdir / scenario / SUMMARY_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary

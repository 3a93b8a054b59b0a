"""Options of the synthesis loop (``--vibeserve-synth``): all options live in the plugin."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_vibeserve.options import _positive_float, _positive_int

BACKENDS = ("offline", "anthropic", "cli")


def _scenario_dir(value: str) -> Path:
    path = Path(value).expanduser()
    if not (path / "scenario.toml").is_file():
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a scenario folder (no scenario.toml); pass scenarios/<name>"
        )
    if not (path / "starter" / "engine.py").is_file():
        raise argparse.ArgumentTypeError(f"{value!r} has no starter/engine.py to start from")
    return path.resolve()


def add_synth_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("vibeserve-synth", "vibeserve: the synthesis loop")
    add = group.addoption
    add(
        "--vibeserve-synth",
        metavar="SCENARIO",
        type=_scenario_dir,
        default=None,
        help="run the synthesis loop for this scenario folder instead of collecting tests. "
        "Default: off.",
    )
    add(
        "--vibeserve-backend",
        metavar="NAME",
        choices=BACKENDS,
        default="offline",
        help=f"Implementer backend, one of {', '.join(BACKENDS)}. Default: offline.",
    )
    add(
        "--vibeserve-rounds",
        metavar="N",
        type=_positive_int,
        default=None,
        help="round budget per loop. Default: the scenario's [loop] rounds.",
    )
    add(
        "--vibeserve-budget-minutes",
        metavar="M",
        type=_positive_float,
        default=None,
        help="wall-time budget per loop, in minutes, the final confirmation included: a round "
        "starts only if it and the confirmation still fit. Default: the scenario's [loop] "
        "budget_minutes, else no limit beyond the rounds.",
    )
    add(
        "--vibeserve-budget-dollars",
        metavar="USD",
        type=_positive_float,
        default=20.0,
        help="API spending budget per loop (anthropic backend). Default: 20.",
    )
    add(
        "--vibeserve-workdir",
        metavar="DIR",
        type=Path,
        default=Path(".vibeserve"),
        help="where loops keep their workspaces and reports. Default: .vibeserve/",
    )
    add(
        "--vibeserve-resume",
        action="store_true",
        default=False,
        help="continue the loops in the work directory from their last consistent state. "
        "Default: start fresh (an existing workspace is an error).",
    )
    add(
        "--vibeserve-seeds",
        metavar="N",
        type=_positive_int,
        default=1,
        help="independent loops, one pytest item each (pytest-xdist -n spreads them). Default: 1.",
    )
    add(
        "--vibeserve-cli-command",
        metavar="TEMPLATE",
        default=None,
        help="the cli backend's bash command line; {prompt_file} (the task brief) and "
        "{workspace} (the engine directory, also its working directory) are filled in, bare, "
        "never inside quotes. Example: 'claude -p --allowedTools Edit,Write,Bash < "
        "{prompt_file}'. Default: none (required with --vibeserve-backend cli).",
    )


@dataclass(frozen=True, slots=True)
class SynthOptions:
    scenario_dir: Path
    backend: str
    rounds: int | None
    budget_minutes: float | None
    budget_dollars: float
    workdir: Path
    resume: bool
    seeds: int
    cli_command: str | None

    @classmethod
    def from_config(cls, config: pytest.Config) -> SynthOptions | None:
        get = config.getoption
        scenario_dir = get("vibeserve_synth")
        if scenario_dir is None:
            return None
        backend = get("vibeserve_backend")
        cli_command = get("vibeserve_cli_command")
        if backend == "cli" and not cli_command:
            raise pytest.UsageError(
                "--vibeserve-backend cli needs --vibeserve-cli-command 'TEMPLATE' naming the "
                "coding agent's command line with {prompt_file} and {workspace}"
            )
        if backend == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
            raise pytest.UsageError(
                "--vibeserve-backend anthropic needs an API key: `export ANTHROPIC_API_KEY=...` "
                "(it reaches the Messages API only, never an engine), or use "
                "--vibeserve-backend offline"
            )
        if cli_command:
            from agents.backends.cli_agent import check_template

            try:
                check_template(cli_command)
            except ValueError as error:
                raise pytest.UsageError(f"--vibeserve-cli-command: {error}") from None
        return cls(
            scenario_dir=scenario_dir,
            backend=backend,
            rounds=get("vibeserve_rounds"),
            budget_minutes=get("vibeserve_budget_minutes"),
            budget_dollars=get("vibeserve_budget_dollars"),
            workdir=Path(get("vibeserve_workdir")).expanduser().resolve(),
            resume=get("vibeserve_resume"),
            seeds=get("vibeserve_seeds"),
            cli_command=cli_command,
        )

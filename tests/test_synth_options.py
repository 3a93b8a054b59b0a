"""``--vibeserve-synth`` and its options: refused with the fix when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "predicted_outputs"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vibeserve-synth", "/nonexistent"], "*is not a scenario folder (no scenario.toml)*"),
        (
            ["--vibeserve-synth", str(SCENARIO), "--vibeserve-backend", "cli"],
            "*--vibeserve-backend cli needs --vibeserve-cli-command*",
        ),
        (["--vibeserve-synth", str(SCENARIO), "--vibeserve-seeds", "0"], "*'0' must be >= 1*"),
        (["--vibeserve-synth", str(SCENARIO), "--vibeserve-backend", "gpt"], "*invalid choice*"),
        (
            ["--vibeserve-synth", str(SCENARIO), "--vibeserve-backend", "anthropic"],
            "*--vibeserve-backend anthropic needs an API key: `export ANTHROPIC_API_KEY=...`*",
        ),
        (
            [
                *("--vibeserve-synth", str(SCENARIO), "--vibeserve-backend", "cli"),
                *("--vibeserve-cli-command", "agent --brief '{prompt_file}'"),
            ],
            "*--vibeserve-cli-command: *placeholder*quote*",
        ),
    ],
)
def test_bad_synth_options_are_refused(pytester, monkeypatch, args, message):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = pytester.runpytest_subprocess(*args)
    assert result.ret != 0
    result.stderr.fnmatch_lines([message])


def test_synth_mode_collects_one_item_per_seed(pytester):
    result = pytester.runpytest_subprocess(
        "--vibeserve-synth", str(SCENARIO), "--vibeserve-seeds", "3", "--collect-only", "-q"
    )
    result.stdout.fnmatch_lines(
        [
            "*synth[[]predicted_outputs-seed0[]]*",
            "*synth[[]predicted_outputs-seed1[]]*",
            "*synth[[]predicted_outputs-seed2[]]*",
        ]
    )


def test_an_existing_workspace_needs_resume(pytester, tmp_path):
    workdir = tmp_path / "work"
    (workdir / "predicted_outputs" / "seed-0" / "workspace").mkdir(parents=True)
    result = pytester.runpytest_subprocess(
        "--vibeserve-synth",
        str(SCENARIO),
        "--vibeserve-workdir",
        str(workdir),
        "--vibeserve-scale",
        "tiny",
    )
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*already holds a loop: pass --vibeserve-resume*"])

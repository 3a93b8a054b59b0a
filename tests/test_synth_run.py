"""``pytest --vibeserve-synth`` end to end at the tiny scale, offline: real recipes, a real Judge
and Evaluator (pytest runs), a real git workspace. Timings decide acceptance, so this asserts the
structure of what the loop leaves behind, never which rounds won.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "predicted_outputs"


def test_a_round_leaves_history_reports_and_memory(pytester, tmp_path, vibeserve_cache):
    workdir = tmp_path / "work"
    result = pytester.runpytest_subprocess(
        *synth_args(SCENARIO, workdir, vibeserve_cache, 1), timeout=900
    )
    run_dir = workdir / "predicted_outputs" / "seed-0"
    workspace = run_dir / "workspace"
    rounds = [json.loads(line) for line in (workspace / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[0]["verdict"] == "accepted" and rounds[0]["skill"] is None
    for record in rounds[1:]:
        assert record["skill"] and record["verdict"] in {"accepted", "rejected", "failed"}
        assert record["metric"] == "output_tok_per_s" and record["unit"] == "tok/s"
        if record["verdict"] != "accepted":
            assert record["reasons"]
    result.stdout.fnmatch_lines(["*[[]seed 0[]] round 0: starter * tok/s (the loop's baseline)*"])
    log = subprocess.run(
        ["git", "-C", str(workspace), "log", "--format=%s"], capture_output=True, text=True
    ).stdout
    for phase in ("round 1 planner:", "round 1 implementer:", "round 1 judge:", "round 1 loop:"):
        assert phase in log
    tags = subprocess.run(["git", "-C", str(workspace), "tag"], capture_output=True, text=True)
    accepted = {f"round-{r['round']}" for r in rounds if r["verdict"] == "accepted"}
    assert accepted <= set(tags.stdout.split())
    report = json.loads((run_dir / "report.json").read_text())
    assert report["best"]["round"] in {r["round"] for r in rounds if r["verdict"] == "accepted"}
    assert (run_dir / "report.md").exists() and "<svg" in (run_dir / "ratio.svg").read_text()
    memory = (workspace / "memory.md").read_text()
    assert "prediction-block-verification" in memory
    # the Judge's held-out seeds stay outside the workspace the Implementer works in
    judge_report = json.loads((run_dir / "private" / "round-1" / "judge-report.json").read_text())
    assert str(judge_report["seed"]) not in (workspace / "progress.md").read_text()


def synth_args(scenario: Path, workdir: Path, cache: Path, rounds: int) -> list[str]:
    """pytest's arguments for the loop at the tiny scale."""
    return [
        "-p",
        "no:cacheprovider",
        "--vibeserve-synth",
        str(scenario),
        "--vibeserve-scale",
        "tiny",
        "--vibeserve-rounds",
        str(rounds),
        "--vibeserve-workdir",
        str(workdir),
        "--vibeserve-cache",
        str(cache),
    ]


def synth_command(workdir: Path, cache: Path, rounds: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *synth_args(SCENARIO, workdir, cache, rounds), *extra]


def read_rounds(workspace: Path) -> list[dict]:
    path = workspace / "rounds.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.slow
def test_kill_9_of_the_real_loop_then_resume_loses_no_accepted_round(tmp_path, vibeserve_cache):
    """The real loop (recipes, Judge and Evaluator pytest runs, git) killed with SIGKILL in the
    middle of a round, process group and all; --vibeserve-resume finishes it."""
    workdir = tmp_path / "work"
    workspace = workdir / "predicted_outputs" / "seed-0" / "workspace"
    loop = subprocess.Popen(
        synth_command(workdir, vibeserve_cache, 4),
        cwd=SCENARIO.parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # wait until round 1 is recorded, then kill inside round 2 (a Judge or Evaluator run)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(read_rounds(workspace)) < 2:
        assert loop.poll() is None, "the loop ended before round 1 was recorded"
        time.sleep(0.5)
    time.sleep(4)
    os.killpg(loop.pid, signal.SIGKILL)
    loop.wait()
    before = read_rounds(workspace)
    accepted_before = {r["round"]: r["commit"] for r in before if r["verdict"] == "accepted"}
    assert 0 in accepted_before
    resumed = subprocess.run(
        synth_command(workdir, vibeserve_cache, 4, "--vibeserve-resume"),
        cwd=SCENARIO.parent.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    after = read_rounds(workspace)
    assert after[: len(before)] == before, "a recorded round changed after resume"
    assert [r["round"] for r in after] == list(range(len(after)))
    assert after[-1]["round"] == 4 or "stop:" in (workspace / "progress.md").read_text()
    tags = subprocess.run(["git", "-C", str(workspace), "tag"], capture_output=True, text=True)
    for number, commit in accepted_before.items():
        assert f"round-{number}" in tags.stdout.split()
        sha = subprocess.run(
            ["git", "-C", str(workspace), "rev-parse", f"round-{number}^{{commit}}"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert sha == commit
    assert "resumed at round" in (workspace / "progress.md").read_text()
    assert (workspace.parent / "report.json").exists(), resumed.stdout[-3000:]


@pytest.mark.slow
def test_three_seeds_on_two_workers_report_their_spread(pytester, tmp_path, vibeserve_cache):
    workdir = tmp_path / "work"
    result = pytester.runpytest_subprocess(
        *synth_command(workdir, vibeserve_cache, 1)[3:],
        "--vibeserve-seeds",
        "3",
        "-n",
        "2",
        timeout=1800,
    )
    summary = json.loads((workdir / "predicted_outputs" / "summary.json").read_text())
    assert [row["seed"] for row in summary["seeds"]] == [0, 1, 2]
    ratios = [row["best"]["ratio"] for row in summary["seeds"]]
    assert summary["ratio_min"] == min(ratios) and summary["ratio_max"] == max(ratios)
    for seed in range(3):
        assert (workdir / "predicted_outputs" / f"seed-{seed}" / "report.json").exists()
    result.stdout.fnmatch_lines(["*vibeserve synthesis*"])


@pytest.mark.slow
def test_the_json_loop_at_tiny_scale_judges_and_measures_its_skills(
    pytester, tmp_path, vibeserve_cache
):
    """Scenario json_decoding's loop, 3 rounds at the tiny scale: every round applies a json
    skill's recipe, the Judge checks it against the constrained reference on held-out schemas,
    and the report says what the confirmed engines report about themselves."""
    workdir = tmp_path / "work"
    scenario = SCENARIO.parent / "json_decoding"
    result = pytester.runpytest_subprocess(
        *synth_args(scenario, workdir, vibeserve_cache, 3), timeout=1200
    )
    result.assert_outcomes(passed=1)
    run_dir = workdir / "json_decoding" / "seed-0"
    rounds = read_rounds(run_dir / "workspace")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(r["metric"] == "e2e_p50_ms" and r["unit"] == "ms" for r in rounds)
    json_skills = {
        "openblas-matmul",
        "forced-token-fast-forward",
        "grammar-prompt-lookup",
        "grammar-compile-cache",
        "mask-overlap",
        "fused-projections",
        "thread-blas-tuning",
    }
    assert {r["skill"] for r in rounds[1:]} <= json_skills
    assert any(r["verdict"] == "accepted" for r in rounds[1:])
    for record in rounds[1:]:
        if record["verdict"] == "accepted":  # the Judge passed it on held-out schemas
            judge = json.loads(
                (run_dir / "private" / f"round-{record['round']}" / "judge-report.json").read_text()
            )
            assert judge["correctness"]["passed"] is True
    text = (run_dir / "report.md").read_text()
    assert "x the starter" in text and "of output tokens forced by the grammar" in text

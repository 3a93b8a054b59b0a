"""``pytest --vibeserve-synth`` end to end at the tiny scale, offline: real recipes, a real Judge
and Evaluator (pytest runs), a real git workspace. Timings decide acceptance, so this asserts the
structure of what the loop leaves behind, never which rounds won.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "predicted_outputs"


def test_a_round_leaves_history_reports_and_memory(pytester, tmp_path, vibeserve_cache):
    workdir = tmp_path / "work"
    result = pytester.runpytest_subprocess(
        "--vibeserve-synth",
        str(SCENARIO),
        "--vibeserve-scale",
        "tiny",
        "--vibeserve-rounds",
        "1",
        "--vibeserve-workdir",
        str(workdir),
        "--vibeserve-cache",
        str(vibeserve_cache),
        "-p",
        "no:cacheprovider",
        timeout=900,
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
    result.stdout.fnmatch_lines(["*[[]seed 0[]] round 0: starter * tok/s (*x baseline)*"])
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

"""The workspace: a commit per phase, tags per accepted round, rollback, rounds.jsonl, resume, lock.

Resume is tested on hand-made interruptions and on a real ``kill -9`` of a small fake loop at
seeded random moments; the lock against a second opener in this process and in another one.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agents.memory import Roadmap
from agents.workspace import (
    RESUME_MESSAGE,
    ROLES,
    SEED_MESSAGE,
    STALE_LOCK_GRACE_S,
    RoundRecord,
    TornRoundWarning,
    Workspace,
    WorkspaceError,
    WorkspaceLockedError,
)

REPO = Path(__file__).resolve().parents[1]


def ticking_clock():
    ticks = itertools.count()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return lambda: start + timedelta(seconds=next(ticks))


@pytest.fixture
def starter(tmp_path: Path) -> Path:
    path = tmp_path / "starter"
    (path / "__pycache__").mkdir(parents=True)
    (path / "__pycache__" / "engine.cpython-311.pyc").write_bytes(b"\0")
    (path / "engine.py").write_text("VERSION = 0\n")
    (path / "helpers.py").write_text("HELP = 0\n")
    return path


@pytest.fixture
def ws(tmp_path: Path, starter: Path):
    workspace = Workspace.create(
        tmp_path / "ws", starter, scenario="demo", seed=7, clock=ticking_clock()
    )
    yield workspace
    workspace.close()


def git(ws_or_root: Workspace | Path, *args: str) -> str:
    root = ws_or_root.root if isinstance(ws_or_root, Workspace) else ws_or_root
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def subjects(ws: Workspace) -> list[str]:
    return git(ws, "log", "--format=%s").splitlines()[::-1]


def record(n: int, verdict: str, commit: str, value: float = 1.0, **extra) -> RoundRecord:
    reasons = [] if verdict == "accepted" else ["the Judge found a divergence at token 3"]
    return RoundRecord(
        n,
        verdict,
        "output_tok_per_s",
        "tok/s",
        True,
        value=value,
        ratio=value / 10,
        noise=0.01,
        reasons=reasons,
        skill="block-verify",
        params={"block": 16},
        commit=commit,
        **extra,
    )


def edit(ws: Workspace, version: int) -> None:
    (ws.engine_dir / "engine.py").write_text(f"VERSION = {version}\n")


def run_round(ws: Workspace, n: int, verdict: str, value: float = 1.0) -> RoundRecord:
    """One round the way the loop runs it: phases, then accept+record or rollback+record."""
    ws.commit_phase(n, "planner", "plan")
    edit(ws, n)
    ws.commit_phase(n, "implementer", f"version {n}")
    ws.commit_phase(n, "judge", "passed")
    ws.commit_phase(n, "evaluator", f"{value} tok/s")
    if verdict == "accepted":
        ws.accept(n)
        stored = ws.append_round(record(n, verdict, ws.head(), value))
    else:
        ws.rollback(ws.accepted_rounds()[-1])
        stored = ws.append_round(record(n, verdict, ws.head(), value))
    ws.commit_phase(n, "loop", verdict)
    return stored


def engine_at(ws: Workspace, rev: str) -> dict[str, str]:
    names = git(ws, "ls-tree", "-r", "--name-only", rev, "--", "engine").splitlines()
    return {name: git(ws, "show", f"{rev}:{name}") for name in names}


def engine_on_disk(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text().strip()
        for p in sorted((root / "engine").rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


# -- create / open -------------------------------------------------------------------------------
def test_create_seeds_round_zero_from_the_starter(ws: Workspace):
    root = ws.root
    assert sorted(p.name for p in ws.engine_dir.iterdir()) == ["engine.py", "helpers.py"]
    assert (root / "rounds.jsonl").read_bytes() == b""
    assert Roadmap.from_markdown((root / "memory.md").read_text()) == Roadmap()
    assert (root / "progress.md").read_text().startswith("# Progress")
    meta = json.loads((root / "workspace.json").read_text())
    assert (meta["scenario"], meta["seed"], meta["format"]) == ("demo", 7, 1)
    assert meta["created"].startswith("2026-01-01T00:00")
    assert subjects(ws) == [SEED_MESSAGE]
    assert git(ws, "rev-parse", "round-0^{commit}") == ws.head()
    assert git(ws, "status", "--porcelain") == ""
    assert ws.accepted_rounds() == [0]
    assert ws.best_round() == 0
    (ws.reports_dir / "round-1").mkdir()
    (ws.reports_dir / "round-1" / "judge.json").write_text("{}")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "reports/round-1/judge.json"], cwd=root, check=False
    )
    assert ignored.returncode == 1  # reports are history, never ignored
    assert git(ws, "check-ignore", "engine/__pycache__/x.pyc") == "engine/__pycache__/x.pyc"


def test_create_refuses_a_used_directory_and_a_starter_without_engine(tmp_path, starter):
    used = tmp_path / "used"
    used.mkdir()
    (used / "file").write_text("x")
    with pytest.raises(WorkspaceError, match="not an empty directory"):
        Workspace.create(used, starter, scenario="demo", seed=0)
    with pytest.raises(WorkspaceError, match=r"has no engine\.py"):
        Workspace.create(tmp_path / "new", tmp_path, scenario="demo", seed=0)


def test_open_validates_that_it_is_a_workspace(tmp_path, ws):
    with pytest.raises(WorkspaceError, match="does not exist"):
        Workspace.open(tmp_path / "missing")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(WorkspaceError, match="not a git repository"):
        Workspace.open(plain)
    subprocess.run(["git", "init", "-q", str(plain)], check=True)
    with pytest.raises(WorkspaceError, match=r"workspace.json is missing"):
        Workspace.open(plain)
    (plain / "workspace.json").write_text('{"format": 99}')
    with pytest.raises(WorkspaceError, match="format 99"):
        Workspace.open(plain)
    (plain / "workspace.json").write_text('{"format": 1}')
    with pytest.raises(WorkspaceError, match="never fully created"):
        Workspace.open(plain)
    ws.close()
    with Workspace.open(ws.root) as again:
        assert again.meta["scenario"] == "demo"
        assert again.head() == git(ws, "rev-parse", "round-0^{commit}")


# -- phases, accept, rollback -------------------------------------------------------------------
def test_every_phase_is_a_commit_with_round_and_role(ws):
    shas = [ws.commit_phase(1, role, f"{role} did its part") for role in ROLES]
    assert len(set(shas)) == len(ROLES)  # empty changes commit too
    assert subjects(ws)[1:] == [f"round 1 {role}: {role} did its part" for role in ROLES]
    assert shas[-1] == ws.head()
    with pytest.raises(WorkspaceError, match="role 'critic'"):
        ws.commit_phase(1, "critic", "x")
    with pytest.raises(WorkspaceError, match="needs a message"):
        ws.commit_phase(1, "judge", " ")


def test_accepted_rounds_are_tagged_and_the_best_is_found(ws):
    run_round(ws, 1, "accepted", value=12.0)
    run_round(ws, 2, "rejected", value=30.0)
    run_round(ws, 3, "accepted", value=11.0)
    assert ws.accepted_rounds() == [0, 1, 3]
    assert git(ws, "tag", "--list", "round-*").split() == ["round-0", "round-1", "round-3"]
    for stored in ws.rounds():
        if stored.verdict == "accepted":
            assert stored.tag == f"round-{stored.round}"
            assert git(ws, "rev-parse", f"{stored.tag}^{{commit}}") == stored.commit
            assert engine_at(ws, stored.tag)["engine/engine.py"] == f"VERSION = {stored.round}"
        else:
            assert stored.tag is None
    assert ws.best_round() == 1  # rejected round 2 had the highest value and does not count
    assert ws.best_round(higher_is_better=False) == 3


def test_accept_refuses_an_uncommitted_engine(ws):
    edit(ws, 1)
    with pytest.raises(WorkspaceError, match="uncommitted changes"):
        ws.accept(1)


def test_rollback_restores_only_the_engine_and_keeps_the_rejected_attempt(ws):
    run_round(ws, 1, "accepted")
    (ws.engine_dir / "part_1.py").write_text("PART = 1\n")
    ws.commit_phase(1, "loop", "a file of round 1 after its tag")  # not in the tag
    ws.commit_phase(2, "planner", "plan")
    edit(ws, 2)
    (ws.engine_dir / "helpers.py").unlink()
    (ws.engine_dir / "added.py").write_text("ADDED = 2\n")
    ws.commit_phase(2, "implementer", "version 2")
    rejected = ws.head()
    (ws.reports_dir / "round-2.txt").write_text("rejected\n")
    (ws.engine_dir / "scratch.py").write_text("uncommitted\n")
    sha = ws.rollback(1)
    assert subjects(ws)[-2:] == [
        "round 2 loop: uncommitted work before rollback",
        "round 2 loop: rollback to round-1",
    ]
    assert engine_on_disk(ws.root) == {
        k: v for k, v in engine_at(ws, "round-1").items()
    }  # part_1.py, added.py and scratch.py are gone, helpers.py is back
    assert "engine/helpers.py" in engine_on_disk(ws.root)
    assert (ws.reports_dir / "round-2.txt").exists()  # only engine/ is restored
    assert git(ws, "status", "--porcelain") == ""
    assert sha == ws.head()
    git(ws, "merge-base", "--is-ancestor", rejected, "HEAD")  # the attempt stays in history
    assert engine_at(ws, f"{sha}~1")["engine/scratch.py"] == "uncommitted"
    with pytest.raises(WorkspaceError, match="not an accepted round"):
        ws.rollback(2)


def test_export_engine_writes_an_accepted_round_beside_the_candidate(ws, tmp_path):
    run_round(ws, 1, "accepted")
    (ws.engine_dir / "sub").mkdir()
    (ws.engine_dir / "sub" / "kernel.py").write_text("K = 2\n")
    edit(ws, 2)  # the candidate in flight, uncommitted
    dest = tmp_path / "best"
    (dest / "stale").mkdir(parents=True)  # whatever was there is replaced whole
    assert ws.export_engine(1, dest) == dest
    assert {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()} == {
        "engine.py",
        "helpers.py",
    }
    assert (dest / "engine.py").read_text() == "VERSION = 1\n"
    assert (ws.engine_dir / "engine.py").read_text() == "VERSION = 2\n"  # candidate untouched
    ws.export_engine(0, dest)
    assert (dest / "engine.py").read_text() == "VERSION = 0\n"
    with pytest.raises(WorkspaceError, match="never accepted"):
        ws.export_engine(5, dest)


def test_diff_since_shows_untracked_files_and_leaves_the_index_alone(ws):
    edit(ws, 1)
    (ws.engine_dir / "cache.py").write_text("PROMPT_CACHE = {}\n")
    (ws.root / "progress.md").write_text("not engine\n")
    diff = ws.diff_since(0)
    assert "+VERSION = 1" in diff and "+PROMPT_CACHE = {}" in diff
    assert "progress.md" not in diff
    assert diff.endswith("\n")
    assert git(ws, "diff", "--cached", "--name-only") == ""
    assert "?? engine/cache.py" in git(ws, "status", "--porcelain")
    assert ws.diff_since("round-0") == diff
    with pytest.raises(WorkspaceError, match="no such commit or tag"):
        ws.diff_since(5)


# -- rounds.jsonl and progress.md ---------------------------------------------------------------
def test_records_are_one_json_line_each_and_keep_their_order(ws):
    first = run_round(ws, 1, "accepted", value=3.5)
    line = (ws.root / "rounds.jsonl").read_text().splitlines()[0]
    keys = list(json.loads(line))
    assert keys[:10] == [
        "round",
        "commit",
        "tag",
        "metric",
        "unit",
        "higher_is_better",
        "value",
        "ratio",
        "noise",
        "verdict",
    ]
    assert set(keys) == {f.name for f in fields(RoundRecord)}
    assert RoundRecord.from_json(line) == first
    assert first.ended is not None
    with pytest.raises(WorkspaceError, match="cannot follow round 1"):
        ws.append_round(record(1, "rejected", ws.head()))
    with pytest.raises(WorkspaceError, match="not in the workspace history"):
        ws.append_round(record(2, "rejected", "0" * 40))
    with pytest.raises(ValueError, match="say why"):
        RoundRecord(2, "failed", "m", "u", True)
    with pytest.raises(ValueError, match="unknown round-record keys"):
        ws.append_round({**first.to_dict(), "round": 2, "colour": "red"})
    epoch = RoundRecord(2, "accepted", "m", "u", True, started=0.0)
    assert epoch.started == "1970-01-01T00:00:00+00:00"


def test_a_torn_last_line_is_ignored_and_reported(ws):
    run_round(ws, 1, "accepted")
    run_round(ws, 2, "rejected")
    path = ws.root / "rounds.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines(keepends=True)[0][:37])  # a kill mid-write
    with pytest.warns(TornRoundWarning, match="torn last line"):
        assert [r.round for r in ws.rounds()] == [1, 2]
    with pytest.raises(WorkspaceError, match="torn line"):
        ws.append_round(record(3, "rejected", ws.head()))
    path.write_bytes(b"{not json}\n" + whole)
    with pytest.raises(WorkspaceError, match="line 1 is corrupt"):
        ws.rounds()


def test_progress_is_append_only_with_timestamps(ws):
    before = (ws.root / "progress.md").read_text()
    ws.append_progress("round 1 planner: block-verify {'block': 16}")
    ws.append_progress("round 1: accepted 1.8x")
    text = (ws.root / "progress.md").read_text()
    assert text.startswith(before)
    assert text.count("\n## 2026-01-01T00:00") == 2
    assert text.index("block-verify") < text.index("accepted 1.8x")


# -- resume --------------------------------------------------------------------------------------
def test_resume_saves_uncommitted_work_and_restores_the_last_accepted_round(ws):
    run_round(ws, 1, "accepted")
    run_round(ws, 2, "rejected")
    ws.commit_phase(3, "planner", "plan")
    edit(ws, 3)
    (ws.engine_dir / "new.py").write_text("NEW = 3\n")
    state = ws.resume_state()
    assert (state.next_round, state.last_round, state.restored_round) == (3, 2, 1)
    assert state.best_round == 1
    assert state.interrupted_tag.startswith("interrupted-round-3-")
    assert any("round 3 planner: plan" in line for line in state.discarded)
    assert "uncommitted engine/new.py" in state.discarded
    saved = engine_at(ws, state.interrupted_tag)
    assert (saved["engine/engine.py"], saved["engine/new.py"]) == ("VERSION = 3", "NEW = 3")
    assert engine_on_disk(ws.root) == engine_at(ws, "round-1")
    assert subjects(ws)[-1] == RESUME_MESSAGE
    assert state.head == ws.head()
    assert git(ws, "status", "--porcelain") == ""
    assert "interrupted work is on tag" in (ws.root / "progress.md").read_text()


def test_resume_sets_aside_commits_after_the_last_recorded_round(ws):
    run_round(ws, 1, "accepted")
    ws.commit_phase(2, "planner", "plan")
    edit(ws, 2)
    half_done = ws.commit_phase(2, "implementer", "version 2")
    ws.accept(2)  # tagged, then killed before the record was written
    state = ws.resume_state()
    assert state.next_round == 2
    assert f"commit {half_done[:12]} round 2 implementer: version 2" in state.discarded
    assert "tag round-2 of unrecorded round 2" in state.discarded
    git(ws, "merge-base", "--is-ancestor", half_done, state.interrupted_tag)
    assert git(ws, "tag", "--list", "round-*").split() == ["round-0", "round-1"]
    assert engine_on_disk(ws.root) == engine_at(ws, "round-1")
    run_round(ws, 2, "accepted")  # the round is redone and tagged under its own number
    assert ws.accepted_rounds() == [0, 1, 2]


def test_resume_from_a_clean_state_discards_nothing(ws):
    run_round(ws, 1, "accepted")
    run_round(ws, 2, "rejected")
    tags_before = git(ws, "tag", "--list")
    state = ws.resume_state()
    assert (state.next_round, state.restored_round, state.discarded) == (3, 1, ())
    assert state.interrupted_tag is None
    assert git(ws, "tag", "--list") == tags_before
    again = ws.resume_state()
    assert (again.next_round, again.discarded, again.interrupted_tag) == (3, (), None)


def test_resume_repairs_what_a_kill_between_steps_leaves(ws):
    run_round(ws, 1, "accepted")
    ws.commit_phase(2, "evaluator", "measured")
    edit(ws, 2)
    ws.commit_phase(2, "implementer", "version 2")
    ws.append_round(record(2, "accepted", ws.head()))  # recorded, killed before the tag
    path = ws.root / "rounds.jsonl"
    path.write_bytes(path.read_bytes() + b'{"round": 3, "ver')  # and a torn write
    (ws.root / ".git" / "index.lock").write_text("")
    (ws.root / "memory.md.vibeserve-tmp").write_text("half a roadmap")
    state = ws.resume_state(git_lock_grace_s=0.0)
    assert (state.last_round, state.restored_round) == (2, 2)
    assert "re-created tag round-2" in state.repaired
    assert any("index.lock" in line for line in state.repaired)
    assert any("torn last line" in line for line in state.discarded)
    assert not (ws.root / "memory.md.vibeserve-tmp").exists()
    assert [r.round for r in ws.rounds()] == [1, 2]
    assert engine_at(ws, state.interrupted_tag) == engine_at(ws, "round-2")
    assert git(ws, "show", f"{state.interrupted_tag}:rounds.jsonl").endswith('{"round": 3, "ver')
    assert engine_on_disk(ws.root) == engine_at(ws, "round-2")


def test_resume_restores_the_engine_after_a_rejected_round_was_recorded(ws):
    run_round(ws, 1, "accepted")
    ws.commit_phase(2, "implementer", "version 2")
    edit(ws, 2)
    ws.commit_phase(2, "evaluator", "measured")
    ws.append_round(record(2, "rejected", ws.head()))  # killed before the rollback
    state = ws.resume_state()
    assert state.discarded == ()
    assert engine_on_disk(ws.root) == engine_at(ws, "round-1")


FAKE_LOOP = textwrap.dedent(
    """
    import json, os, random, sys
    from pathlib import Path
    from agents.workspace import RoundRecord, Workspace

    root, journal = Path(sys.argv[1]), Path(sys.argv[2])
    seed, rounds = int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)

    def note(line):
        with open(journal, "a") as file:
            file.write(line + "\\n")
            file.flush()
            os.fsync(file.fileno())

    with Workspace.open(root) as ws:
        state = ws.resume_state()
        print(json.dumps(state.discarded), flush=True)
        for n in range(state.next_round, state.next_round + rounds):
            name = f"technique-{n % 3}"
            ws.memory.start(name, n, why="a technique under test")
            ws.append_progress(f"round {n}: {name}")
            ws.commit_phase(n, "planner", name)
            (ws.engine_dir / "engine.py").write_text(f"VERSION = {n}\\n")
            (ws.engine_dir / f"part_{n}.py").write_text(f"PART = {n}\\n" * 200)
            ws.commit_phase(n, "implementer", f"version {n}")
            (ws.reports_dir / f"round-{n}.txt").write_text("passed\\n")
            ws.commit_phase(n, "judge", "passed")
            ws.commit_phase(n, "evaluator", "measured")
            common = dict(metric="output_tok_per_s", unit="tok/s", higher_is_better=True,
                          value=float(n), ratio=1 + n / 10, skill=name, started=ws.now())
            if rng.random() < 0.6:
                ws.accept(n)
                ws.append_round(RoundRecord(n, "accepted", commit=ws.head(), **common))
                ws.memory.done(name, "faster", n)
                ws.commit_phase(n, "loop", "accepted")
                note(f"accepted {n}")
            else:
                ws.rollback(ws.accepted_rounds()[-1], round=n)
                why = ["slower"]
                ws.append_round(RoundRecord(n, "rejected", reasons=why, commit=ws.head(), **common))
                ws.memory.park(name, "slower", n)
                ws.commit_phase(n, "loop", "rejected")
                note(f"rejected {n}")
    """
)


def start_fake_loop(tmp_path: Path, root: Path, seed: int, rounds: int) -> subprocess.Popen:
    script = tmp_path / "fake_loop.py"
    script.write_text(FAKE_LOOP)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), str(root), str(tmp_path / "journal"), str(seed), str(rounds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: the kill takes its git children too
    )


def read_journal(path: Path) -> dict[int, str]:
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # complete lines only
    return {int(n): verdict for verdict, n in map(str.split, lines)}


@pytest.mark.parametrize("seed", range(5))
def test_kill_9_at_a_random_moment_loses_no_accepted_round(tmp_path, starter, seed):
    root = tmp_path / "ws"
    Workspace.create(root, starter, scenario="demo", seed=seed).close()
    loop = start_fake_loop(tmp_path, root, seed, rounds=10_000)
    assert loop.stdout.readline()  # it has opened the workspace and started its rounds
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    os.killpg(loop.pid, signal.SIGKILL)
    loop.wait()
    finished = read_journal(tmp_path / "journal")  # rounds the loop saw through to the end
    accepted_before = {n for n, verdict in finished.items() if verdict == "accepted"}
    head_before = git(root, "rev-parse", "HEAD")
    engine_before = engine_on_disk(root)
    rounds_before = (root / "rounds.jsonl").read_bytes()

    with Workspace.open(root) as ws:
        state = ws.resume_state(git_lock_grace_s=0.1)
        recorded = ws.rounds()
        assert [r.round for r in recorded] == list(range(1, len(recorded) + 1))
        assert set(finished) <= {r.round for r in recorded}
        assert accepted_before <= set(ws.accepted_rounds())
        for r in recorded:
            if r.verdict == "accepted":
                assert (
                    engine_at(ws, f"round-{r.round}")["engine/engine.py"] == f"VERSION = {r.round}"
                )
        assert state.restored_round == ws.accepted_rounds()[-1]
        assert engine_on_disk(root) == engine_at(ws, f"round-{state.restored_round}")
        assert git(root, "status", "--porcelain") == ""
        # nothing lost: the old head is in the history, uncommitted work on the interrupted tag
        git(root, "merge-base", "--is-ancestor", head_before, "HEAD")
        kept = state.interrupted_tag or head_before
        assert engine_at(ws, kept) == engine_before
        assert rounds_before.startswith((root / "rounds.jsonl").read_bytes())

    loop = start_fake_loop(tmp_path, root, seed + 100, rounds=2)
    assert json.loads(loop.stdout.readline()) == []  # the resumed state was consistent
    assert loop.wait(timeout=60) == 0
    with Workspace.open(root) as ws:
        assert [r.round for r in ws.rounds()] == list(range(1, len(recorded) + 3))


# -- the lock and the import guard --------------------------------------------------------------
def test_a_second_opener_is_refused_while_the_first_holds_the_lock(ws):
    with pytest.raises(WorkspaceLockedError, match=f"in use by pid {os.getpid()}"):
        Workspace.open(ws.root)
    reader = Workspace.open(ws.root, lock=False)
    assert reader.rounds() == []
    with pytest.raises(WorkspaceError, match="read-only"):
        reader.commit_phase(1, "planner", "x")
    with pytest.raises(WorkspaceError, match="read-only"):
        reader.memory.add("t", "why")
    reader.close()
    ws.close()
    Workspace.open(ws.root).close()


def test_the_lock_names_a_holder_in_another_process(ws):
    ws.close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from agents.workspace import Workspace; "
            f"w = Workspace.open({str(ws.root)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkspaceLockedError, match=f"in use by pid {holder.pid} "):
            Workspace.open(ws.root)
    finally:
        holder.kill()
        holder.wait()
    Workspace.open(ws.root).close()  # the kernel dropped the dead holder's lock


def hold_lock_as(ws_root: Path, recorded_pid: int) -> subprocess.Popen:
    """A process that takes the workspace lock and records ``recorded_pid`` as its holder, as
    a loop's child holds the lock it inherited (the loop wrote itself there, then died)."""
    lock = ws_root / ".git" / "vibeserve.lock"
    holder = {"pid": recorded_pid, "host": socket.gethostname(), "since": "then"}
    code = (
        "import fcntl, json, os, sys\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.ftruncate(fd, 0)\n"
        f"os.write(fd, json.dumps({holder!r}).encode())\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    return child


def exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_lock_left_with_a_dead_loops_child_is_waited_for(ws):
    """kill -9 of a loop can leave a child (forked, not yet exec'd, or still dying) holding its
    lock for a moment: the next opener waits for it instead of refusing the workspace."""
    ws.close()
    child = hold_lock_as(ws.root, exited_pid())
    threading.Timer(0.5, child.stdin.close).start()  # EOF: its readline returns, it exits
    started = time.monotonic()
    with Workspace.open(ws.root):
        pass
    assert 0.4 < time.monotonic() - started < STALE_LOCK_GRACE_S
    child.wait(timeout=10)


def test_a_dead_loops_child_that_keeps_the_lock_is_named(ws, monkeypatch):
    ws.close()
    monkeypatch.setattr("agents.workspace.STALE_LOCK_GRACE_S", 0.3)
    dead = exited_pid()
    child = hold_lock_as(ws.root, dead)
    try:
        with pytest.raises(
            WorkspaceLockedError,
            match=rf"its holder pid {dead} on .* has exited, but a process it started still "
            r"holds the lock after 0.3 s \(see `fuser .*vibeserve.lock`\)",
        ):
            Workspace.open(ws.root)
    finally:
        child.kill()
        child.wait()
    # a live holder is refused at once, without the grace
    live = hold_lock_as(ws.root, os.getpid())
    try:
        started = time.monotonic()
        with pytest.raises(WorkspaceLockedError, match=f"in use by pid {os.getpid()} "):
            Workspace.open(ws.root)
        assert time.monotonic() - started < 0.3
    finally:
        live.kill()
        live.wait()


def load_guard():
    """agents/__init__.py loaded by path, as a caller does before trusting ``import agents``."""
    spec = importlib.util.spec_from_file_location("guard", REPO / "agents" / "__init__.py")
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    return guard


def test_the_import_guard_accepts_this_package():
    assert load_guard().ensure_vibeserve_agents() is importlib.import_module("agents")


def test_the_import_guard_names_the_package_that_shadows_this_one(tmp_path):
    shadow = tmp_path / "site" / "agents"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('"""Stands in for OpenAI\'s Agents SDK."""\n')
    guard_file = str(REPO / "agents" / "__init__.py")
    check = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('guard', {guard_file!r})\n"
        "guard = importlib.util.module_from_spec(spec); spec.loader.exec_module(guard)\n"
        "guard.ensure_vibeserve_agents()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(shadow.parent)},
        cwd=tmp_path,  # not the checkout, whose directory would come first on sys.path
        check=False,
    )
    assert result.returncode == 1
    assert "ImportError" in result.stderr
    assert str(shadow / "__init__.py") in result.stderr
    assert str(REPO / "agents" / "__init__.py") in result.stderr
    assert "pip uninstall openai-agents" in result.stderr

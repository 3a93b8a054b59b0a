"""The loop's durable state: one git repository per loop, seeded from the scenario's starter.

Layout of a workspace::

    engine/          the candidate engine (the only thing rollback and resume ever restore)
    reports/         the Judge's and Evaluator's reports, one folder per round (history, tracked)
    rounds.jsonl     one line per finished round: the commit point of a round
    progress.md      append-only log, newest last
    memory.md        the roadmap of techniques (agents.memory)
    workspace.json   scenario, seed, creation time, format version

Every agent phase ends in a commit ``round {n} {role}: {message}``; an accepted round gets the tag
``round-{n}`` (round 0 is the starter). History is append-only: rollback and resume write new
commits that restore ``engine/``, never ``reset --hard``, so rejected and interrupted attempts stay
reachable. A round is finished once its line in ``rounds.jsonl`` is complete (newline-terminated
and fsync'ed); ``resume_state`` puts a workspace back to its last finished round after a crash,
Ctrl-C or kill -9 at any moment, and saves whatever the round in flight left behind under a tag
``interrupted-round-{n}-{timestamp}``. An fcntl lock keeps a second loop out.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git

from agents.memory import Roadmap, RoadmapStore, write_atomic

FORMAT_VERSION = 1
ENGINE = "engine"
REPORTS = "reports"
ROUNDS = "rounds.jsonl"
PROGRESS = "progress.md"
MEMORY = "memory.md"
META = "workspace.json"
LOCK = "vibeserve.lock"  # inside .git/, so it is never committed
# a killed loop's children (git, engine workers, pytest runs) can hold a copy of its lock for a
# moment after it died (forked but not yet exec'd, or still dying): wait this long for them
STALE_LOCK_GRACE_S = 10.0
BRANCH = "main"
ROLES = ("planner", "implementer", "judge", "evaluator", "loop")
VERDICTS = ("accepted", "rejected", "failed")
SEED_MESSAGE = "round 0: seed from starter"
RESUME_MESSAGE = "loop: resume after interruption"
INCOMPLETE_WRITE = ".vibeserve-tmp"  # suffix of agents.memory.write_atomic's temporary files

_PHASE_RE = re.compile(r"^round (\d+) (\w+): ")
_ROUND_TAG_RE = re.compile(r"^round-(\d+)$")
_STARTER_IGNORE = ("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".hypothesis")
_GITIGNORE = f"""\
# Caches and scratch files. reports/ is history and stays tracked.
__pycache__/
*.py[cod]
.pytest_cache/
.ruff_cache/
.mypy_cache/
.hypothesis/
.ipynb_checkpoints/
*.egg-info/
*{INCOMPLETE_WRITE}
# An Implementer's hand-off note: read and deleted by its backend, never history.
.vibeserve-implementation.json
# Weights never belong in the history: an engine reads them from spec.model_path.
*.safetensors
*.gguf
*.pt
*.pth
"""
# Applied to every git command through the environment, so a hook or a signing setting in the
# user's config (or one written into .git/ by an agent) never runs inside the loop.
_GIT_ENV_CONFIG = (
    ("core.hooksPath", os.devnull),
    ("commit.gpgsign", "false"),
    ("tag.gpgsign", "false"),
)
_LOCAL_CONFIG = (
    ("user", "name", "vibeserve loop"),
    ("user", "email", "loop@vibeserve.invalid"),
    ("core", "fsync", "committed"),  # objects and refs reach the disk before git reports success
)
_GIT_LOCKS = ("index.lock", "HEAD.lock", "packed-refs.lock", "config.lock")

Clock = Callable[[], datetime]


class WorkspaceError(RuntimeError):
    """The workspace is missing, malformed, or was asked for something it cannot do."""


class WorkspaceLockedError(WorkspaceError):
    """Another process holds the workspace."""


class TornRoundWarning(UserWarning):
    """The last line of rounds.jsonl was cut short by a kill; it was ignored."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


# -- records ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One finished round, as one line of rounds.jsonl."""

    round: int
    verdict: str  # accepted / rejected / failed
    metric: str  # the scenario's headline metric, e.g. "output_tok_per_s"
    unit: str  # fixed for the whole loop, e.g. "tok/s"
    higher_is_better: bool
    value: float | None = None  # the candidate's headline metric, in `unit`
    ratio: float | None = None  # candidate vs baseline in the same run; > 1 is better either way
    noise: float | None = None  # half-spread of the per-repeat ratios
    reasons: list[str] = field(default_factory=list)  # why rejected or failed
    skill: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # other skills the change applied on the way (skill -> its params), e.g. re-alignment
    # turning block verification on: the planner counts them as tried, the roadmap as done
    also: dict[str, dict[str, Any]] = field(default_factory=dict)
    commit: str | None = None
    tag: str | None = None  # "round-{n}" when accepted
    started: str | None = None  # ISO 8601; an epoch float is converted
    ended: str | None = None
    attempts: int = 0  # Implementer -> Judge attempts this round
    hints: list[str] = field(default_factory=list)  # the Evaluator's ranked bottleneck hints

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"round must be an int >= 0, got {self.round!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(
                f"round {self.round}: verdict {self.verdict!r} is not one of {VERDICTS}"
            )
        if not isinstance(self.higher_is_better, bool):
            raise ValueError(f"round {self.round}: higher_is_better must be a bool")
        for name in ("value", "ratio", "noise"):
            number = getattr(self, name)
            if number is not None:
                if isinstance(number, bool) or not isinstance(number, int | float):
                    raise ValueError(f"round {self.round}: {name} must be a number or None")
                if not math.isfinite(number):
                    raise ValueError(f"round {self.round}: {name} must be finite, got {number}")
                set_(self, name, float(number))
        set_(self, "reasons", [str(reason) for reason in self.reasons or ()])
        set_(self, "hints", [str(hint) for hint in self.hints or ()])
        set_(self, "params", dict(self.params or {}))
        set_(self, "also", {str(k): dict(v or {}) for k, v in (self.also or {}).items()})
        if self.verdict != "accepted" and not self.reasons:
            raise ValueError(f"round {self.round} is {self.verdict}: say why in `reasons`")
        for name in ("started", "ended"):
            moment = getattr(self, name)
            if isinstance(moment, int | float) and not isinstance(moment, bool):
                set_(self, name, _iso(datetime.fromtimestamp(moment, UTC)))
            elif moment is not None and not isinstance(moment, str):
                raise ValueError(f"round {self.round}: {name} must be an ISO 8601 string")

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _RECORD_KEYS}

    def to_json(self) -> str:
        try:
            return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"round {self.round}: not JSON-serialisable ({error})") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown round-record keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as error:  # a required key is missing
            raise ValueError(f"incomplete round record: {error}") from None

    @classmethod
    def from_json(cls, line: str) -> RoundRecord:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("a round record is a JSON object")
        return cls.from_dict(data)


# The order of the keys in a rounds.jsonl line: what a person scanning the file looks for first.
_RECORD_KEYS = (
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
    "reasons",
    "skill",
    "params",
    "also",
    "started",
    "ended",
    "attempts",
    "hints",
)


@dataclass(frozen=True, slots=True)
class ResumeState:
    next_round: int
    last_round: int  # the last round recorded in rounds.jsonl (0 when none is)
    restored_round: int  # the last accepted round: engine/ now holds its content
    best_round: int
    head: str  # the "loop: resume after interruption" commit
    interrupted_tag: str | None  # where the round in flight was saved; None when nothing was
    discarded: tuple[str, ...]  # what resume took out of the way, one line each
    repaired: tuple[str, ...]  # tags re-created, stale locks removed, ...


# -- the lock --------------------------------------------------------------------------------
class _Lock:
    """An fcntl lock on .git/vibeserve.lock; the kernel drops it when its holder dies."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, now: str, grace_s: float | None = None) -> _Lock:
        """The lock, or WorkspaceLockedError naming its holder. When the recorded holder is a
        process of this host that has exited, whatever still holds the lock is a child it left
        (dying, or forked and not yet exec'd): wait up to ``grace_s`` for it to let go."""
        grace_s = STALE_LOCK_GRACE_S if grace_s is None else grace_s
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + grace_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                info = _holder(fd)
                gone = _exited_here(info)
                if gone and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise WorkspaceLockedError(_locked_message(path, info, gone, grace_s)) from None
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": now}
        os.write(fd, json.dumps(holder).encode())
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> dict[str, Any] | None:
    """What the lock's holder wrote of itself (pid, host, since), or None if unreadable."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    except ValueError:
        return None
    if not isinstance(info, dict) or not {"pid", "host", "since"} <= info.keys():
        return None
    return info


def _exited_here(info: dict[str, Any] | None) -> bool:
    """Whether the recorded holder is a process of this host that no longer runs."""
    if info is None or info["host"] != socket.gethostname() or not isinstance(info["pid"], int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _locked_message(path: Path, info: dict[str, Any] | None, gone: bool, grace_s: float) -> str:
    workspace = path.parent.parent
    if info is None:
        who = "another process (pid unknown)"
    else:
        who = f"pid {info['pid']} on {info['host']} (since {info['since']})"
    if gone:
        return (
            f"workspace {workspace} is locked: its holder {who} has exited, but a process it "
            f"started still holds the lock after {grace_s:g} s (see `fuser {path}`); stop "
            "that process, then run again"
        )
    return (
        f"workspace {workspace} is in use by {who}: two loops must never write one workspace; "
        "wait for it to finish or stop it, or use another directory"
    )


# -- the workspace ---------------------------------------------------------------------------
class Workspace:
    def __init__(self, root: Path, repo: git.Repo, *, clock: Clock | None = None) -> None:
        self.root = root
        self._repo = repo
        self._clock = clock or _utc_now
        self._lock: _Lock | None = None
        git_dir = str(root / ".git")
        # Pin git to this repository even when the caller's environment points elsewhere
        # (GIT_DIR / GIT_INDEX_FILE are set inside git hooks, for example).
        env = {"GIT_DIR": git_dir, "GIT_WORK_TREE": str(root)}
        env["GIT_INDEX_FILE"] = str(root / ".git" / "index")
        env["GIT_CONFIG_COUNT"] = str(len(_GIT_ENV_CONFIG))
        for i, (key, value) in enumerate(_GIT_ENV_CONFIG):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
        repo.git.update_environment(**env)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, root: Path, starter: Path, *, scenario: str, seed: int, clock: Clock | None = None
    ) -> Workspace:
        """Seed a new workspace at ``root`` from ``starter`` (round 0, accepted), locked."""
        root, starter = Path(root).absolute(), Path(starter).absolute()
        if not (starter / "engine.py").is_file():
            raise WorkspaceError(
                f"starter {starter} has no engine.py; pass the scenario's starter/ directory"
            )
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise WorkspaceError(
                f"{root} already exists and is not an empty directory: resume it "
                f"(Workspace.open + resume_state, --vibeserve-resume) or choose a new directory"
            )
        root.mkdir(parents=True, exist_ok=True)
        repo = git.Repo.init(root, initial_branch=BRANCH)
        with repo.config_writer() as config:
            for section, option, value in _LOCAL_CONFIG:
                config.set_value(section, option, value)
        workspace = cls(root, repo, clock=clock)
        workspace._lock = _Lock.acquire(root / ".git" / LOCK, workspace.now())
        try:
            shutil.copytree(starter, root / ENGINE, ignore=shutil.ignore_patterns(*_STARTER_IGNORE))
            (root / REPORTS).mkdir()
            (root / REPORTS / "README.md").write_text(
                "Judge and Evaluator reports, one folder per round.\n", encoding="utf-8"
            )
            (root / ".gitignore").write_text(_GITIGNORE, encoding="utf-8")
            (root / ROUNDS).write_bytes(b"")
            (root / PROGRESS).write_text(
                f"# Progress\n\nAppend-only log of the synthesis loop for scenario `{scenario}` "
                f"(seed {seed}); newest entries last.\n",
                encoding="utf-8",
            )
            write_atomic(root / MEMORY, Roadmap().to_markdown())
            meta = {
                "format": FORMAT_VERSION,
                "scenario": scenario,
                "seed": seed,
                "created": workspace.now(),
                "starter": str(starter),
            }
            write_atomic(root / META, json.dumps(meta, indent=2) + "\n")
            workspace._commit(SEED_MESSAGE)
            workspace._tag(_round_tag(0), "HEAD", "round 0: the starter, accepted")
        except BaseException:
            workspace.close()
            raise
        return workspace

    @classmethod
    def open(cls, root: Path, *, lock: bool = True, clock: Clock | None = None) -> Workspace:
        """Open an existing workspace; ``lock=False`` opens it read-only, beside a running loop."""
        root = Path(root).absolute()
        hint = "create one with Workspace.create (pytest --vibeserve-synth starts a fresh one)"
        if not root.is_dir():
            raise WorkspaceError(f"no workspace at {root}: the directory does not exist; {hint}")
        if not (root / ".git").is_dir():
            raise WorkspaceError(f"{root} is not a workspace: it is not a git repository; {hint}")
        try:
            meta = json.loads((root / META).read_text(encoding="utf-8"))
            version = meta["format"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise WorkspaceError(
                f"{root} is not a workspace: {META} is missing or unreadable ({error}); {hint}"
            ) from None
        if version != FORMAT_VERSION:
            raise WorkspaceError(
                f"{root} has workspace format {version}; this vibeserve reads format "
                f"{FORMAT_VERSION}: use the vibeserve version that wrote it"
            )
        workspace = cls(root, git.Repo(root), clock=clock)
        if not workspace._tag_exists(0):
            workspace.close()
            raise WorkspaceError(
                f"{root} was never fully created (it has no tag round-0); delete it and create it "
                f"again"
            )
        if lock:
            try:
                workspace._lock = _Lock.acquire(root / ".git" / LOCK, workspace.now())
            except WorkspaceLockedError:
                workspace.close()
                raise
        return workspace

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self._repo.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "locked" if self._lock else "read-only"
        return f"Workspace({str(self.root)!r}, {mode})"

    # -- plain properties ------------------------------------------------------------------
    @property
    def engine_dir(self) -> Path:
        return self.root / ENGINE

    @property
    def reports_dir(self) -> Path:
        return self.root / REPORTS

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.root / META).read_text(encoding="utf-8"))

    @property
    def memory(self) -> RoadmapStore:
        """memory.md; changes are written atomically, and only by the lock holder."""
        return RoadmapStore(self.root / MEMORY, guard=lambda: self._require_lock("memory.md"))

    def now(self) -> str:
        return _iso(self._clock())

    def head(self) -> str:
        return self._git("rev-parse", "HEAD")

    # -- phases and rounds -----------------------------------------------------------------
    def commit_phase(self, round: int, role: str, message: str) -> str:
        """Commit everything as ``round {round} {role}: {message}``, even when nothing changed."""
        self._require_lock("commit")
        if role not in ROLES:
            raise WorkspaceError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise WorkspaceError(f"round must be an int >= 0, got {round!r}")
        if not message.strip():
            raise WorkspaceError("a phase commit needs a message: what the phase did")
        return self._commit(f"round {round} {role}: {message.strip()}")

    def accept(self, round: int, summary: str = "") -> str:
        """Tag HEAD ``round-{round}`` as the accepted candidate of that round; returns the tag.

        Record the round with ``append_round`` next; until its line is written the round is not
        finished, and ``resume_state`` would set the tag aside with the rest of the round.
        """
        self._require_lock("accept")
        last = self._last_round()
        if last is not None and round <= last:
            raise WorkspaceError(f"round {round} is already recorded (the last is {last})")
        if self._engine_dirty():
            raise WorkspaceError(
                f"engine/ has uncommitted changes: commit the phase that made them "
                f"(commit_phase) before accepting round {round}, so the tag holds what was judged"
            )
        name = _round_tag(round)
        if self._tag_exists(round):
            if self._engine_tree(name) == self._engine_tree("HEAD"):
                return name
            raise WorkspaceError(
                f"tag {name} already exists at {self._rev(name)[:12]} with another engine; "
                f"resume_state() sets aside tags of unrecorded rounds"
            )
        message = f"round {round} accepted" + (f": {summary}" if summary else "")
        self._tag(name, "HEAD", message)
        return name

    def accepted_rounds(self) -> list[int]:
        """Round 0 and every round recorded as accepted, in order."""
        recorded = [r.round for r in self._read_rounds()[0] if r.verdict == "accepted"]
        return sorted({0, *recorded})

    def best_round(self, higher_is_better: bool | None = None) -> int:
        """The accepted round with the best headline value (round 0 when none has a value).

        The direction defaults to the one the records carry; ties go to the earlier round.
        """
        accepted = [
            r for r in self._read_rounds()[0] if r.verdict == "accepted" and r.value is not None
        ]
        if not accepted:
            return 0
        if higher_is_better is None:
            directions = {r.higher_is_better for r in accepted}
            if len(directions) > 1:
                raise WorkspaceError("rounds.jsonl mixes metric directions; pass higher_is_better")
            higher_is_better = directions.pop()
        sign = 1.0 if higher_is_better else -1.0
        return max(accepted, key=lambda r: (sign * r.value, -r.round)).round  # type: ignore[operator]

    def rollback(self, to_round: int, *, round: int | None = None) -> str:
        """Restore engine/ (only it) to accepted round ``to_round`` in a new commit.

        ``round`` is the round in flight (default: the one after the last recorded). Uncommitted
        work is committed first, so the rejected attempt stays in the history.
        """
        self._require_lock("rollback")
        if to_round not in self.accepted_rounds() or not self._tag_exists(to_round):
            raise WorkspaceError(
                f"cannot roll back to round {to_round}: it is not an accepted round "
                f"(accepted: {self.accepted_rounds()})"
            )
        if round is None:
            round = (self._last_round() or 0) + 1
        if self._dirty_paths():
            self._commit(f"round {round} loop: uncommitted work before rollback")
        self._restore_engine(_round_tag(to_round))
        return self._commit(f"round {round} loop: rollback to {_round_tag(to_round)}")

    def export_engine(self, round: int, dest: Path) -> Path:
        """Write the engine of accepted round ``round`` to ``dest`` (replaced whole): a copy the
        Evaluator can run beside the candidate while engine/ holds the candidate."""
        if not self._tag_exists(round):
            raise WorkspaceError(f"round {round} has no tag: it was never accepted")
        dest = Path(dest)
        partial = dest.with_name(f".{dest.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        tree = self._repo.commit(self._rev(_round_tag(round))).tree / ENGINE
        for blob in tree.traverse():
            if blob.type != "blob":
                continue
            target = partial / Path(blob.path).relative_to(ENGINE)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob.data_stream.read())
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(partial, dest)
        return dest

    def append_round(self, record: RoundRecord | Mapping[str, Any]) -> RoundRecord:
        """Write one finished round to rounds.jsonl (flushed and fsync'ed): its commit point."""
        self._require_lock("append a round")
        if not isinstance(record, RoundRecord):
            record = RoundRecord.from_dict(record)
        records, torn = self._read_rounds()
        if torn is not None:
            raise WorkspaceError(
                f"{ROUNDS} ends with a torn line (a write was interrupted); call resume_state() "
                f"to repair it before recording round {record.round}"
            )
        if records and record.round <= records[-1].round:
            raise WorkspaceError(
                f"round {record.round} cannot follow round {records[-1].round} in {ROUNDS}: "
                f"rounds are recorded once each, in increasing order"
            )
        if record.commit is None or not self._commit_exists(record.commit):
            raise WorkspaceError(
                f"round {record.round}: commit {record.commit!r} is not in the workspace history; "
                f"record the sha that commit_phase or head() returned"
            )
        if record.verdict == "accepted":
            name = _round_tag(record.round)
            if record.tag not in (None, name):
                raise WorkspaceError(f"round {record.round} is accepted: its tag is {name}")
            record = replace(record, tag=name)
            if self._tag_exists(record.round) and self._engine_tree(name) != self._engine_tree(
                record.commit
            ):
                raise WorkspaceError(
                    f"tag {name} holds another engine than commit {record.commit[:12]}; record "
                    f"the commit that accept() tagged"
                )
        elif record.tag is not None:
            raise WorkspaceError(f"round {record.round} is {record.verdict}: it has no tag")
        if record.ended is None:
            record = replace(record, ended=self.now())
        with open(self.root / ROUNDS, "ab") as file:
            file.write(record.to_json().encode("utf-8") + b"\n")
            file.flush()
            os.fsync(file.fileno())
        return record

    def rounds(self) -> list[RoundRecord]:
        """Every finished round; a torn last line is ignored with a TornRoundWarning."""
        records, torn = self._read_rounds()
        if torn is not None:
            warnings.warn(
                TornRoundWarning(
                    f"{self.root / ROUNDS}: ignored a torn last line ({torn[:80]!r}); "
                    f"resume_state() repairs it"
                ),
                stacklevel=2,
            )
        return records

    def rounds_as_dicts(self) -> list[dict[str, Any]]:
        return [record.to_dict() for record in self.rounds()]

    def append_progress(self, text: str) -> None:
        """Append a timestamped entry to progress.md."""
        self._require_lock("progress.md")
        entry = f"\n## {self.now()}\n\n{text.strip()}\n"
        with open(self.root / PROGRESS, "a", encoding="utf-8") as file:
            file.write(entry)
            file.flush()
            os.fsync(file.fileno())

    def diff_since(self, ref: str | int) -> str:
        """Unified diff of engine/ from ``ref`` (a round number or any git ref) to the work tree.

        Untracked files count; the real index is left alone (a scratch index is used).
        """
        rev = _round_tag(ref) if isinstance(ref, int) else ref
        if not self._commit_exists(rev):
            raise WorkspaceError(
                f"cannot diff since {ref!r}: no such commit or tag (accepted rounds: "
                f"{self.accepted_rounds()})"
            )
        with tempfile.TemporaryDirectory(prefix="vibeserve-index-") as scratch:
            env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            self._git("read-tree", "HEAD", env=env)
            self._git("add", "-A", "--", ENGINE, env=env)
            return self._git(
                "diff",
                "--cached",
                "--no-color",
                "--no-ext-diff",
                "--no-renames",
                rev,
                "--",
                ENGINE,
                env=env,
                strip=False,
            )

    # -- resume ----------------------------------------------------------------------------
    def resume_state(self, *, git_lock_grace_s: float = 2.0) -> ResumeState:
        """Return to the last finished round after an interruption, losing nothing.

        The last consistent state is the last round in rounds.jsonl whose commit exists. What the
        round in flight left (commits after that round, uncommitted engine changes, a torn line,
        a tag of an unrecorded round) is committed and tagged ``interrupted-round-{n}-{time}``;
        then engine/ is restored to the last accepted round and ``loop: resume after
        interruption`` is committed. Logs (progress.md, memory.md, reports/) are kept as they are.
        """
        self._require_lock("resume")
        repaired = self._clear_stale_git_locks(git_lock_grace_s)
        for tmp in sorted(self.root.glob(f"*{INCOMPLETE_WRITE}")):
            tmp.unlink()
            repaired.append(f"removed {tmp.name}, an incomplete atomic write")
        records, torn = self._read_rounds()
        valid = list(records)
        for i, record in enumerate(records):
            if not self._commit_exists(record.commit or ""):
                valid = records[:i]  # this record and every later one
                break
        discarded = [
            f"record of round {r.round} (commit {r.commit} is missing or follows one that is)"
            for r in records[len(valid) :]
        ]
        if torn is not None:
            discarded.append(f"torn last line of {ROUNDS}: {torn[:80]!r}")
        last_round = valid[-1].round if valid else 0
        next_round = last_round + 1
        accepted = [0, *(r.round for r in valid if r.verdict == "accepted")]
        base = valid[-1].commit or "" if valid else self._rev(_round_tag(0))
        discarded += [
            f"commit {sha[:12]} {subject}" for sha, subject in self._commits_after(base, last_round)
        ]
        dirty = self._dirty_paths()
        discarded += [f"uncommitted {path}" for path in dirty if _in_engine(path)]
        stray = [k for k in self._round_tags() if k not in accepted]
        discarded += [f"tag {_round_tag(k)} of unrecorded round {k}" for k in stray]

        interrupted = None
        stamp = self._clock().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        if discarded:
            if dirty:
                self._commit(f"round {next_round} loop: interrupted, uncommitted work saved")
            interrupted = self._unused_tag(f"interrupted-round-{next_round}-{stamp}")
            self._tag(
                interrupted,
                "HEAD",
                f"round {next_round} was interrupted; resume_state set aside:\n"
                + "\n".join(f"- {line}" for line in discarded),
            )
        for k in stray:
            name = _round_tag(k)
            if not self._is_ancestor(name, "HEAD"):
                self._tag(self._unused_tag(f"interrupted-round-{k}-{stamp}-tag"), name, name)
            self._git("tag", "-d", name)
        for record in valid:
            if record.verdict == "accepted" and not self._tag_exists(record.round):
                self._tag(_round_tag(record.round), record.commit or "", "re-created by resume")
                repaired.append(f"re-created tag {_round_tag(record.round)}")
        if torn is not None or len(valid) < len(records):
            lines = "".join(record.to_json() + "\n" for record in valid)
            write_atomic(self.root / ROUNDS, lines)
            repaired.append(f"{ROUNDS} cut back to its {len(valid)} finished rounds")
        restored = accepted[-1]
        self._restore_engine(_round_tag(restored))
        note = (
            f"Resumed after an interruption: next round {next_round}, engine of round {restored}."
        )
        if interrupted:
            note += f" The interrupted work is on tag `{interrupted}`."
        self.append_progress(note)
        body = "\n".join(f"- {line}" for line in (*discarded, *repaired))
        head = self._commit(RESUME_MESSAGE + (f"\n\n{body}" if body else ""))
        return ResumeState(
            next_round=next_round,
            last_round=last_round,
            restored_round=restored,
            best_round=self.best_round() if valid else 0,
            head=head,
            interrupted_tag=interrupted,
            discarded=tuple(discarded),
            repaired=tuple(repaired),
        )

    # -- internals -------------------------------------------------------------------------
    def _require_lock(self, what: str) -> None:
        if self._lock is None or not self._lock.held:
            raise WorkspaceError(
                f"cannot {what}: {self.root} was opened read-only (Workspace.open(lock=False)) "
                f"or closed; open it with the lock to change it"
            )

    def _git(self, *args: str, env: dict[str, str] | None = None, strip: bool = True) -> str:
        try:
            return self._repo.git.execute(
                [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args],
                env=env,
                strip_newline_in_stdout=strip,
            )
        except git.GitCommandError as error:
            stderr = (error.stderr or "").strip()
            raise WorkspaceError(
                f"`git {' '.join(args)}` failed in {self.root}: {stderr}"
            ) from None

    def _commit(self, message: str) -> str:
        self._git("add", "-A")
        self._git(
            "commit",
            "--allow-empty",
            "--no-verify",
            "--quiet",
            "--cleanup=whitespace",
            "-m",
            message,
        )
        return self.head()

    def _tag(self, name: str, rev: str, message: str) -> None:
        self._git("tag", "-a", name, rev, "-m", message)

    def _rev(self, rev: str) -> str:
        return self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")

    def _commit_exists(self, rev: str) -> bool:
        try:
            self._rev(rev)
        except WorkspaceError:
            return False
        return True

    def _tag_exists(self, round: int) -> bool:
        return self._commit_exists(f"refs/tags/{_round_tag(round)}")

    def _round_tags(self) -> list[int]:
        names = self._git("tag", "--list", "round-*").split()
        return sorted(int(m.group(1)) for n in names if (m := _ROUND_TAG_RE.match(n)))

    def _unused_tag(self, name: str) -> str:
        candidate, n = name, 1
        while self._commit_exists(f"refs/tags/{candidate}"):
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def _is_ancestor(self, rev: str, of: str) -> bool:
        try:
            self._git("merge-base", "--is-ancestor", rev, of)
        except WorkspaceError:
            return False
        return True

    def _engine_tree(self, rev: str) -> str:
        return self._git("rev-parse", f"{rev}^{{commit}}:{ENGINE}")

    def _restore_engine(self, rev: str) -> None:
        self._git("restore", f"--source={rev}", "--staged", "--worktree", "--", ENGINE)

    def _dirty_paths(self) -> list[str]:
        out = self._git("status", "--porcelain=v1", "-z", "--untracked-files=all", strip=False)
        entries = out.split("\0")
        paths: list[str] = []
        i = 0
        while i < len(entries):
            entry = entries[i]
            i += 1
            if len(entry) > 3:
                paths.append(entry[3:])
                if entry[0] in "RC":  # a rename or copy: the source path follows
                    i += 1
        return paths

    def _engine_dirty(self) -> bool:
        return any(_in_engine(path) for path in self._dirty_paths())

    def _last_round(self) -> int | None:
        records = self._read_rounds()[0]
        return records[-1].round if records else None

    def _read_rounds(self) -> tuple[list[RoundRecord], str | None]:
        """The complete lines of rounds.jsonl, and the torn tail after the last newline if any."""
        path = self.root / ROUNDS
        data = path.read_bytes() if path.exists() else b""
        *lines, tail = data.split(b"\n")
        records: list[RoundRecord] = []
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                records.append(RoundRecord.from_json(raw.decode("utf-8")))
            except (ValueError, UnicodeDecodeError) as error:
                raise WorkspaceError(
                    f"{path} line {number} is corrupt ({error}); only a torn last line is "
                    f"tolerated: fix or remove that line by hand"
                ) from None
        return records, (tail.decode("utf-8", "replace") if tail else None)

    def _commits_after(self, base: str, last_round: int) -> list[tuple[str, str]]:
        """Commits of the round in flight: after ``base`` and after any earlier resume."""
        out = self._git("log", "--format=%H%x00%s", f"{base}..HEAD")
        found: list[tuple[str, str]] = []
        for line in filter(None, out.split("\n")):
            sha, subject = line.split("\0", 1)
            if subject == RESUME_MESSAGE:
                break  # an earlier resume set aside everything older
            match = _PHASE_RE.match(subject)
            if match and match.group(2) == "loop" and int(match.group(1)) <= last_round:
                continue  # bookkeeping of a finished round: its closing commit, its rollback
            found.append((sha, subject))
        return found

    def _clear_stale_git_locks(self, grace_s: float) -> list[str]:
        """Remove lock files a killed git left behind, once no live git can still hold them."""
        git_dir = self.root / ".git"
        candidates = [git_dir / name for name in _GIT_LOCKS]
        candidates += list((git_dir / "refs").rglob("*.lock"))
        removed: list[str] = []
        for path in candidates:
            deadline = time.monotonic() + grace_s
            while path.exists() and time.monotonic() < deadline:
                try:
                    if time.time() - path.stat().st_mtime >= grace_s:
                        break
                except FileNotFoundError:
                    break
                time.sleep(0.05)
            if path.exists():
                path.unlink(missing_ok=True)
                removed.append(f"removed stale {path.relative_to(git_dir)} left by a killed git")
        return removed


def _round_tag(round: int) -> str:
    return f"round-{round}"


def _in_engine(path: str) -> bool:
    return path == ENGINE or path.startswith(f"{ENGINE}/")

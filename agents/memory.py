"""The roadmap in ``memory.md``: every technique the loop plans, tries, keeps or gives up, and why.

Statuses follow the paper: *todo*; *in progress*; *done* (an accepted round used it); *parked* (the
implementation failed or did not move the metric for an implementation reason; it may be retried);
*abandoned* (a named code- or hardware-level reason it cannot help here). The rules live in code:
``abandon`` refuses a reason that is only a figure ("0.97x"), an abandoned technique never comes
back, and each transition names the states it may start from.

``memory.md`` is plain markdown for people: a five-column table, then a free-form ``## Notes``
section that round-trips verbatim. ``Roadmap.from_markdown(r.to_markdown()) == r`` for every
roadmap, and the text of a written file round-trips unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class RoadmapError(ValueError):
    """A roadmap rule was broken or memory.md could not be read; the message says how to fix it."""


class Status(StrEnum):
    TODO = "todo"
    IN_PROGRESS = "in progress"
    DONE = "done"
    PARKED = "parked"
    ABANDONED = "abandoned"


# Which states each transition may start from.
_STARTABLE = (Status.TODO, Status.IN_PROGRESS, Status.PARKED, Status.DONE)  # done: tune it again
_FINISHABLE = (Status.IN_PROGRESS,)
_PARKABLE = (Status.IN_PROGRESS,)
_ABANDONABLE = (Status.TODO, Status.IN_PROGRESS, Status.PARKED)

# Words that describe a measurement rather than a cause: "0.97x slower than baseline" names none.
_FIGURE_WORDS = frozenset(
    """
    slower faster slow fast speed speedup speedups slowdown regression regressed regresses worse
    better gain gains improvement improvements improve improved improves ratio noise noisy baseline
    than within same help helped helps helpful work worked works did does didn doesn not the and
    was were its any tok sec per performance throughput latency metric result results measured
    measurement benchmark effect change difference only just about around roughly approx lower
    higher less more too very much little nothing none round rounds percent times vs
    """.split()
)
_MIN_CAUSE_WORDS = 2

_TITLE = "# Memory"
_INTRO = (
    "Roadmap of techniques for this engine, kept by the synthesis loop. Status is one of todo,\n"
    "in progress, done, parked (the implementation failed; it may be retried) or abandoned (a\n"
    "named code- or hardware-level reason it cannot help here). The table and the Notes section\n"
    "are data; the loop rewrites the rest."
)
_COLUMNS = ("technique", "status", "why", "attempts", "last round")
_HEADER = "| " + " | ".join(_COLUMNS) + " |"
_SEPARATOR = "|" + "---|" * len(_COLUMNS)
_SEPARATOR_RE = re.compile(r"^\|(\s*:?-+:?\s*\|){" + str(len(_COLUMNS)) + "}$")
_NOTES_RE = re.compile(r"^## Notes[ \t]*$", re.MULTILINE)
_NO_ROUND = "-"


def _one_line(text: str) -> str:
    """Collapse every run of whitespace, newlines included, into one space."""
    if not isinstance(text, str):
        raise RoadmapError(f"expected text, got {type(text).__name__} {text!r}")
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class Technique:
    name: str
    status: Status
    why: str  # one line: why it should help, or why it is done / parked / abandoned
    attempts: int = 0  # rounds that tried it
    last_round: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _one_line(self.name))
        object.__setattr__(self, "why", _one_line(self.why))
        try:
            object.__setattr__(self, "status", Status(self.status))
        except ValueError:
            valid = ", ".join(s.value for s in Status)
            raise RoadmapError(
                f"technique {self.name!r}: status {self.status!r} is not one of {valid}"
            ) from None
        if not self.name:
            raise RoadmapError("a technique needs a name")
        if not self.why:
            raise RoadmapError(f"technique {self.name!r} needs a one-line why")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise RoadmapError(f"technique {self.name!r}: attempts must be an int")
        if self.attempts < 0:
            raise RoadmapError(f"technique {self.name!r}: attempts must be >= 0")
        if self.last_round is not None and (
            isinstance(self.last_round, bool)
            or not isinstance(self.last_round, int)
            or self.last_round < 0
        ):
            raise RoadmapError(f"technique {self.name!r}: last_round must be an int >= 0 or None")


def require_cause(name: str, reason: str) -> str:
    """Return ``reason`` as one line if it names a cause in words; raise RoadmapError otherwise."""
    reason = _one_line(reason)
    words = [w for w in re.findall(r"[^\W\d_]{3,}", reason) if w.lower() not in _FIGURE_WORDS]
    if len(words) < _MIN_CAUSE_WORDS:
        raise RoadmapError(
            f"abandon({name!r}) needs a reason that names the code- or hardware-level cause it "
            f"cannot help here, in words (e.g. 'bf16 rounding flips greedy argmax on CPU, so "
            f"token equality fails'); {reason!r} is only figures or a comparison, and a number "
            f"alone is not enough. If the implementation failed and may be retried, park() it."
        )
    return reason


@dataclass(slots=True)
class Roadmap:
    techniques: list[Technique] = field(default_factory=list)
    notes: str = ""  # the free-form "## Notes" section, verbatim

    def __post_init__(self) -> None:
        self.techniques = list(self.techniques)
        seen: set[str] = set()
        for technique in self.techniques:
            if technique.name in seen:
                raise RoadmapError(f"technique {technique.name!r} is listed twice")
            seen.add(technique.name)

    # -- queries ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [t.name for t in self.techniques]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _one_line(name) in self.names()

    def get(self, name: str) -> Technique:
        name = _one_line(name)
        for technique in self.techniques:
            if technique.name == name:
                return technique
        known = ", ".join(self.names()) or "none yet"
        raise RoadmapError(f"no technique {name!r} in the roadmap (known: {known}); add() it first")

    def statuses(self) -> dict[str, str]:
        return {t.name: t.status.value for t in self.techniques}

    def attempts(self) -> dict[str, int]:
        return {t.name: t.attempts for t in self.techniques}

    def next_todo(
        self, prefer: Sequence[str] = (), *, retry_parked: bool = False, max_attempts: int = 3
    ) -> Technique | None:
        """The next technique to try, or None when nothing is left.

        Todo techniques come first, in ``prefer`` order (e.g. skills that match the Evaluator's
        hints), then in table order. With ``retry_parked``, parked techniques tried fewer than
        ``max_attempts`` times follow, fewest attempts first.
        """
        rank = {_one_line(name): i for i, name in enumerate(prefer)}

        def key(item: tuple[int, Technique]) -> tuple[int, int, int, int]:
            order, t = item
            parked = t.status is Status.PARKED
            return (parked, rank.get(t.name, len(rank)), t.attempts if parked else 0, order)

        candidates = [
            (order, t)
            for order, t in enumerate(self.techniques)
            if t.status is Status.TODO
            or (retry_parked and t.status is Status.PARKED and t.attempts < max_attempts)
        ]
        return min(candidates, key=key)[1] if candidates else None

    # -- transitions -----------------------------------------------------------------------
    def add(self, name: str, why: str) -> Technique:
        name = _one_line(name)
        if name in self:
            raise RoadmapError(f"technique {name!r} is already in the roadmap ({self.get(name)})")
        technique = Technique(name, Status.TODO, why)
        self.techniques.append(technique)
        return technique

    def start(self, name: str, round: int, why: str | None = None) -> Technique:
        """Mark ``name`` in progress for ``round``; an unknown name is added if ``why`` is given."""
        if name not in self and why is not None:
            self.add(name, why)
        current = self._require(name, "start", _STARTABLE)
        return self._put(
            current,
            status=Status.IN_PROGRESS,
            why=why or current.why,
            last_round=round,
            attempts=current.attempts + 1,
        )

    def done(self, name: str, why: str | None = None, round: int | None = None) -> Technique:
        current = self._require(name, "mark done", _FINISHABLE)
        return self._put(current, status=Status.DONE, why=why or current.why, last_round=round)

    def park(self, name: str, reason: str, round: int | None = None) -> Technique:
        """The implementation failed (or did not move the metric for an implementation reason)."""
        current = self._require(name, "park", _PARKABLE)
        if not _one_line(reason):
            raise RoadmapError(f"park({current.name!r}) needs a reason: what failed, in a line")
        return self._put(current, status=Status.PARKED, why=reason, last_round=round)

    def abandon(self, name: str, reason: str, round: int | None = None) -> Technique:
        """It cannot help here, for a named code- or hardware-level reason (never only a figure)."""
        current = self._require(name, "abandon", _ABANDONABLE)
        reason = require_cause(current.name, reason)
        return self._put(current, status=Status.ABANDONED, why=reason, last_round=round)

    def _require(self, name: str, verb: str, allowed: Iterable[Status]) -> Technique:
        current = self.get(name)
        allowed = tuple(allowed)
        if current.status not in allowed:
            states = " or ".join(s.value for s in allowed)
            raise RoadmapError(
                f"cannot {verb} {current.name!r}: it is {current.status.value} "
                f"({current.why}); only a technique that is {states} can be"
            )
        return current

    def _put(
        self,
        current: Technique,
        *,
        status: Status,
        why: str,
        last_round: int | None,
        attempts: int | None = None,
    ) -> Technique:
        updated = Technique(
            current.name,
            status,
            why,
            current.attempts if attempts is None else attempts,
            current.last_round if last_round is None else last_round,
        )
        index = self.techniques.index(current)
        self.techniques[index] = updated
        return updated

    # -- markdown --------------------------------------------------------------------------
    def to_markdown(self) -> str:
        rows = [
            "| "
            + " | ".join(
                _escape(cell)
                for cell in (
                    t.name,
                    t.status.value,
                    t.why,
                    str(t.attempts),
                    _NO_ROUND if t.last_round is None else str(t.last_round),
                )
            )
            + " |"
            for t in self.techniques
        ]
        table = "\n".join([_HEADER, _SEPARATOR, *rows])
        return f"{_TITLE}\n\n{_INTRO}\n\n{table}\n\n## Notes\n\n{self.notes}"

    @classmethod
    def from_markdown(cls, text: str) -> Roadmap:
        lines = text.split("\n")
        header = next((i for i, line in enumerate(lines) if line.strip() == _HEADER), None)
        if header is None:
            raise RoadmapError(
                f"memory.md has no roadmap table: expected the header line {_HEADER!r}; restore "
                f"it (an empty roadmap is that line and {_SEPARATOR!r})"
            )
        if header + 1 >= len(lines) or not _SEPARATOR_RE.match(lines[header + 1].strip()):
            raise RoadmapError(
                f"memory.md line {header + 2}: expected the table separator {_SEPARATOR!r}"
            )
        techniques: list[Technique] = []
        end = header + 2
        while end < len(lines) and lines[end].strip().startswith("|"):
            techniques.append(_parse_row(lines[end], end + 1))
            end += 1
        table_end = sum(len(line) + 1 for line in lines[:end])
        notes = ""
        match = _NOTES_RE.search(text, min(table_end, len(text)))
        if match:
            notes = text[match.end() :]
            notes = notes[1:] if notes.startswith("\n") else notes  # the heading's line break
            notes = notes[1:] if notes.startswith("\n") else notes  # the blank line after it
        try:
            return cls(techniques, notes)
        except RoadmapError as error:
            raise RoadmapError(f"memory.md: {error}") from None


def _escape(cell: str) -> str:
    return cell.replace("\\", "\\\\").replace("|", "\\|")


def _split_row(line: str) -> list[str]:
    """Cells of ``| a | b |``, honouring ``\\|`` and ``\\\\`` escapes."""
    cells: list[str] = []
    current: list[str] = []
    chars = iter(line.strip())
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
        elif char == "|":
            cells.append("".join(current))
            current = []
        else:
            current.append(char)
    cells.append("".join(current))
    return [cell.strip() for cell in cells[1:-1]]  # outside the leading and trailing pipes


def _parse_row(line: str, number: int) -> Technique:
    cells = _split_row(line)
    if len(cells) != len(_COLUMNS):
        raise RoadmapError(
            f"memory.md line {number}: expected {len(_COLUMNS)} cells "
            f"({', '.join(_COLUMNS)}), found {len(cells)}; escape a '|' inside a cell as '\\|'"
        )
    name, status, why, attempts, last_round = cells
    if status not in {s.value for s in Status}:
        valid = ", ".join(s.value for s in Status)
        raise RoadmapError(f"memory.md line {number}: status {status!r} is not one of {valid}")
    try:
        return Technique(
            name,
            Status(status),
            why,
            int(attempts),
            None if last_round == _NO_ROUND else int(last_round),
        )
    except ValueError as error:
        raise RoadmapError(f"memory.md line {number}: {error}") from None


class RoadmapStore:
    """``memory.md`` on disk: each change is read, applied and written back atomically."""

    def __init__(self, path: Path, *, guard: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self._guard = guard  # raises when this process may not write (e.g. a read-only workspace)

    def read(self) -> Roadmap:
        with open(self.path, encoding="utf-8", newline="") as file:
            return Roadmap.from_markdown(file.read())

    def write(self, roadmap: Roadmap) -> None:
        if self._guard is not None:
            self._guard()
        write_atomic(self.path, roadmap.to_markdown())

    def statuses(self) -> dict[str, str]:
        return self.read().statuses()

    def attempts(self) -> dict[str, int]:
        return self.read().attempts()

    def next_todo(
        self, prefer: Sequence[str] = (), *, retry_parked: bool = False, max_attempts: int = 3
    ) -> Technique | None:
        return self.read().next_todo(prefer, retry_parked=retry_parked, max_attempts=max_attempts)

    def add(self, name: str, why: str) -> Technique:
        return self._change(lambda roadmap: roadmap.add(name, why))

    def start(self, name: str, round: int, why: str | None = None) -> Technique:
        return self._change(lambda roadmap: roadmap.start(name, round, why))

    def done(self, name: str, why: str | None = None, round: int | None = None) -> Technique:
        return self._change(lambda roadmap: roadmap.done(name, why, round))

    def park(self, name: str, reason: str, round: int | None = None) -> Technique:
        return self._change(lambda roadmap: roadmap.park(name, reason, round))

    def abandon(self, name: str, reason: str, round: int | None = None) -> Technique:
        return self._change(lambda roadmap: roadmap.abandon(name, reason, round))

    def _change(self, change: Callable[[Roadmap], Technique]) -> Technique:
        roadmap = self.read()
        technique = change(roadmap)
        self.write(roadmap)
        return technique


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a kill at any moment leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.vibeserve-tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)

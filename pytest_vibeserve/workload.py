"""A workload ready to run: the requests, how they arrive, and what the reference says they give.

The expected outputs stay in the parent process; only ``requests`` ever reach an engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_vibeserve.contract import Request
from pytest_vibeserve.reference import ReferenceOutput


@dataclass(frozen=True, slots=True)
class Workload:
    name: str  # unique within a session: runs are cached per (engine, workload name)
    requests: tuple[Request, ...]
    expected: dict[str, ReferenceOutput]
    concurrency: int | None = None  # at most this many in flight (closed loop); None: all at once
    arrival_offsets_s: tuple[float, ...] | None = None  # open loop: send times after the start
    warmup: tuple[Request, ...] = ()  # run once per engine before any timed run, never measured
    stats: dict[str, Any] = field(default_factory=dict)  # reported beside the results
    # request id -> facts the checks need beside the expected tokens (a sentinel the output must
    # echo, the request's kind): kept in the parent, never sent to an engine nor reported
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [r.request_id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise ValueError(f"workload {self.name!r}: duplicate request ids")
        if missing := set(ids) - set(self.expected):
            raise ValueError(f"workload {self.name!r}: no expected output for {sorted(missing)}")
        if self.arrival_offsets_s is not None and len(self.arrival_offsets_s) != len(ids):
            raise ValueError(f"workload {self.name!r}: one arrival offset per request")

    @property
    def output_tokens(self) -> int:
        return sum(len(self.expected[r.request_id].tokens) for r in self.requests)

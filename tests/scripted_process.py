"""A scripted stand-in for a started ``EngineProcess``, to test ``EngineDriver`` without a worker.

Imported by the serve tests as ``tests.scripted_process`` (pytest's importlib mode resolves the
``tests`` namespace package from the rootdir).
"""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from pytest_vibeserve.contract import AudioChunk, Event, ImageRequest, Request
from pytest_vibeserve.runner import Limits

# what a test submits: text requests, image requests or audio chunks
Submitted = TypeVar("Submitted", Request, ImageRequest, AudioChunk)


class ScriptedProcess(Generic[Submitted]):
    """Stands in for a started ``EngineProcess``: ``script`` maps each request or audio chunk
    submitted to the events the engine answers with, which the next ``poll`` returns.

    Failures name it ``[scripted]`` and carry the log tail ``"scripted log"``; its step timeout
    is 1 s (of the driver's clock: see ``stepping_clock``).
    """

    def __init__(self, script: Callable[[Submitted], list[Event]]) -> None:
        self.script = script
        self.name = "scripted"
        self.limits = Limits(step_timeout_s=1.0)
        self.closed = False
        self.submitted: list[Submitted] = []  # in the order the driver submitted them
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def submit(self, request: Submitted) -> None:
        self._answer(request)

    def submit_audio(self, chunk: Submitted) -> None:
        self._answer(chunk)

    def _answer(self, item: Submitted) -> None:
        self.submitted.append(item)
        for event in self.script(item):
            self._events.put(event)

    def poll(self, timeout: float) -> list[Event]:
        events = []
        while not self._events.empty():
            events.append(self._events.get())
        if not events:
            time.sleep(timeout)
        return events

    def close(self) -> None:
        self.closed = True

    def log_tail(self) -> str:
        return "scripted log"


def stepping_clock(step_s: float = 0.25) -> Callable[[], float]:
    """A clock that is ``step_s`` seconds later at every look, so that a driver's step timeout
    passes after a few polls of a silent engine instead of a real second."""
    ticks = itertools.count(step=step_s)
    return lambda: next(ticks)

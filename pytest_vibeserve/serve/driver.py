"""The engine side: one thread owns the engine's worker process and routes its events."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pytest_vibeserve.contract import Event, Request
from pytest_vibeserve.runner import EngineFailure, EngineProcess
from pytest_vibeserve.serve.errors import POLL_S

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    """One request between its HTTP handler (on the event loop) and the driver thread."""

    request: Request
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event | EngineFailure]
    emitted: int = 0

    def deliver(self, item: Event | EngineFailure) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server has stopped, nobody listens
            pass


class EngineDriver:
    """Owns a started ``EngineProcess`` from one thread and routes its events to the requests.

    After an ``EngineFailure`` (the process is then dead) every request in flight, and every one
    submitted later, receives that failure instead of events.
    """

    def __init__(self, process: EngineProcess, *, clock: Callable[[], float] = time.monotonic):
        self.process = process
        self.clock = clock
        self._inbox: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._in_flight: dict[str, _Pending] = {}
        self._lock = threading.Lock()  # orders a submission against the failure that ends all
        self._failure: EngineFailure | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._drive, name="vibeserve-driver", daemon=True)

    @property
    def failure(self) -> EngineFailure | None:
        return self._failure

    def __enter__(self) -> EngineDriver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join()

    async def generate(self, request: Request) -> AsyncIterator[Event]:
        """The engine's events for ``request`` up to its finished one; raises ``EngineFailure``.

        Closing the iterator early (a client that went away) does not stop the engine: the
        contract has no abort, so the driver keeps draining the request's events into a queue
        that nobody reads until the request finishes.
        """
        pending = _Pending(request, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            failure = self._failure
            if failure is None:
                self._inbox.put(pending)
        if failure is not None:
            pending.deliver(failure)
        while True:
            item = await pending.queue.get()
            if isinstance(item, EngineFailure):
                raise item
            yield item
            if item.finished:
                return

    def _drive(self) -> None:
        last_progress = self.clock()
        try:
            while not self._stopping.is_set():
                while not self._inbox.empty():
                    pending = self._inbox.get()
                    if not self._in_flight:
                        last_progress = self.clock()
                    self._in_flight[pending.request.request_id] = pending
                    self.process.submit(pending.request)
                events = self.process.poll(POLL_S)
                for event in events:
                    self._route(event)
                if events:
                    last_progress = self.clock()
                self._watch(last_progress)
        except EngineFailure as failure:
            self._fail(failure)
            # Dead already after a failure of its own; one that hangs or breaks the protocol is
            # not, and closing it can take seconds: the clients have their answer by then.
            self.process.close()

    def _route(self, event: Event) -> None:
        pending = self._in_flight.get(event.request_id)
        if pending is None:
            raise self._failure_of("protocol", f"event for a request not in flight: {event}")
        request = pending.request
        pending.emitted += len(event.token_ids)
        if pending.emitted > request.max_new_tokens:
            raise self._failure_of(
                "protocol",
                f"request {request.request_id!r} emitted {pending.emitted} tokens, over its "
                f"max_new_tokens={request.max_new_tokens}",
            )
        wants_logprobs = request.top_logprobs > 0
        if wants_logprobs and len(event.logprobs or ()) != len(event.token_ids):
            raise self._failure_of(
                "protocol",
                f"request {request.request_id!r} asked for top_logprobs but an event carries "
                f"{len(event.logprobs or ())} logprob dicts for {len(event.token_ids)} tokens; "
                "send one per emitted token",
            )
        if event.finished:
            del self._in_flight[event.request_id]
        pending.deliver(event)

    def _watch(self, last_progress: float) -> None:
        # EngineProcess.poll watches memory only: the driver, which knows what is in flight,
        # enforces the step timeout.
        silent = self.clock() - last_progress
        limit = self.process.limits.step_timeout_s
        if self._in_flight and silent > limit:
            raise self._failure_of(
                "hang",
                f"no event for {silent:.1f} s with {len(self._in_flight)} request(s) in flight "
                f"(step timeout {limit:g} s)",
            )

    def _failure_of(self, kind: str, message: str) -> EngineFailure:
        return EngineFailure(kind, f"[{self.process.name}] {message}", self.process.log_tail())

    def _fail(self, failure: EngineFailure) -> None:
        with self._lock:
            self._failure = failure
        while not self._inbox.empty():
            self._inbox.get().deliver(failure)
        for pending in self._in_flight.values():
            pending.deliver(failure)
        self._in_flight.clear()

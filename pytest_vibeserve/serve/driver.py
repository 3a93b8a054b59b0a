"""The engine side: one thread owns the engine's worker process and routes its events.

Text requests are routed by request id to the handler awaiting them (``generate``), and so are
image requests (``generate_image``: one finished event each, checked by ``image_problem``); audio
streams by stream id (``open_stream``): each chunk a stream submits must be answered by exactly one
event, in order, as the contract says. An event that breaks these rules fails the engine.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_vibeserve.contract import (
    AudioChunk,
    Event,
    ImageRequest,
    Request,
    image_problem,
    transcript_problem,
)
from pytest_vibeserve.runner import EngineFailure, EngineProcess
from pytest_vibeserve.serve.errors import POLL_S

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    """One request between its HTTP handler (on the event loop) and the driver thread."""

    request: Request | ImageRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event | EngineFailure]
    emitted: int = 0

    def deliver(self, item: Event | EngineFailure) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server has stopped, nobody listens
            pass


class AudioSession:
    """One audio stream between its handler (on the event loop) and the driver thread.

    ``submit`` queues the stream's chunks, in order, from the event loop; ``receive`` awaits the
    event answering the oldest chunk not yet answered. Once the final chunk's event has come the
    driver forgets the stream. ``abandon`` (a client that went away) closes the stream with an
    empty final chunk, so that the engine frees it, and drops its events from then on. ``queue``
    is the handler's: it may read it directly and put items of its own there (a client's error).
    """

    def __init__(self, driver: EngineDriver, stream_id: str) -> None:
        self.driver = driver
        self.stream_id = stream_id
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()  # events, failures, the handler's items
        self.submitted = 0  # chunks submitted (the next chunk's index)
        self.finished = False  # the final chunk is submitted
        self.abandoned = False
        self.awaiting: deque[AudioChunk] = deque()  # the driver thread's: chunks not answered

    def submit(self, pcm16: bytes, *, final: bool = False) -> AudioChunk:
        """Queue the stream's next chunk (whole 20 ms frames; only a final one may be empty)."""
        if self.finished:
            raise ValueError(f"stream {self.stream_id!r} is finished; it takes no more chunks")
        chunk = AudioChunk(self.stream_id, self.submitted, bytes(pcm16), final)
        self.submitted += 1
        self.finished = final
        self.driver._submit(self, chunk)
        return chunk

    async def receive(self) -> Event:
        """The next event of the stream; raises the ``EngineFailure`` that ended the engine."""
        item = await self.queue.get()
        if isinstance(item, EngineFailure):
            raise item
        if not isinstance(item, Event):
            raise TypeError(f"stream {self.stream_id!r}: {item!r} on the queue is no event")
        return item

    def abandon(self) -> None:
        """Nobody listens any more: close the stream with an empty final chunk if it is open
        (the engine holds it until then) and let the driver drop its events."""
        self.abandoned = True
        if self.submitted and not self.finished:
            self.submit(b"", final=True)

    def deliver(self, item: Event | EngineFailure) -> None:
        if self.abandoned:
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server has stopped, nobody listens
            pass


@dataclass(slots=True)
class _Chunk:
    """One chunk on its way from a stream's handler to the driver thread."""

    stream: AudioSession
    chunk: AudioChunk = field(repr=False)

    def deliver(self, item: Event | EngineFailure) -> None:
        self.stream.deliver(item)


class EngineDriver:
    """Owns a started ``EngineProcess`` from one thread and routes its events to the requests.

    After an ``EngineFailure`` (the process is then dead) every request and audio stream in
    flight, and every one submitted later, receives that failure instead of events.
    """

    def __init__(self, process: EngineProcess, *, clock: Callable[[], float] = time.monotonic):
        self.process = process
        self.clock = clock
        self._inbox: queue.SimpleQueue[_Pending | _Chunk] = queue.SimpleQueue()
        self._in_flight: dict[str, _Pending] = {}
        self._streams: dict[str, AudioSession] = {}  # open audio streams, by stream id
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
        pending = self._enqueue(request)
        while True:
            item = await pending.queue.get()
            if isinstance(item, EngineFailure):
                raise item
            yield item
            if item.finished:
                return

    async def generate_image(self, request: ImageRequest) -> Event:
        """The one finished event answering ``request`` (checked by ``image_problem``); raises
        ``EngineFailure``. A caller that stops waiting leaves the engine working: the contract has
        no abort, and the driver drops the event when it comes."""
        item = await self._enqueue(request).queue.get()
        if isinstance(item, EngineFailure):
            raise item
        return item

    def _enqueue(self, request: Request | ImageRequest) -> _Pending:
        """Hand ``request`` to the driver thread (or, after a failure, the failure to it)."""
        pending = _Pending(request, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            failure = self._failure
            if failure is None:
                self._inbox.put(pending)
        if failure is not None:
            pending.deliver(failure)
        return pending

    def open_stream(self, stream_id: str) -> AudioSession:
        """A new audio stream (call it on the event loop); its first chunk opens it."""
        return AudioSession(self, stream_id)

    def _submit(self, stream: AudioSession, chunk: AudioChunk) -> None:
        with self._lock:
            failure = self._failure
            if failure is None:
                self._inbox.put(_Chunk(stream, chunk))
        if failure is not None:
            stream.deliver(failure)

    def _busy(self) -> bool:
        return bool(self._in_flight) or any(s.awaiting for s in self._streams.values())

    def _drive(self) -> None:
        last_progress = self.clock()
        try:
            while not self._stopping.is_set():
                while not self._inbox.empty():
                    item = self._inbox.get()
                    if not self._busy():
                        last_progress = self.clock()
                    if isinstance(item, _Chunk):
                        self._streams.setdefault(item.chunk.stream_id, item.stream)
                        item.stream.awaiting.append(item.chunk)
                        self.process.submit_audio(item.chunk)
                        continue
                    self._in_flight[item.request.request_id] = item
                    self.process.submit(item.request)
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
        if event.request_id in self._streams:
            self._route_audio(event)
            return
        pending = self._in_flight.get(event.request_id)
        if pending is None:
            raise self._failure_of("protocol", f"event for a request not in flight: {event}")
        request = pending.request
        if isinstance(request, ImageRequest):  # the rule of EngineProcess.run: one event, whole
            if (problem := image_problem(request, event)) is not None:
                raise self._failure_of("protocol", problem)
            del self._in_flight[event.request_id]
            pending.deliver(event)
            return
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

    def _route_audio(self, event: Event) -> None:
        """The rules of ``EngineProcess.run_streams``: one event per chunk, in order."""
        stream = self._streams[event.request_id]
        sid = stream.stream_id
        if not stream.awaiting:
            raise self._failure_of(
                "protocol", f"stream {sid!r}: an event with no chunk awaiting an answer: {event}"
            )
        chunk = stream.awaiting[0]
        if (problem := transcript_problem(chunk, event)) is not None:
            raise self._failure_of("protocol", problem)
        stream.awaiting.popleft()
        if chunk.final:
            del self._streams[sid]
        stream.deliver(event)

    def _watch(self, last_progress: float) -> None:
        # EngineProcess.poll watches memory only: the driver, which knows what is in flight,
        # enforces the step timeout.
        silent = self.clock() - last_progress
        limit = self.process.limits.step_timeout_s
        if self._busy() and silent > limit:
            streams = sum(1 for s in self._streams.values() if s.awaiting)
            raise self._failure_of(
                "hang",
                f"no event for {silent:.1f} s with {len(self._in_flight)} request(s) and "
                f"{streams} audio stream(s) in flight (step timeout {limit:g} s)",
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
        for stream in self._streams.values():
            stream.deliver(failure)
        self._streams.clear()

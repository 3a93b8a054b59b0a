"""Runs an engine directory in a worker subprocess and drives a workload through it.

The parent owns the clock: it sends each request at its scheduled time and stamps every token when
the event batch carrying it arrives, so an engine cannot fake its own timing. A crash, a hang, a
memory blow-up or a protocol violation becomes an ``EngineFailure`` carrying the log tail; the
worker is always killed with its whole process group.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vibeserve.channel import Channel, ChannelClosed
from pytest_vibeserve.contract import (
    FORWARD_COUNTER,
    AudioChunk,
    EngineSpec,
    Event,
    ImageRequest,
    Request,
    image_problem,
    transcript_problem,
)
from pytest_vibeserve.profiling import EngineProfile

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_CHARS = 4000
# Variables an engine may inherit; everything else (API keys, tokens, cloud credentials) is dropped.
INHERITED_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    # which accelerator the engine may use, and where its runtime lives (no secrets)
    "CUDA_VISIBLE_DEVICES",
    "CUDA_HOME",
    "LD_LIBRARY_PATH",
)
COMPILE_CACHE_ROOT = "vibeserve-compile"  # under the system temp dir, one folder per engine code


def stream_chunks(streams: Sequence[Any], pace: float) -> tuple[list[str], dict[str, list]]:
    """The streams' ids and chunks, checked: unique ids, exactly one final chunk, last."""
    if pace < 0:
        raise ValueError(f"pace must be >= 0 (0: as fast as answers come), got {pace}")
    ids = [s.stream_id for s in streams]
    if len(set(ids)) != len(ids):
        raise ValueError("stream ids in one run must be unique")
    chunks = {s.stream_id: list(s.chunks()) for s in streams}
    for sid, items in chunks.items():
        if not items or not items[-1].final or any(c.final for c in items[:-1]):
            raise ValueError(f"stream {sid!r}: its chunks must end with exactly one final")
    return ids, chunks


class EngineFailure(Exception):
    """The engine did not do its job; ``kind`` is crash, hang, oom, load or protocol."""

    def __init__(self, kind: str, message: str, log_tail: str = "") -> None:
        self.kind = kind
        self.log_tail = log_tail
        text = f"engine {kind}: {message}"
        if log_tail:
            text += f"\n--- engine log (last {LOG_TAIL_CHARS} chars) ---\n{log_tail}"
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class Limits:
    load_timeout_s: float = 600.0
    step_timeout_s: float = 120.0  # the longest silence allowed while requests are in flight
    memory_bytes: int | None = 16 << 30  # resident set size of the worker


@dataclass(frozen=True, slots=True)
class PartialRecord:
    """The answer to one audio chunk, stamped by the parent."""

    chunk: int
    kind: str  # "partial" or "final"
    token_ids: tuple[int, ...]
    sent_at: float  # when the chunk was sent, perf_counter s
    arrived_at: float  # when its answer arrived

    @property
    def latency_s(self) -> float:
        return self.arrived_at - self.sent_at


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    prompt_len: int
    sent_at: float  # parent perf_counter seconds
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # arrival of each token, perf_counter s
    logprobs: list[dict[int, float]] | None = None
    payloads: list[dict[str, Any]] = field(default_factory=list)
    finished_at: float | None = None
    partials: list[PartialRecord] = field(default_factory=list)  # audio streams: one per chunk
    audio_samples: int = 0  # audio streams: samples sent


@dataclass(slots=True)
class RunResult:
    engine: str
    records: dict[str, RequestRecord]
    started_at: float
    ended_at: float
    peak_rss_bytes: int
    counters: dict[str, int]  # the engine's cumulative counters after the run
    forward_calls: int | None = None  # model forwards during this run (None: not counted)
    counters_before: dict[str, int] = field(default_factory=dict)  # the same, before the run

    def counter_delta(self, name: str) -> int | None:
        """How much an engine counter grew during this run; None if it is not reported."""
        if name not in self.counters:
            return None
        return self.counters[name] - self.counters_before.get(name, 0)

    @property
    def outputs(self) -> dict[str, list[int]]:
        return {rid: record.token_ids for rid, record in self.records.items()}

    @property
    def wall_s(self) -> float:
        return self.ended_at - self.started_at


def compile_cache_dir(engine_dir: Path) -> Path:
    """Where an engine's torch.compile artefacts (inductor, triton) live across its restarts: a
    folder keyed by the engine's own code (every file in its directory but the cache-free
    ``__pycache__``), so a restart of the same engine starts warm, as a deployed server's would,
    while no other engine's code reads or writes it. Not under the vibeserve cache, whose
    reference outputs an engine must not be pointed at."""
    digest = hashlib.sha256()
    root = Path(engine_dir)
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    user = os.getuid() if hasattr(os, "getuid") else 0
    base = Path(tempfile.gettempdir()) / f"{COMPILE_CACHE_ROOT}-{user}"
    return base / digest.hexdigest()[:20]


def scrubbed_env(threads: int, home: Path, compile_cache: Path | None = None) -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    thread_count = str(threads)
    if compile_cache is not None:
        env.update(
            TORCHINDUCTOR_CACHE_DIR=str(compile_cache / "inductor"),
            TRITON_CACHE_DIR=str(compile_cache / "triton"),
        )
    env.update(
        HOME=str(home),
        TMPDIR=str(home),
        HF_HOME=str(home / "hf"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONHASHSEED="0",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=str(PROJECT_ROOT),
        OMP_NUM_THREADS=thread_count,
        MKL_NUM_THREADS=thread_count,
        OPENBLAS_NUM_THREADS=thread_count,
    )
    return env


def _read_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return 0


class EngineProcess:
    """One engine directory hosted by one worker process, reused across runs."""

    def __init__(
        self,
        engine_dir: Path,
        spec: EngineSpec,
        *,
        name: str | None = None,
        limits: Limits = Limits(),
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.engine_dir = Path(engine_dir).resolve()
        self.spec = spec
        self.name = name or self.engine_dir.name
        self.limits = limits
        self.clock = clock
        self.peak_rss_bytes = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
        self._home: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None
        self._failure: EngineFailure | None = None
        self.load_s: float | None = None
        self.capabilities: frozenset[str] = frozenset()  # what the engine says it honours

    def __enter__(self) -> EngineProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if not (self.engine_dir / "engine.py").is_file():
            raise EngineFailure(
                "load",
                f"{self.engine_dir} has no engine.py; an engine directory defines "
                "create_engine(spec) in engine.py (see pytest_vibeserve/contract.py)",
            )
        self._home = tempfile.TemporaryDirectory(prefix="vibeserve-worker-")
        home = Path(self._home.name)
        self._log_path = home / "engine.log"
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest_vibeserve.worker",
                    str(child_read),
                    str(child_write),
                ],
                cwd=self.engine_dir,
                env=scrubbed_env(self.spec.threads, home, compile_cache_dir(self.engine_dir)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(child_read, child_write),
                start_new_session=True,
            )
        os.close(child_read)
        os.close(child_write)
        self._channel = Channel(parent_read, parent_write)
        started = self.clock()
        self._send({"op": "init", "spec": self.spec.to_dict()})
        ready = self._wait_for("ready", self.limits.load_timeout_s, phase="load")
        self.load_s = self.clock() - started
        self.capabilities = frozenset(ready.get("capabilities") or ())

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            try:
                self._channel.send({"op": "shutdown"})
                self._process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._home is not None:
            self._home.cleanup()
            self._home = None

    def _kill(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._process.wait()

    def log_tail(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_bytes()[-LOG_TAIL_CHARS:]
        return text.decode(errors="replace")

    # -- driving ---------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        self._send({"op": "counters"})
        message = self._wait_for("counters", self.limits.step_timeout_s, phase="counters")
        counters = message.get("counters")
        if not isinstance(counters, dict):
            raise self._fail("protocol", f"counters() returned {counters!r}, not a dict")
        return {str(k): int(v) for k, v in counters.items()}

    def run(
        self,
        requests: Sequence[Request | ImageRequest],
        *,
        concurrency: int | None = None,
        arrival_offsets_s: Sequence[float] | None = None,
    ) -> RunResult:
        """Send ``requests`` (at most ``concurrency`` in flight, none before its arrival offset).

        Text ``Request``s stream tokens; an ``ImageRequest`` is answered by one image event."""
        if self._failure is not None:
            raise self._failure
        if arrival_offsets_s is not None and len(arrival_offsets_s) != len(requests):
            raise ValueError("arrival_offsets_s needs one offset per request")
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids in one run must be unique")
        by_id = {r.request_id: r for r in requests}
        counters_before = self.counters()
        limit = concurrency or len(requests)
        offsets = list(arrival_offsets_s or [0.0] * len(requests))
        waiting = list(range(len(requests)))
        records: dict[str, RequestRecord] = {}
        in_flight: set[str] = set()
        started = self.clock()
        last_progress = started
        self.peak_rss_bytes = 0
        while waiting or in_flight:
            now = self.clock()
            while waiting and len(in_flight) < limit and started + offsets[waiting[0]] <= now:
                request = requests[waiting.pop(0)]
                prompt_len = len(getattr(request, "prompt_token_ids", ()))
                records[request.request_id] = RequestRecord(
                    request.request_id, prompt_len, self.clock()
                )
                self._send(self._wire(request))
                in_flight.add(request.request_id)
                last_progress = self.clock()
            timeout = 0.05
            if waiting and len(in_flight) < limit:
                timeout = min(timeout, max(0.0, started + offsets[waiting[0]] - self.clock()))
            messages = self._receive(timeout)
            arrived = self.clock()
            for message in messages:
                if message.get("type") != "events":
                    raise self._fail("protocol", f"unexpected message during a run: {message!r}")
                for raw in message.get("events", []):
                    event = self._parse_event(raw)
                    self._record(event, records, in_flight, by_id, arrived)
                last_progress = arrived
            self._watch(in_flight, last_progress)
        return self._result(records, started, counters_before)

    def _wire(self, request: Request | ImageRequest) -> dict[str, Any]:
        """The command that sends the request: a ``response_format`` reaches only an engine that
        lists that capability (the contract's promise); one that does not decodes
        unconstrained."""
        data = request.to_dict()
        if isinstance(request, ImageRequest):
            return {"op": "image", "request": data}
        if data.get("response_format") is not None and "response_format" not in self.capabilities:
            data["response_format"] = None
        return {"op": "add", "request": data}

    def run_streams(self, streams: Sequence[Any], *, pace: float = 1.0) -> RunResult:
        """Push audio streams chunk by chunk; every chunk must be answered by one event.

        ``streams``: objects with ``stream_id``, ``chunks()`` (the ``AudioChunk`` list, the last
        one final), ``chunk_seconds`` and ``start_offset_s``. ``pace`` 1 sends each chunk when
        its audio has been recorded (real time: chunk k at offset + (k + 1) chunk durations), 2
        twice as fast, and 0 sends a stream's first chunk at once and each next one as soon as
        the previous one is answered (as fast as the engine goes).
        """
        if self._failure is not None:
            raise self._failure
        ids, chunks = stream_chunks(streams, pace)
        counters_before = self.counters()
        started = self.clock()
        offsets = {s.stream_id: float(s.start_offset_s) for s in streams}
        interval = {s.stream_id: s.chunk_seconds / pace if pace else 0.0 for s in streams}
        # a chunk is sent once its audio is recorded: chunk k at offset + (k + 1) intervals
        due = {sid: started + offsets[sid] + interval[sid] for sid in ids}
        next_index = dict.fromkeys(ids, 0)
        awaiting: dict[str, list[tuple[AudioChunk, float]]] = {sid: [] for sid in ids}
        records: dict[str, RequestRecord] = {}
        last_progress = started
        self.peak_rss_bytes = 0
        while any(r.finished_at is None for r in records.values()) or len(records) < len(ids):
            now = self.clock()
            for sid in ids:
                index = next_index[sid]
                if index >= len(chunks[sid]) or due[sid] > now:
                    continue
                if not pace and awaiting[sid]:  # closed loop: wait for the previous answer
                    continue
                chunk = chunks[sid][index]
                if not any(awaiting.values()):  # the silence watch starts with the first wait
                    last_progress = self.clock()
                sent = self.clock()
                record = records.setdefault(sid, RequestRecord(sid, 0, sent))
                record.audio_samples += chunk.num_samples
                self._send({"op": "audio", "chunk": chunk.to_dict()})
                awaiting[sid].append((chunk, sent))
                next_index[sid] = index + 1
                due[sid] = started + offsets[sid] + (index + 2) * interval[sid]
            pending = [due[sid] for sid in ids if next_index[sid] < len(chunks[sid])]
            timeout = 0.05
            if pending and pace:
                timeout = min(timeout, max(0.0, min(pending) - self.clock()))
            messages = self._receive(timeout)
            arrived = self.clock()
            for message in messages:
                if message.get("type") != "events":
                    raise self._fail("protocol", f"unexpected message during a run: {message!r}")
                for raw in message.get("events", []):
                    self._record_partial(self._parse_event(raw), records, awaiting, arrived)
                last_progress = arrived
            self._watch({sid for sid in ids if awaiting[sid]}, last_progress)
        return self._result(records, started, counters_before)

    def _result(
        self, records: dict[str, RequestRecord], started: float, counters_before: dict[str, int]
    ) -> RunResult:
        """A finished run: its end, the engine's counters now and the forwards it took."""
        ended = self.clock()
        counters = self.counters()
        before, after = counters_before.get(FORWARD_COUNTER), counters.get(FORWARD_COUNTER)
        forwards = after - before if before is not None and after is not None else None
        return RunResult(
            self.name,
            records,
            started,
            ended,
            self.peak_rss_bytes,
            counters,
            forwards,
            counters_before,
        )

    def _record_partial(
        self,
        event: Event,
        records: dict[str, RequestRecord],
        awaiting: dict[str, list[tuple[AudioChunk, float]]],
        arrived: float,
    ) -> None:
        sid = event.request_id
        if sid not in awaiting:
            raise self._fail("protocol", f"event for unknown stream {sid!r}: {event}")
        if not awaiting[sid]:
            raise self._fail(
                "protocol", f"stream {sid!r}: an event with no chunk awaiting an answer: {event}"
            )
        chunk, sent = awaiting[sid][0]
        if (problem := transcript_problem(chunk, event)) is not None:
            raise self._fail("protocol", problem)
        kind = "final" if chunk.final else "partial"
        awaiting[sid].pop(0)
        record = records[sid]
        record.partials.append(
            PartialRecord(chunk.index, kind, tuple(event.token_ids), sent, arrived)
        )
        if chunk.final:
            record.token_ids = list(event.token_ids)
            record.finished_at = arrived

    # -- incremental driving (a server in front of the engine) -------------------------------
    def submit(self, request: Request | ImageRequest) -> None:
        """Queue one request now; its events come back through ``poll``."""
        if self._failure is not None:
            raise self._failure
        self._send(self._wire(request))

    def submit_audio(self, chunk: AudioChunk) -> None:
        """Queue one audio chunk now; the event answering it comes back through ``poll``."""
        if self._failure is not None:
            raise self._failure
        self._send({"op": "audio", "chunk": chunk.to_dict()})

    def poll(self, timeout: float) -> list[Event]:
        """The events that arrived within ``timeout`` seconds (possibly none), unchecked against
        any request list: the caller owns request bookkeeping. Watches memory as ``run`` does."""
        if self._failure is not None:
            raise self._failure
        events: list[Event] = []
        for message in self._receive(timeout):
            if message.get("type") != "events":
                raise self._fail("protocol", f"unexpected message while serving: {message!r}")
            events.extend(self._parse_event(raw) for raw in message.get("events", []))
        self._watch(set(), self.clock())
        return events

    def profile(
        self,
        requests: Sequence[Request],
        *,
        concurrency: int | None = None,
        tool: str = "auto",
        vocab_size: int | None = None,
        top: int = 15,
    ) -> tuple[RunResult, EngineProfile]:
        """``run`` with the engine's calls under the worker's profiler (auto, torch or cprofile).

        Only the profile's JSON summary comes back, and it is checked field by field.
        """
        if self._failure is not None:
            raise self._failure
        self._send({"op": "profile_start", "tool": tool, "vocab_size": vocab_size, "top": top})
        self._wait_for("profile_started", self.limits.step_timeout_s, phase="profile")
        result = self.run(requests, concurrency=concurrency)
        self._send({"op": "profile_stop"})
        message = self._wait_for("profile", self.limits.step_timeout_s, phase="profile")
        try:
            return result, EngineProfile.from_dict(message.get("profile"))
        except ValueError as error:
            raise self._fail("protocol", f"unreadable profile from the worker: {error}") from None

    # -- internals -------------------------------------------------------------------------
    def _record(
        self,
        event: Event,
        records: dict[str, RequestRecord],
        in_flight: set[str],
        by_id: dict[str, Request | ImageRequest],
        arrived: float,
    ) -> None:
        rid = event.request_id
        if rid not in in_flight:
            state = "finished" if rid in records else "unknown"
            raise self._fail("protocol", f"event for {state} request {rid!r}: {event}")
        record = records[rid]
        if isinstance(request := by_id[rid], ImageRequest):
            if (problem := image_problem(request, event)) is not None:
                raise self._fail("protocol", problem)
            record.payloads.append(event.payload)
            record.finished_at = arrived
            in_flight.discard(rid)
            return
        record.token_ids.extend(event.token_ids)
        record.token_times.extend([arrived] * len(event.token_ids))
        if event.logprobs is not None:
            if len(event.logprobs) != len(event.token_ids):
                raise self._fail(
                    "protocol",
                    f"request {rid!r}: {len(event.logprobs)} logprob dicts for "
                    f"{len(event.token_ids)} tokens; send one per emitted token",
                )
            record.logprobs = (record.logprobs or []) + event.logprobs
        if event.payload is not None:
            record.payloads.append(event.payload)
        limit = by_id[rid].max_new_tokens
        if len(record.token_ids) > limit:
            raise self._fail(
                "protocol",
                f"request {rid!r} emitted {len(record.token_ids)} tokens, over its "
                f"max_new_tokens={limit}",
            )
        if event.finished:
            record.finished_at = arrived
            in_flight.discard(rid)

    def _parse_event(self, raw: Any) -> Event:
        try:
            return Event.from_dict(raw)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise self._fail("protocol", f"malformed event {raw!r}: {error!r}") from None

    def _watch(self, in_flight: set[str], last_progress: float) -> None:
        rss = _read_rss(self._process.pid)
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        cap = self.limits.memory_bytes
        if cap is not None and rss > cap:
            raise self._fail(
                "oom",
                f"resident memory {rss / 2**30:.2f} GiB over the cap of {cap / 2**30:.2f} GiB",
            )
        silent = self.clock() - last_progress
        if in_flight and silent > self.limits.step_timeout_s:
            raise self._fail(
                "hang",
                f"no event for {silent:.1f} s with {len(in_flight)} request(s) in flight "
                f"(step timeout {self.limits.step_timeout_s:g} s)",
            )

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._channel.send(message)
        except OSError as error:
            raise self._fail("crash", self._exit_description(f"could not send ({error})")) from None

    def _receive(self, timeout: float) -> list[dict[str, Any]]:
        try:
            messages = self._channel.receive(timeout)
        except ChannelClosed:
            raise self._fail(
                "crash", self._exit_description("the worker closed its pipe")
            ) from None
        except ValueError as error:
            raise self._fail("protocol", f"unreadable message from the worker: {error}") from None
        for message in messages:
            if message.get("type") == "error":
                kind = "load" if message.get("phase") == "init" else "crash"
                raise self._fail(kind, f"{message.get('error')}\n{message.get('traceback', '')}")
        return messages

    def _wait_for(self, kind: str, timeout_s: float, *, phase: str) -> dict[str, Any]:
        deadline = self.clock() + timeout_s
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                fail_kind = "load" if phase == "load" else "hang"
                raise self._fail(fail_kind, f"no {kind!r} reply within {timeout_s:g} s ({phase})")
            for message in self._receive(min(remaining, 0.5)):
                if message.get("type") == kind:
                    return message
                raise self._fail("protocol", f"expected {kind!r}, got {message!r}")
            self.peak_rss_bytes = max(self.peak_rss_bytes, _read_rss(self._process.pid))
            if self._process.poll() is not None:
                raise self._fail("crash", self._exit_description(f"while waiting for {kind!r}"))

    def _exit_description(self, context: str) -> str:
        try:
            code = self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return f"{context}; the worker is still running"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (SIGKILL: often the kernel's OOM killer)" if name == "SIGKILL" else ""
            return f"{context}; the worker died from signal {name}{hint}"
        return f"{context}; the worker exited with status {code}"

    def _fail(self, kind: str, message: str) -> EngineFailure:
        self._kill()
        self._failure = EngineFailure(kind, f"[{self.name}] {message}", self.log_tail())
        return self._failure

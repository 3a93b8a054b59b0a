"""Drives an OpenAI-compatible server (vLLM, llama.cpp, ``vibeserve serve``) like an engine.

``EndpointEngine`` has the runner's interface (``start``, ``run``, ``counters``, ``close``) and
returns the same ``RunResult``: the parent process sends every request to
``/v1/completions`` at its scheduled time (token-id prompts, ``stream: true``, temperature 0) and
stamps each token when its SSE chunk is read, so a server is timed exactly as a worker is.

Token ids come back, in order of preference, as ``choices[i].token_ids`` (vLLM's and vibeserve's
``return_token_ids``), as ``logprobs.content[j].id`` (llama.cpp) or as ``"token_id:N"`` logprob
tokens (vLLM's ``return_tokens_as_token_ids``); ``start`` probes which one the server honours, and
asks for one logprob per token where only that carries ids. A server that returns text alone
fails at start with what to enable.

What fails a run, each with a precise reason: an unreachable server, a model it does not serve,
an HTTP error, a stream that stops sending for the step timeout (a hang), a stream that ends
without a finish_reason, more tokens than ``max_tokens``, ``finish_reason: length`` before
``max_tokens`` tokens, and a token count that disagrees with the server's own ``usage``.

Audio streams (``run_streams``, scenario streaming_asr) go to a ``vibeserve serve`` server's
WebSocket ``/v1/audio/stream``, one connection per stream, each chunk's PCM16 bytes as one binary
message at the runner's schedule (the last chunk inside ``{"type": "finish", "audio": BASE64}``);
every chunk must be answered, in order, by one ``partial`` (the last: ``final``) message carrying
the whole transcript's ``token_ids``. A server whose ``/v1/models`` card says
``"task": "transcription"`` is not probed with a text completion at start.

Image requests (``run`` with ``ImageRequest``s, scenario unified_multimodal) go to a ``vibeserve
serve`` server's ``/v1/images/generations`` (``response_format: b64_json``; the card says
``"task": "text-to-image"``), one POST each at the runner's schedule: the reply's PNG (lossless)
gives the pixels and its ``vibeserve`` field the rest of the payload, rebuilt as
``contract.image_event`` builds it and checked by ``image_problem``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pytest_vibeserve.contract import (
    AudioChunk,
    Event,
    ImageRequest,
    Request,
    image_problem,
    transcript_problem,
)
from pytest_vibeserve.runner import (
    EngineFailure,
    Limits,
    PartialRecord,
    RequestRecord,
    RunResult,
    stream_chunks,
)

ID_SOURCES = ("token_ids", "logprob_ids", "token_id_strings")
LLAMA_CPP = "llama.cpp"  # its native /completion: return_tokens, tokens_predicted
UNKNOWN_ID = -1  # a streamed position whose id the server did not send
PROBE_PROMPT = (1, 2, 3, 4)
AUDIO_STREAM_PATH = "/v1/audio/stream"  # vibeserve serve's WebSocket of one audio stream
TRANSCRIPTION_TASK = "transcription"  # a /v1/models card's "task" for a speech model
IMAGES_PATH = "/v1/images/generations"  # vibeserve serve's text-to-image route
IMAGE_TASK = "text-to-image"  # a /v1/models card's "task" for an image model
# an image reply's "vibeserve" fields beside the pixels, in contract.image_event's order
IMAGE_FIELDS = ("probe_shape", "probe_latent", "trajectory", "model_calls", "uncond_calls")


class Stream:
    """One streamed completion, read on its own thread; ``on_chunk`` gets (ids, logprobs, t)."""

    def __init__(
        self,
        engine: EndpointEngine,
        request: Request | ImageRequest,
        path: str,
        body: dict[str, Any],
    ) -> None:
        self.engine = engine
        self.request = request
        self.path = path
        self.body = body
        self.connection: http.client.HTTPConnection | None = None

    def lines(self) -> Iterator[tuple[str, float]]:
        engine = self.engine
        self.connection = engine.connect()
        payload = json.dumps(self.body)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        try:
            self.connection.request("POST", self.path, payload, headers)
            response = self.connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            raise engine.failure(
                "crash", f"request {self.request.request_id!r}: {error!r}"
            ) from None
        if response.status != 200:
            text = response.read().decode(errors="replace")[:2000]
            raise engine.failure(
                "protocol",
                f"request {self.request.request_id!r}: HTTP {response.status} from "
                f"{engine.base_url}{self.path}: {text}",
            )
        try:
            if not self.body.get("stream"):  # one JSON body: the whole completion at once
                yield response.read().decode(errors="replace"), engine.clock()
                yield "[DONE]", engine.clock()
                return
            for raw in response:
                line = raw.decode(errors="replace").strip()
                if line.startswith("data:"):
                    yield line[5:].strip(), engine.clock()
        except TimeoutError:
            raise engine.failure(
                "hang",
                f"request {self.request.request_id!r}: the stream sent nothing for "
                f"{engine.limits.step_timeout_s:g} s (timed out mid-stream)",
            ) from None
        except (OSError, http.client.HTTPException) as error:
            raise engine.failure(
                "crash", f"request {self.request.request_id!r}: the stream broke: {error!r}"
            ) from None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


class EndpointEngine:
    """An OpenAI-compatible server as an engine. ``pid``: the server's process, for its memory."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "endpoint",
        model: str | None = None,
        limits: Limits | None = None,
        pid: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        prompt_cache: bool = True,
    ) -> None:
        """``prompt_cache=False`` asks a llama.cpp server to prefill every prompt afresh (its
        slots otherwise keep the last prompts): the peers run so, as a repeat of a measured run
        must not find the previous one's prompts cached while the engines beside it start cold."""
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self._parts = parts
        self.name = name
        self.model = model
        self.prompt_cache = prompt_cache
        self.limits = limits or Limits()
        self.pid = pid
        self.clock = clock
        self.capabilities: frozenset[str] = frozenset()
        self.load_s: float | None = None
        self.peak_rss_bytes = 0
        self.id_source: str | None = None
        self.serves_audio = False  # the served model transcribes speech (it takes no text)
        self.serves_images = False  # the served model makes images (it takes no text)
        self._failure: EngineFailure | None = None
        self._streamed = True  # whether the run in progress streams

    def __enter__(self) -> EndpointEngine:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connection ----------------------------------------------------------------------------
    def connect(self) -> http.client.HTTPConnection:
        kind = (
            http.client.HTTPSConnection
            if self._parts.scheme == "https"
            else http.client.HTTPConnection
        )
        return kind(self._parts.hostname, self._parts.port, timeout=self.limits.step_timeout_s)

    def failure(self, kind: str, message: str) -> EngineFailure:
        self._failure = EngineFailure(kind, f"[{self.name} at {self.base_url}] {message}")
        return self._failure

    def _get_json(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        connection = self.connect()
        try:
            if body is None:
                connection.request("GET", path)
            else:
                headers = {"Content-Type": "application/json"}
                connection.request("POST", path, json.dumps(body), headers)
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            connection.close()
        try:
            return response.status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return response.status, text

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Check the server is up, serves the model, and returns token ids; learn how."""
        started = self.clock()
        try:
            status, listing = self._get_json("/v1/models")
        except OSError as error:
            raise self.failure(
                "load",
                f"cannot reach the server ({error.__class__.__name__}: {error}); start it, or fix "
                "the URL (--vibeserve-endpoint http://HOST:PORT)",
            ) from None
        if status != 200 or not isinstance(listing, dict):
            raise self.failure("load", f"GET /v1/models answered HTTP {status}: {listing!r}")
        cards = [m for m in listing.get("data", []) if isinstance(m, dict)]
        served = [str(m.get("id")) for m in cards]
        if self.model is None:
            if len(served) != 1:
                raise self.failure(
                    "load",
                    f"the server lists {len(served)} models ({', '.join(served) or 'none'}); name "
                    "one with --vibeserve-endpoint-model",
                )
            self.model = served[0]
        elif self.model not in served:
            raise self.failure(
                "load",
                f"the server does not serve model {self.model!r}; it serves "
                f"{', '.join(served) or 'nothing'} (fix --vibeserve-endpoint-model or the server)",
            )
        card = next(m for m in cards if str(m.get("id")) == self.model)
        if card.get("task") == TRANSCRIPTION_TASK:  # a completion would reach a speech engine
            self.serves_audio = True
        elif card.get("task") == IMAGE_TASK:  # ... or an image engine
            self.serves_images = True
        else:
            self.id_source = LLAMA_CPP if self._is_llama_cpp() else self._probe_id_source()
        self.load_s = self.clock() - started

    def _is_llama_cpp(self) -> bool:
        """llama.cpp's server: its ``/props`` lists default generation settings."""
        try:
            status, props = self._get_json("/props")
        except OSError:
            return False
        return status == 200 and isinstance(props, dict) and "default_generation_settings" in props

    @property
    def streams_every_id(self) -> bool:
        """False for llama.cpp: it holds back tokens that end inside a UTF-8 character and then
        streams only the last token of the batch (their ids are lost; their times are not).
        Runs that check tokens use ``stream=False`` there."""
        return self.id_source != LLAMA_CPP

    def _probe_id_source(self) -> str:
        tried = []
        for logprobs in (None, 1):
            request = Request("probe", PROBE_PROMPT, 2)
            path, body = self.completion_body(request, stream=False, logprobs=logprobs)
            status, reply = self._get_json(path, body)
            if status != 200 or not isinstance(reply, dict) or not reply.get("choices"):
                raise self.failure(
                    "load",
                    f"a 2-token completion of a token-id prompt answered HTTP {status}: "
                    f"{str(reply)[:1000]} (the server must accept token-id prompts)",
                )
            choice = reply["choices"][0]
            for source in ID_SOURCES:
                ids, _ = read_choice(choice, source)
                if ids:
                    return source
            tried.append(f"logprobs={logprobs}: {json.dumps(choice)[:300]}")
        raise self.failure(
            "load",
            "the server returns text but no token ids, so its output cannot be compared with "
            "the reference token by token; it ignored return_token_ids (vLLM, vibeserve serve), "
            "return_tokens_as_token_ids and logprobs ids (llama.cpp). Replies: " + "; ".join(tried),
        )

    def close(self) -> None:
        """The server belongs to whoever started it; nothing to stop here."""

    def counters(self) -> dict[str, int]:
        """A server reports no model-forward counter (integrity checks skip endpoints)."""
        return {}

    def log_tail(self) -> str:
        return ""

    # -- requests ------------------------------------------------------------------------------
    def completion_body(
        self, request: Request, *, stream: bool, logprobs: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of one greedy completion of a token-id prompt."""
        if self.id_source == LLAMA_CPP:
            body = {
                "prompt": list(request.prompt_token_ids),
                "n_predict": request.max_new_tokens,
                "temperature": 0.0,
                "stream": stream,
                "return_tokens": True,
                "ignore_eos": not request.stop_token_ids,
                "cache_prompt": self.prompt_cache,
            }
            if request.top_logprobs:
                # top_k 0: probabilities over the whole vocabulary (its default top-k of 40
                # renormalises them over the 40 sampler candidates)
                body |= {"n_probs": request.top_logprobs, "top_k": 0}
            if request.response_format is not None:  # its native field takes the schema itself
                body["json_schema"] = _schema_of(request.response_format)
            return "/completion", body
        body = {
            "model": self.model,
            "prompt": list(request.prompt_token_ids),
            "max_tokens": request.max_new_tokens,
            "temperature": 0.0,
            "stream": stream,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "ignore_eos": not request.stop_token_ids,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.stop_token_ids:
            body["stop_token_ids"] = list(request.stop_token_ids)
        top = max(request.top_logprobs, logprobs or 0)
        if self.id_source in ("logprob_ids", "token_id_strings"):
            top = max(top, 1)
        if top:
            body["logprobs"] = top
        if request.prediction_token_ids is not None:
            body["prediction"] = {"type": "content", "content": list(request.prediction_token_ids)}
        if request.response_format is not None:
            body["response_format"] = request.response_format
        return "/v1/completions", body

    def image_body(self, request: ImageRequest) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of one image (vibeserve serve's diffusers-style fields)."""
        return IMAGES_PATH, {
            "model": self.model,
            "prompt": request.prompt,
            "n": 1,
            "response_format": "b64_json",
            "seed": request.seed,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            "probe_step": request.probe_step,
        }

    def run(
        self,
        requests: Sequence[Request | ImageRequest],
        *,
        concurrency: int | None = None,
        arrival_offsets_s: Sequence[float] | None = None,
        stream: bool = True,
    ) -> RunResult:
        """As ``EngineProcess.run``. ``stream=False`` asks for whole completions (every token then
        arrives with the last): for servers that do not stream every token id. ``ImageRequest``s
        (all of the run's requests, or none) each get one whole reply."""
        if self._failure is not None:
            raise self._failure
        images = sum(isinstance(r, ImageRequest) for r in requests)
        if images and images != len(requests):
            raise ValueError("a run's requests are all text requests or all image requests")
        served = None
        if self.serves_audio:
            served = f"transcribes speech ({TRANSCRIPTION_TASK})"
        elif self.serves_images:
            served = f"makes images ({IMAGE_TASK})"
        if served is not None and not images:  # not a failure of the server: its own kind runs
            raise EngineFailure(
                "load",
                f"[{self.name} at {self.base_url}] the server's model {self.model!r} {served}; "
                "text requests need a server of a text model",
            )
        if images and not self.serves_images:
            raise EngineFailure(
                "load",
                f"[{self.name} at {self.base_url}] the server's model {self.model!r} is no "
                f"text-to-image model (its /v1/models card's task is not {IMAGE_TASK!r}); image "
                "requests need `vibeserve serve` of an image engine and model (--scale t2i-tiny)",
            )
        if self.id_source is None and not images:
            raise RuntimeError("EndpointEngine.run() before start()")
        if arrival_offsets_s is not None and len(arrival_offsets_s) != len(requests):
            raise ValueError("arrival_offsets_s needs one offset per request")
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids in one run must be unique")
        self._streamed = stream
        inbox: queue.Queue[tuple[str, str, Any, float]] = queue.Queue()
        streams: dict[str, Stream] = {}
        records: dict[str, RequestRecord] = {}
        in_flight: set[str] = set()
        limit = concurrency or len(requests)
        offsets = list(arrival_offsets_s or [0.0] * len(requests))
        waiting = list(range(len(requests)))
        started = self.clock()
        last_progress = started
        self.peak_rss_bytes = 0
        try:
            while waiting or in_flight:
                now = self.clock()
                while waiting and len(in_flight) < limit and started + offsets[waiting[0]] <= now:
                    request = requests[waiting.pop(0)]
                    if isinstance(request, ImageRequest):
                        path, body = self.image_body(request)
                    else:
                        path, body = self.completion_body(request, stream=stream)
                    reader = Stream(self, request, path, body)
                    streams[request.request_id] = reader
                    prompt_len = len(getattr(request, "prompt_token_ids", ()))
                    records[request.request_id] = RequestRecord(
                        request.request_id, prompt_len, self.clock()
                    )
                    threading.Thread(
                        target=self._read_stream, args=(reader, inbox), daemon=True
                    ).start()
                    in_flight.add(request.request_id)
                    last_progress = self.clock()
                timeout = 0.05
                if waiting and len(in_flight) < limit:
                    timeout = min(timeout, max(0.0, started + offsets[waiting[0]] - self.clock()))
                for rid, kind, data, at in self._drain(inbox, timeout):
                    last_progress = max(last_progress, at)
                    if kind == "error":
                        raise data
                    request = streams[rid].request
                    if isinstance(request, ImageRequest):
                        self._record_image(request, records[rid], kind, data, at, in_flight)
                    else:
                        self._record(request, records[rid], kind, data, at, in_flight)
                self._watch(in_flight, last_progress)
        finally:
            for reader in streams.values():
                reader.close()
        ended = self.clock()
        return RunResult(self.name, records, started, ended, self.peak_rss_bytes, {}, None, {})

    def run_streams(self, streams: Sequence[Any], *, pace: float = 1.0) -> RunResult:
        """As ``EngineProcess.run_streams``, over one WebSocket per stream to ``vibeserve serve``.

        Each stream's thread sends chunk k at start + offset + (k + 1) chunk durations / ``pace``
        (``pace`` 0: once chunk k - 1 is answered) and stamps its sends and the answers with
        ``clock``; this thread checks every answer and watches for silence. A chunk is sent as
        one binary message, so the server's chunks are the workload's (their lengths are whole
        20 ms frames); the final chunk goes as ``{"type": "finish"}`` carrying its audio.
        """
        if self._failure is not None:
            raise self._failure
        _, chunks = stream_chunks(streams, pace)
        connections = {}
        inbox: queue.Queue[tuple[str, str, Any, float]] = queue.Queue()
        stop = threading.Event()
        threads = []
        with contextlib.ExitStack() as open_connections:
            for stream in streams:  # connected before the clock starts: a handshake is no chunk
                connection = open_connections.enter_context(self._connect_stream(stream.stream_id))
                connections[stream.stream_id] = connection
            started = self.clock()
            for stream in streams:
                sid = stream.stream_id
                schedule = _StreamSchedule(
                    sid, chunks[sid], started + float(stream.start_offset_s), stream.chunk_seconds
                )
                thread = threading.Thread(
                    target=self._push_stream,
                    args=(connections[sid], schedule, pace, inbox, stop),
                    name=f"vibeserve-audio-{sid}",
                    daemon=True,
                )
                thread.start()
                threads.append(thread)
            try:
                records = self._collect_streams(chunks, inbox, started)
                ended = self.clock()
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=self.limits.step_timeout_s)
        return RunResult(self.name, records, started, ended, self.peak_rss_bytes, {}, None, {})

    def _stream_url(self) -> str:
        scheme = "wss" if self._parts.scheme == "https" else "ws"
        return f"{scheme}://{self._parts.netloc}{self._parts.path.rstrip('/')}{AUDIO_STREAM_PATH}"

    def _connect_stream(self, sid: str) -> Any:
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect

        url = self._stream_url()
        if self.model is not None:
            url += f"?model={quote(self.model)}"
        try:
            return connect(
                url,
                open_timeout=self.limits.step_timeout_s,
                close_timeout=5,
                max_size=None,
                compression=None,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            raise self.failure(
                "load",
                f"stream {sid!r}: the server answered HTTP {status} to a WebSocket at "
                f"{AUDIO_STREAM_PATH}; audio streams need `vibeserve serve` of a speech engine "
                "(e.g. scenarios/streaming_asr/starter with --scale asr-tiny)",
            ) from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise self.failure(
                "load",
                f"stream {sid!r}: cannot open the WebSocket {url} "
                f"({error.__class__.__name__}: {error}); start the server, or fix the URL",
            ) from None

    def _push_stream(
        self,
        connection: Any,
        schedule: _StreamSchedule,
        pace: float,
        inbox: queue.Queue,
        stop: threading.Event,
    ) -> None:
        """One stream's thread: send its chunks on schedule, pass every message back stamped."""
        from websockets.exceptions import ConnectionClosed

        sid = schedule.stream_id
        count = len(schedule.chunks)
        interval = schedule.chunk_seconds / pace if pace else 0.0
        sent = answered = 0
        try:
            while answered < count and not stop.is_set():
                due = schedule.start + (sent + 1) * interval  # as EngineProcess.run_streams
                ready = sent < count and (sent == answered if not pace else True)
                now = self.clock()
                if ready and due <= now:
                    chunk = schedule.chunks[sent]
                    at = self.clock()
                    inbox.put((sid, "sent", chunk, at))
                    connection.send(_stream_message(chunk))
                    sent += 1
                    continue
                wait = 0.05
                if ready:
                    wait = min(wait, due - now)
                try:
                    raw = connection.recv(timeout=max(wait, 0.0))
                except TimeoutError:
                    continue
                message = _answer_of(raw)
                inbox.put((sid, "answer", message, self.clock()))
                if not isinstance(message, dict) or message.get("type") not in ("partial", "final"):
                    return
                answered += 1
        except ConnectionClosed as closed:
            while True:  # what came before the close (an error message says why it closed)
                try:
                    raw = connection.recv(timeout=0)
                except (ConnectionClosed, TimeoutError):
                    break
                inbox.put((sid, "answer", _answer_of(raw), self.clock()))
            code = closed.rcvd.code if closed.rcvd is not None else None
            reason = closed.rcvd.reason if closed.rcvd is not None else ""
            failure = self.failure(
                "crash",
                f"stream {sid!r}: the server closed the WebSocket (code {code}"
                f"{': ' + reason if reason else ''}) after {answered} of {count} answers",
            )
            inbox.put((sid, "error", failure, self.clock()))
        except Exception as error:  # noqa: BLE001 - a stream thread must always report back
            failure = self.failure("crash", f"stream {sid!r}: {error!r}")
            inbox.put((sid, "error", failure, self.clock()))

    def _collect_streams(
        self, chunks: dict[str, list[AudioChunk]], inbox: queue.Queue, started: float
    ) -> dict[str, RequestRecord]:
        """Every stream's answers checked and recorded as ``EngineProcess.run_streams`` does."""
        records: dict[str, RequestRecord] = {}
        awaiting: dict[str, list[tuple[AudioChunk, float]]] = {sid: [] for sid in chunks}
        last_progress = started
        self.peak_rss_bytes = 0
        while len(records) < len(chunks) or any(r.finished_at is None for r in records.values()):
            for sid, kind, data, at in self._drain(inbox, 0.05):
                if kind == "error":
                    raise data
                if kind == "sent":
                    if not any(awaiting.values()):  # the silence watch starts with a wait
                        last_progress = max(last_progress, at)
                    record = records.setdefault(sid, RequestRecord(sid, 0, at))
                    record.audio_samples += data.num_samples
                    awaiting[sid].append((data, at))
                    continue
                self._record_answer(sid, data, at, records, awaiting)
                last_progress = max(last_progress, at)
            waiting = {sid for sid, items in awaiting.items() if items}
            if self.pid is not None:
                self.peak_rss_bytes = max(self.peak_rss_bytes, tree_rss(self.pid))
            silent = self.clock() - last_progress
            if waiting and silent > self.limits.step_timeout_s:
                raise self.failure(
                    "hang",
                    f"no transcript for {silent:.1f} s with {len(waiting)} audio stream(s) "
                    f"awaiting one (step timeout {self.limits.step_timeout_s:g} s)",
                )
        return records

    def _record_answer(
        self,
        sid: str,
        message: Any,
        at: float,
        records: dict[str, RequestRecord],
        awaiting: dict[str, list[tuple[AudioChunk, float]]],
    ) -> None:
        if isinstance(message, dict) and message.get("type") == "error":
            raise self.failure(
                "protocol", f"stream {sid!r}: the server sent an error: {message.get('error')}"
            )
        if not isinstance(message, dict):
            raise self.failure(
                "protocol", f"stream {sid!r}: an answer is not a JSON object: {str(message)[:300]}"
            )
        if not awaiting[sid]:
            raise self.failure(
                "protocol", f"stream {sid!r}: an answer with no chunk awaiting one: {message}"
            )
        chunk, sent = awaiting[sid][0]
        kind = "final" if chunk.final else "partial"
        answer = Event(
            sid,
            finished=message.get("type") == "final",
            payload={"type": message.get("type"), "chunk": message.get("chunk")},
        )
        if (problem := transcript_problem(chunk, answer)) is not None:
            raise self.failure("protocol", problem)
        token_ids = message.get("token_ids")
        if not isinstance(token_ids, list) or not all(isinstance(t, int) for t in token_ids):
            raise self.failure(
                "protocol",
                f"stream {sid!r} chunk {chunk.index}: the answer's token_ids is not a list of "
                f"token ids: {json.dumps(message)[:300]}",
            )
        awaiting[sid].pop(0)
        record = records[sid]
        record.partials.append(PartialRecord(chunk.index, kind, tuple(token_ids), sent, at))
        if chunk.final:
            record.token_ids = list(token_ids)
            record.finished_at = at

    # -- internals -----------------------------------------------------------------------------
    def _read_stream(self, stream: Stream, inbox: queue.Queue) -> None:
        rid = stream.request.request_id
        try:
            for data, at in stream.lines():
                if data == "[DONE]":
                    inbox.put((rid, "done", None, at))
                    return
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    raise self.failure(
                        "protocol", f"request {rid!r}: an SSE event is not JSON: {data[:300]!r}"
                    ) from None
                inbox.put((rid, "chunk", chunk, at))
            inbox.put((rid, "eof", None, self.clock()))
        except EngineFailure as failure:
            inbox.put((rid, "error", failure, self.clock()))
        except Exception as error:  # noqa: BLE001 - a reader thread must always report back
            inbox.put((rid, "error", self.failure("crash", f"{rid!r}: {error!r}"), self.clock()))

    @staticmethod
    def _drain(inbox: queue.Queue, timeout: float) -> list[tuple[str, str, Any, float]]:
        items = []
        try:
            items.append(inbox.get(timeout=timeout))
            while True:
                items.append(inbox.get_nowait())
        except queue.Empty:
            pass
        return items

    def _record(
        self,
        request: Request,
        record: RequestRecord,
        kind: str,
        chunk: Any,
        at: float,
        in_flight: set[str],
    ) -> None:
        rid = request.request_id
        state = record.payloads  # bookkeeping per request: finish reason and usage
        if kind == "chunk":
            if "error" in chunk:
                raise self.failure("crash", f"request {rid!r}: the server sent an error: {chunk}")
            if self.id_source == LLAMA_CPP:
                self._record_llama_cpp(request, record, chunk, at)
            if usage := chunk.get("usage"):
                state.append({"usage": usage})
            for choice in chunk.get("choices") or []:
                tokens, logprobs = read_choice(choice, self.id_source)
                record.token_ids.extend(tokens)
                record.token_times.extend([at] * len(tokens))
                if request.top_logprobs and logprobs:
                    record.logprobs = (record.logprobs or []) + logprobs
                if reason := choice.get("finish_reason"):
                    state.append({"finish_reason": reason})
            if len(record.token_ids) > request.max_new_tokens:
                raise self.failure(
                    "protocol",
                    f"request {rid!r} streamed {len(record.token_ids)} tokens, over its "
                    f"max_tokens={request.max_new_tokens}",
                )
            return
        # "done" or "eof": the stream is over
        reasons = [s["finish_reason"] for s in state if "finish_reason" in s]
        usages = [s["usage"] for s in state if "usage" in s]
        count = len(record.token_ids)
        if not reasons:
            raise self.failure(
                "protocol",
                f"request {rid!r}: the stream ended ({kind}) after {count} tokens without a "
                "finish_reason",
            )
        reason = reasons[-1]
        single_stop = request.stop_token_ids and len(request.stop_token_ids) == 1
        if reason == "stop" and single_stop and request.response_format is None:
            # OpenAI servers leave the matched stop token out of the output; the contract and the
            # reference count it, so it is put back (only where exactly one token could have been;
            # never under a grammar, whose complete document ends the output by itself)
            if not record.token_ids or record.token_ids[-1] not in request.stop_token_ids:
                record.token_ids.append(request.stop_token_ids[0])
                record.token_times.append(record.token_times[-1] if record.token_times else at)
        if reason == "length" and count < request.max_new_tokens:
            raise self.failure(
                "protocol",
                f"request {rid!r}: finish_reason 'length' after {count} streamed tokens, but "
                f"max_tokens={request.max_new_tokens} (tokens were dropped from the stream)",
            )
        if usages and (reported := usages[-1].get("completion_tokens")) is not None:
            if int(reported) != count and not (reason == "stop" and int(reported) == count - 1):
                raise self.failure(
                    "protocol",
                    f"request {rid!r}: {count} tokens streamed but usage.completion_tokens = "
                    f"{reported} (tokens were dropped from or added to the stream)",
                )
        record.payloads = [{"finish_reason": reason}]
        record.finished_at = at
        in_flight.discard(rid)

    def _record_image(
        self,
        request: ImageRequest,
        record: RequestRecord,
        kind: str,
        reply: Any,
        at: float,
        in_flight: set[str],
    ) -> None:
        """An image reply (kind "chunk": the whole JSON body; "done" follows) as the payload
        ``EngineProcess.run`` records: the PNG's pixels and the reply's ``vibeserve`` fields."""
        rid = request.request_id
        if kind != "chunk":
            if not record.payloads:
                raise self.failure("protocol", f"image {rid!r}: the reply ended with no body")
            record.finished_at = at
            in_flight.discard(rid)
            return
        try:
            extras = reply["vibeserve"]
            pixels = _png_pixels(base64.b64decode(reply["data"][0]["b64_json"], validate=True))
            shape = [int(x) for x in extras["shape"]]
            if list(pixels.shape) != shape and pixels.size == math.prod(shape):
                pixels = pixels.reshape(shape)  # a one-channel PNG decodes to H x W
            if list(pixels.shape) != shape:
                raise ValueError(f"the PNG is {pixels.shape}, the reply's shape {shape}")
            payload = {
                "type": "image",
                "shape": shape,
                "pixels": base64.b64encode(pixels.tobytes()).decode("ascii"),
                **{key: extras[key] for key in IMAGE_FIELDS},
                "timings_ms": extras.get("timings_ms") or {},
            }
        except (KeyError, IndexError, TypeError, ValueError, OSError) as error:
            raise self.failure(
                "protocol",
                f"image {rid!r}: unreadable reply from {self.base_url}{IMAGES_PATH} ({error!r}); "
                'it needs data[0].b64_json (a PNG) and the "vibeserve" payload fields '
                f"shape, {', '.join(IMAGE_FIELDS)}: {json.dumps(reply)[:300]}",
            ) from None
        event = Event(rid, [], finished=True, payload=payload)
        if (problem := image_problem(request, event)) is not None:
            raise self.failure("protocol", problem)
        record.payloads = [payload]

    def _record_llama_cpp(
        self, request: Request, record: RequestRecord, chunk: dict[str, Any], at: float
    ) -> None:
        """A native /completion reply: a whole one carries every token in ``tokens``; a streamed
        chunk the last token only, with ``tokens_predicted`` saying how many exist so far, so
        positions the stream skipped get UNKNOWN_ID, stamped when their chunk arrived."""
        tokens = [int(t) for t in chunk.get("tokens") or []]
        if not self._streamed:
            record.token_ids = tokens
            record.token_times = [at] * len(tokens)
        else:
            total = int(chunk.get("tokens_predicted", len(record.token_ids) + len(tokens)))
            gap = max(0, total - len(record.token_ids) - len(tokens))
            record.token_ids.extend([UNKNOWN_ID] * gap + tokens)
            record.token_times.extend([at] * (gap + len(tokens)))
        if request.top_logprobs and chunk.get("completion_probabilities"):
            record.logprobs = (record.logprobs or []) + [
                {int(t["id"]): float(t["logprob"]) for t in item.get("top_logprobs") or []}
                for item in chunk["completion_probabilities"]
            ]
        if chunk.get("stop"):
            reason = "length" if chunk.get("stop_type") == "limit" else "stop"
            record.payloads.append({"finish_reason": reason})

    def _watch(self, in_flight: set[str], last_progress: float) -> None:
        if self.pid is not None:
            self.peak_rss_bytes = max(self.peak_rss_bytes, tree_rss(self.pid))
        silent = self.clock() - last_progress
        if in_flight and silent > self.limits.step_timeout_s:
            raise self.failure(
                "hang",
                f"no token for {silent:.1f} s with {len(in_flight)} request(s) in flight "
                f"(step timeout {self.limits.step_timeout_s:g} s): the server stalled mid-stream",
            )


class _StreamSchedule:
    """One audio stream as its thread sends it."""

    def __init__(
        self, stream_id: str, chunks: list[AudioChunk], start: float, chunk_seconds: float
    ) -> None:
        self.stream_id = stream_id
        self.chunks = chunks
        self.start = start  # when the stream's audio starts: chunk k is sent once recorded
        self.chunk_seconds = chunk_seconds

    def __repr__(self) -> str:
        return f"_StreamSchedule({self.stream_id!r}, {len(self.chunks)} chunks)"


def _answer_of(raw: str | bytes) -> Any:
    """A WebSocket message from the server: its JSON, or the raw message if it is none."""
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw


def _stream_message(chunk: AudioChunk) -> bytes | str:
    """What carries ``chunk`` over the WebSocket: its bytes, or for the final chunk a finish
    message holding them (so the server makes them the final chunk, not one more partial)."""
    if not chunk.final:
        return chunk.pcm16
    message: dict[str, Any] = {"type": "finish"}
    if chunk.pcm16:
        message["audio"] = base64.b64encode(chunk.pcm16).decode("ascii")
    return json.dumps(message)


def _png_pixels(data: bytes) -> Any:
    """The uint8 pixels of a PNG (numpy: H x W x C, or H x W for one channel)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.format != "PNG" or image.mode not in ("L", "RGB", "RGBA"):
            raise ValueError(f"not an 8-bit L, RGB or RGBA PNG: {image.format} {image.mode}")
        return np.asarray(image)


def _schema_of(response_format: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of an OpenAI ``response_format`` (``json_object``: any object)."""
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    spec = response_format.get("json_schema")
    if response_format.get("type") != "json_schema" or not isinstance(spec, dict):
        raise ValueError(f"response_format {response_format!r} holds no json_schema")
    return spec.get("schema", {})


def read_choice(choice: dict[str, Any], source: str | None) -> tuple[list[int], list[dict]]:
    """The token ids of one completion choice read from ``source`` (one of ``ID_SOURCES``), and
    the per-token top logprobs keyed by token id (empty where the server sent none)."""
    logprobs = choice.get("logprobs")
    logprobs = logprobs if isinstance(logprobs, dict) else {}
    content = logprobs.get("content")
    if isinstance(content, list):  # llama.cpp: [{id, token, logprob, top_logprobs: [{id, ...}]}]
        ids = [int(item["id"]) for item in content if "id" in item]
        tops = [
            {int(t["id"]): float(t["logprob"]) for t in item.get("top_logprobs") or []}
            for item in content
        ]
    else:  # OpenAI legacy: tokens, top_logprobs [{token: logprob}] with "token_id:N" tokens
        ids = [i for i in map(_token_id, logprobs.get("tokens") or []) if i is not None]
        tops = [
            {i: float(v) for k, v in (top or {}).items() if (i := _token_id(k)) is not None}
            for top in logprobs.get("top_logprobs") or []
        ]
    if source == "token_ids":
        raw = choice.get("token_ids")
        return ([int(t) for t in raw] if isinstance(raw, list) else []), tops
    if source == "logprob_ids":
        return (ids if isinstance(content, list) else []), tops
    if source == "token_id_strings":
        return (ids if not isinstance(content, list) else []), tops
    raise ValueError(f"unknown token id source {source!r}; one of {ID_SOURCES}")


def _token_id(text: Any) -> int | None:
    if isinstance(text, str) and text.startswith("token_id:"):
        try:
            return int(text[9:])
        except ValueError:
            return None
    return None


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants (a server's engine processes too)."""
    total = 0
    pending = [pid]
    seen = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                pending.extend(int(c) for c in children)
        except (OSError, ValueError):
            continue
    return total

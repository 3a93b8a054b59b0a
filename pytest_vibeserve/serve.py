"""An OpenAI-compatible HTTP server in front of any engine directory (``vibeserve serve``).

The engine is untrusted code, so it runs where the harness runs it: in a worker process with a
scrubbed environment (``runner.EngineProcess``). One driver thread owns that process: it submits
the requests the HTTP handlers queue, polls the event batches coming back and hands each to the
asyncio queue of the handler waiting for it. The tokenizer lives here, in the server process:
prompts are tokenized and outputs detokenized before and after the engine sees them.

Decoding is greedy, as the contract is, so a request asking for sampling is refused rather than
silently answered greedily; so is every field the engine cannot honour. The vLLM extensions
``stop_token_ids``, ``ignore_eos``, ``return_token_ids`` and ``return_tokens_as_token_ids`` are
understood; other unknown fields are ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pytest_vibeserve.contract import EngineSpec, Event, Request
from pytest_vibeserve.runner import EngineFailure, EngineProcess, Limits

log = logging.getLogger(__name__)

POLL_S = 0.005  # how long the driver waits for engine events before looking for new requests
DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default
MAX_LOGPROBS = 20  # the OpenAI limit on logprobs / top_logprobs
LOGPROB_FLOOR = -9999.0  # what vLLM reports for a -inf logprob: JSON has no infinity
GRACEFUL_SHUTDOWN_S = 5  # how long open requests may finish once a shutdown is asked for
REPLACEMENT_CHAR = "\ufffd"  # what a partial UTF-8 character decodes to
DEFAULT_LIMITS = Limits()  # frozen: safe to share as a default


class ApiError(Exception):
    """A request the server refuses or cannot answer; ``response()`` is its OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "BadRequestError",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _engine_error(failure: EngineFailure) -> ApiError:
    return ApiError(500, str(failure), kind="InternalServerError")


# -- the engine side -------------------------------------------------------------------------


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


# -- requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str  # what clients put in "model"
    path: Path
    max_model_len: int  # prompt plus output tokens
    vocab_size: int
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def from_dir(cls, model_dir: Path, name: str | None = None) -> ServedModel:
        """The model in ``model_dir`` (its config.json), served as ``name`` (default: dir name)."""
        config = json.loads((Path(model_dir) / "config.json").read_text())
        text_config = config.get("text_config") or {}
        return cls(
            name=name or Path(model_dir).name,
            path=Path(model_dir),
            max_model_len=int(
                config.get("max_position_embeddings") or text_config["max_position_embeddings"]
            ),
            vocab_size=int(config.get("vocab_size") or text_config["vocab_size"]),
        )


@dataclass(frozen=True, slots=True)
class Generation:
    """One validated request: what the engine is asked and how the answer is shaped."""

    prompt_token_ids: list[int]
    max_tokens: int
    stop_token_ids: tuple[int, ...]
    logprobs: int | None  # alternatives to report per token; None: no logprobs at all
    prediction_token_ids: tuple[int, ...] | None
    response_format: dict[str, Any] | None
    stream: bool
    include_usage: bool
    return_token_ids: bool
    tokens_as_ids: bool

    def engine_request(self, request_id: str) -> Request:
        # logprobs=0 still reports the chosen token's logprob: greedy's top-1 is that token.
        top = 0 if self.logprobs is None else max(1, self.logprobs)
        return Request(
            request_id=request_id,
            prompt_token_ids=tuple(self.prompt_token_ids),
            max_new_tokens=self.max_tokens,
            stop_token_ids=self.stop_token_ids,
            prediction_token_ids=self.prediction_token_ids,
            top_logprobs=top,
            response_format=self.response_format,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(t) for t in value)


def _int_field(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        raise ApiError(
            400, f"{name} must be an integer in [{low}, {high}], got {value!r}", param=name
        )
    return value


def _bool_field(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {value!r}", param=name)
    return value


class RequestParser:
    """Turns the JSON of a completions or chat request into a ``Generation``, or an ``ApiError``."""

    def __init__(
        self,
        tokenizer: Any,
        model: ServedModel,
        *,
        engine_name: str,
        capabilities: frozenset[str],
    ) -> None:
        """``capabilities``: what the engine honours (``EngineProcess.capabilities``)."""
        self.tokenizer = tokenizer
        self.model = model
        self.engine_name = engine_name
        self.capabilities = capabilities

    def completion(self, body: dict[str, Any]) -> Generation:
        if _bool_field(body, "echo"):
            raise ApiError(400, "echo is not supported; drop it or set it to false", param="echo")
        logprobs = body.get("logprobs")
        if logprobs is not None:
            logprobs = _int_field(body, "logprobs", 0, 0, MAX_LOGPROBS)
        max_tokens = _int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, self.model.max_model_len)
        return self._generation(body, self._prompt(body.get("prompt")), max_tokens, logprobs)

    def chat(self, body: dict[str, Any]) -> Generation:
        if not self.tokenizer.chat_template:
            raise ApiError(
                400,
                f"the tokenizer of {self.model.name!r} has no chat template, so messages cannot "
                "be turned into a prompt; send the prompt to /v1/completions instead",
                param="messages",
            )
        limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else None
        max_tokens = _int_field(
            body, limit or "max_tokens", DEFAULT_MAX_TOKENS, 1, self.model.max_model_len
        )
        top_logprobs = _int_field(body, "top_logprobs", 0, 0, MAX_LOGPROBS)
        if not _bool_field(body, "logprobs"):
            if body.get("top_logprobs") is not None:
                raise ApiError(
                    400, "top_logprobs needs logprobs: true; set both", param="top_logprobs"
                )
            top_logprobs = None
        return self._generation(
            body, self._chat_prompt(body.get("messages")), max_tokens, top_logprobs
        )

    def _generation(
        self, body: dict[str, Any], prompt: list[int], max_tokens: int, logprobs: int | None
    ) -> Generation:
        self._check_greedy(body)
        if len(prompt) + max_tokens > self.model.max_model_len:
            raise ApiError(
                400,
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"model's max_model_len of {self.model.max_model_len}; shorten either",
                param="max_tokens",
            )
        if logprobs is not None:
            self._require("logprobs", "logprobs")
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise ApiError(400, "stream_options must be an object", param="stream_options")
        return Generation(
            prompt_token_ids=prompt,
            max_tokens=max_tokens,
            stop_token_ids=self._stop_token_ids(body),
            logprobs=logprobs,
            prediction_token_ids=self._prediction(body.get("prediction")),
            response_format=self._response_format(body.get("response_format")),
            stream=_bool_field(body, "stream"),
            include_usage=_bool_field(stream_options, "include_usage"),
            return_token_ids=_bool_field(body, "return_token_ids"),
            tokens_as_ids=_bool_field(body, "return_tokens_as_token_ids"),
        )

    def _check_greedy(self, body: dict[str, Any]) -> None:
        temperature = body.get("temperature")
        if temperature is not None and temperature != 0:
            raise ApiError(
                400,
                f"temperature={temperature!r} asks for sampling, but the engine contract is "
                "greedy; omit temperature or set it to 0",
                param="temperature",
            )
        if body.get("n") not in (None, 1):
            raise ApiError(400, "n must be 1: greedy decoding has one answer", param="n")
        if body.get("stop") not in (None, [], ""):
            raise ApiError(
                400,
                "stop strings are not supported; pass the token ids to stop after as "
                "stop_token_ids",
                param="stop",
            )

    def _require(self, capability: str, param: str) -> None:
        if capability not in self.capabilities:
            listed = ", ".join(sorted(self.capabilities)) or "none"
            raise ApiError(
                400,
                f"the engine {self.engine_name!r} does not support {param} (its capabilities: "
                f"{listed}); drop {param} or serve an engine that lists {capability!r}",
                param=param,
            )

    def _prompt(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and not _is_int(prompt[0]):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            ids = self.tokenizer(prompt).input_ids
        elif _is_token_list(prompt):
            ids = prompt
        else:
            raise ApiError(
                400,
                "prompt must be a non-empty string, a non-empty list of token ids, or a list "
                f"holding one of those; got {json.dumps(prompt)[:80]}",
                param="prompt",
            )
        self._check_token_ids(ids, "prompt")
        return list(ids)

    def _chat_prompt(self, messages: Any) -> list[int]:
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", param="messages")
        conversation = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ApiError(
                    400, "each message must be an object with a role and content", param="messages"
                )
            content = message.get("content")
            if isinstance(content, list):  # content parts: only text ones can become tokens
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise ApiError(400, "only text content parts are supported", param="messages")
                content = "".join(str(p.get("text", "")) for p in content)
            conversation.append({**message, "content": content or ""})
        try:
            encoded = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True
            )
        except Exception as error:  # noqa: BLE001 - a template rejects a conversation many ways
            raise ApiError(
                400, f"the chat template rejected the messages: {error}", param="messages"
            ) from None
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        if ids and isinstance(ids[0], list):  # a batch of one
            ids = ids[0]
        ids = [int(t) for t in ids]
        self._check_token_ids(ids, "messages")
        return ids

    def _check_token_ids(self, ids: list[int], param: str) -> None:
        if not ids:
            raise ApiError(400, f"{param} encodes to no tokens", param=param)
        bad = [t for t in ids if not 0 <= t < self.model.vocab_size]
        if bad:
            raise ApiError(
                400,
                f"{param} holds token id(s) {bad[:5]} outside the vocabulary "
                f"[0, {self.model.vocab_size})",
                param=param,
            )

    def _stop_token_ids(self, body: dict[str, Any]) -> tuple[int, ...]:
        stop = body.get("stop_token_ids") or []
        if not isinstance(stop, list) or not all(_is_int(t) for t in stop):
            raise ApiError(
                400, "stop_token_ids must be a list of token ids", param="stop_token_ids"
            )
        eos = self.tokenizer.eos_token_id
        if not _bool_field(body, "ignore_eos") and eos is not None and eos not in stop:
            stop = [*stop, eos]
        return tuple(stop)

    def _prediction(self, prediction: Any) -> tuple[int, ...] | None:
        """OpenAI's ``{"type": "content", "content": "<text>"}``; as a vibeserve extension the
        content may also be a list of token ids (what the harness's endpoint client sends)."""
        if prediction is None:
            return None
        content = prediction.get("content") if isinstance(prediction, dict) else None
        is_ids = isinstance(content, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in content
        )
        if (
            not isinstance(prediction, dict)
            or prediction.get("type") != "content"
            or not (isinstance(content, str) or is_ids)
        ):
            raise ApiError(
                400,
                'prediction must be {"type": "content", "content": "<text>"} (or a list of '
                "token ids as content)",
                param="prediction",
            )
        if is_ids:
            return tuple(content) or None
        ids = self.tokenizer(content, add_special_tokens=False).input_ids
        return tuple(ids) or None

    def _response_format(self, response_format: Any) -> dict[str, Any] | None:
        if response_format is None or response_format == {"type": "text"}:
            return None
        if not isinstance(response_format, dict) or "type" not in response_format:
            raise ApiError(
                400,
                'response_format must be an object with a "type", e.g. {"type": "json_object"}',
                param="response_format",
            )
        self._require("response_format", "response_format")
        return response_format


# -- responses -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delta:
    """What one event batch adds to a request's answer."""

    text: str
    token_ids: list[int]
    logprobs: list[dict[int, float]] | None


class Transcript:
    """The tokens a request has produced and the text already released for them.

    Each batch decodes all generated ids again and releases the new suffix, minus a trailing run
    of U+FFFD: that is a partial UTF-8 character, whose remaining bytes may be in the next token.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self._released = 0  # characters of the decoded text already sent

    def add(
        self, token_ids: list[int], logprobs: list[dict[int, float]] | None, *, final: bool
    ) -> Delta:
        self.token_ids.extend(token_ids)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if not final:
            text = text.rstrip(REPLACEMENT_CHAR)
        released = text[self._released :]
        self._released = max(self._released, len(text))
        return Delta(released, list(token_ids), logprobs)

    def finish_reason(self, stop_token_ids: tuple[int, ...]) -> str:
        return "stop" if self.token_ids and self.token_ids[-1] in stop_token_ids else "length"


class Answer:
    """Shapes the answer to one request, as a whole or chunk by chunk, for either endpoint."""

    def __init__(self, generation: Generation, tokenizer: Any, model: str, *, chat: bool) -> None:
        self.generation = generation
        self.tokenizer = tokenizer
        self.chat = chat
        self.transcript = Transcript(tokenizer)
        prefix = "chatcmpl" if chat else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self._text_offset = 0

    def header(self, *, chunk: bool) -> dict[str, Any]:
        kind = "text_completion"
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def choice(self, delta: Delta, finish_reason: str | None, *, chunk: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if not self.chat:
            choice["text"] = delta.text
        elif chunk:
            choice["delta"] = {"content": delta.text}
        else:
            choice["message"] = {"role": "assistant", "content": delta.text}
        choice["logprobs"] = self._logprobs(delta)
        choice["finish_reason"] = finish_reason
        if self.generation.return_token_ids:
            choice["token_ids"] = delta.token_ids
        return choice

    def role_chunk(self) -> dict[str, Any]:
        choice = {"index": 0, "delta": {"role": "assistant"}, "logprobs": None}
        return {**self.header(chunk=True), "choices": [{**choice, "finish_reason": None}]}

    def usage(self) -> dict[str, int]:
        prompt = len(self.generation.prompt_token_ids)
        completion = len(self.transcript.token_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _token(self, token_id: int) -> str:
        if self.generation.tokens_as_ids:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id])

    def _logprobs(self, delta: Delta) -> dict[str, Any] | None:
        if self.generation.logprobs is None or delta.logprobs is None:
            return None
        pairs = list(zip(delta.token_ids, delta.logprobs, strict=True))
        if self.chat:
            return {"content": [self._chat_entry(token, top) for token, top in pairs]}
        result: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        kept = max(1, self.generation.logprobs)
        for token, top in pairs:
            text = self._token(token)
            result["tokens"].append(text)
            result["token_logprobs"].append(_logprob(top.get(token)))
            alternatives: dict[str, float | None] = {}
            for t, lp in list(top.items())[:kept]:
                # Two ids can share a string (partial UTF-8 bytes all read U+FFFD): keep the first,
                # the likelier. return_tokens_as_token_ids avoids the clash altogether.
                alternatives.setdefault(self._token(t), _logprob(lp))
            result["top_logprobs"].append(alternatives)
            result["text_offset"].append(self._text_offset)
            self._text_offset += len(text)
        return result

    def _chat_entry(self, token: int, top: dict[int, float]) -> dict[str, Any]:
        alternatives = list(top.items())[: self.generation.logprobs]
        return {
            "token": self._token(token),
            "logprob": _logprob(top.get(token)),
            "top_logprobs": [
                {"token": self._token(t), "logprob": _logprob(lp)} for t, lp in alternatives
            ],
        }


def _logprob(value: float | None) -> float | None:
    return None if value is None else max(value, LOGPROB_FLOOR)


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


# -- the app ---------------------------------------------------------------------------------


class _Routes:
    """The HTTP handlers, sharing one driver, tokenizer and model."""

    def __init__(self, driver: EngineDriver, model: ServedModel, tokenizer: Any) -> None:
        self.driver = driver
        self.model = model
        self.tokenizer = tokenizer
        self.parser = RequestParser(
            tokenizer,
            model,
            engine_name=driver.process.name,
            capabilities=driver.process.capabilities,
        )

    async def health(self, _: HttpRequest) -> JSONResponse:
        if (failure := self.driver.failure) is not None:
            return JSONResponse({"status": "error", "error": str(failure)}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(self, _: HttpRequest) -> JSONResponse:
        card = {
            "id": self.model.name,
            "object": "model",
            "created": self.model.created,
            "owned_by": "vibeserve",
            "root": str(self.model.path),
            "max_model_len": self.model.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def completions(self, request: HttpRequest) -> Response:
        return await self._answer(request, chat=False)

    async def chat_completions(self, request: HttpRequest) -> Response:
        return await self._answer(request, chat=True)

    async def _answer(self, request: HttpRequest, *, chat: bool) -> Response:
        try:
            body = await self._body(request)
            generation = self.parser.chat(body) if chat else self.parser.completion(body)
            if (failure := self.driver.failure) is not None:
                raise _engine_error(failure)
            answer = Answer(generation, self.tokenizer, self.model.name, chat=chat)
            events = self.driver.generate(generation.engine_request(answer.id))
            if generation.stream:
                return StreamingResponse(
                    self._stream(answer, events), media_type="text/event-stream"
                )
            return JSONResponse(await self._whole(answer, events))
        except ApiError as error:
            return error.response()

    async def _body(self, request: HttpRequest) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model.name:
            raise ApiError(
                404,
                f"the model {model!r} does not exist; this server serves {self.model.name!r}",
                param="model",
                kind="NotFoundError",
            )
        return body

    async def _whole(self, answer: Answer, events: AsyncIterator[Event]) -> dict[str, Any]:
        token_ids: list[int] = []
        logprobs: list[dict[int, float]] = []
        try:
            async for event in events:
                token_ids.extend(event.token_ids)
                logprobs.extend(event.logprobs or ())
        except EngineFailure as failure:
            raise _engine_error(failure) from None
        delta = answer.transcript.add(token_ids, logprobs, final=True)
        finish_reason = answer.transcript.finish_reason(answer.generation.stop_token_ids)
        response = {
            **answer.header(chunk=False),
            "choices": [answer.choice(delta, finish_reason, chunk=False)],
            "usage": answer.usage(),
        }
        if answer.generation.return_token_ids:
            response["prompt_token_ids"] = answer.generation.prompt_token_ids
        return response

    async def _stream(self, answer: Answer, events: AsyncIterator[Event]) -> AsyncIterator[str]:
        # A client that disconnects closes this generator; the driver still drains the request's
        # events (the contract has no abort), they just go unwritten.
        generation = answer.generation
        prompt_ids = {"prompt_token_ids": generation.prompt_token_ids}
        first = prompt_ids if generation.return_token_ids else {}
        try:
            if answer.chat:
                yield _sse({**answer.role_chunk(), **first})
                first = {}
            async for event in events:
                delta = answer.transcript.add(event.token_ids, event.logprobs, final=event.finished)
                finish_reason = None
                if event.finished:
                    finish_reason = answer.transcript.finish_reason(generation.stop_token_ids)
                choice = answer.choice(delta, finish_reason, chunk=True)
                yield _sse({**answer.header(chunk=True), "choices": [choice], **first})
                first = {}
        except EngineFailure as failure:
            yield _sse(_engine_error(failure).body())
            return
        if generation.include_usage:
            yield _sse({**answer.header(chunk=True), "choices": [], "usage": answer.usage()})
        yield _sse("[DONE]")


def create_app(driver: EngineDriver, model: ServedModel, tokenizer: Any) -> Starlette:
    """The OpenAI-compatible app answering from ``driver``'s engine, which must be started."""
    routes = _Routes(driver, model, tokenizer)
    return Starlette(
        routes=[
            Route("/health", routes.health, methods=["GET"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/completions", routes.completions, methods=["POST"]),
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        ]
    )


@contextmanager
def hosted_engine(
    engine_dir: Path,
    spec: EngineSpec,
    *,
    served_model_name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[Starlette]:
    """The app for ``engine_dir``: its worker loaded and driven while the context is open.

    Raises ``EngineFailure`` when the engine does not load.
    """
    from transformers import AutoTokenizer

    model = ServedModel.from_dir(Path(spec.model_path), served_model_name)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    process = EngineProcess(engine_dir, spec, limits=limits)
    try:
        process.start()
        with EngineDriver(process) as driver:
            yield create_app(driver, model, tokenizer)
    finally:
        process.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port); raises ``OSError`` if taken."""
    return socket.create_server((host, port))


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn(app: Starlette, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return uvicorn.Server(config)


def run_server(
    engine_dir: Path,
    spec: EngineSpec,
    sock: socket.socket,
    *,
    served_model_name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    log_level: str = "info",
) -> None:
    """Serve ``engine_dir`` on ``sock`` until SIGINT or SIGTERM, then close the engine's worker.

    Call it from the main thread (signal handlers live there). Binding the socket first lets a
    caller report a taken port before the engine spends its load time.
    """
    # SIGTERM acts as Ctrl-C: uvicorn shuts down gracefully and re-raises the signal, which then
    # becomes a KeyboardInterrupt here instead of killing the process before the worker is closed.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with hosted_engine(
            engine_dir, spec, served_model_name=served_model_name, limits=limits
        ) as app:
            # uvicorn logs no address for a socket it is handed
            log.info("serving %s at %s (Ctrl-C or SIGTERM stops it)", engine_dir, base_url(sock))
            _uvicorn(app, log_level).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def serve_in_thread(
    engine_dir: Path,
    spec: EngineSpec,
    *,
    served_model_name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    host: str = "127.0.0.1",
) -> Iterator[str]:
    """Serve ``engine_dir`` from a background thread on a free port; yields the base URL.

    On exit the HTTP server stops (requests still open get ``GRACEFUL_SHUTDOWN_S``) and the
    engine's worker is closed.
    """
    sock = bind_socket(host, 0)
    try:
        with hosted_engine(
            engine_dir, spec, served_model_name=served_model_name, limits=limits
        ) as app:
            server = _uvicorn(app, "warning")
            thread = threading.Thread(
                target=server.run, kwargs={"sockets": [sock]}, name="vibeserve-http", daemon=True
            )
            thread.start()
            try:
                while not server.started:
                    if not thread.is_alive():
                        raise RuntimeError(f"the HTTP server on {host} stopped while starting")
                    time.sleep(0.01)
                yield base_url(sock)
            finally:
                server.should_exit = True
                thread.join()
    finally:
        sock.close()

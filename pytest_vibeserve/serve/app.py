"""The Starlette app, its routes, and the ways to run it (uvicorn, a thread for tests).

The audio routes (``/v1/audio/stream``, ``/v1/audio/transcriptions``) live in ``audio.py``, the
image route (``/v1/images/generations``) in ``images.py``. A server answers the routes of its
model's kind (text, speech or image) and refuses the others with a 400 saying which it serves.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from pytest_vibeserve.contract import EngineSpec, Event
from pytest_vibeserve.runner import EngineFailure, EngineProcess, Limits
from pytest_vibeserve.serve.audio import (
    STREAM_PATH,
    TRANSCRIPTIONS_PATH,
    AudioRoutes,
    is_speech_model,
)
from pytest_vibeserve.serve.driver import EngineDriver
from pytest_vibeserve.serve.errors import (
    DEFAULT_LIMITS,
    GRACEFUL_SHUTDOWN_S,
    ApiError,
    _engine_error,
)
from pytest_vibeserve.serve.images import IMAGE_TASK, IMAGES_PATH, ImageRoutes
from pytest_vibeserve.serve.requests import RequestParser, ServedModel, json_body
from pytest_vibeserve.serve.responses import Answer, _sse

log = logging.getLogger(__name__)


class _Routes:
    """The HTTP handlers, sharing one driver, tokenizer and model."""

    def __init__(self, driver: EngineDriver, model: ServedModel, tokenizer: Any) -> None:
        self.driver = driver
        self.model = model
        self.tokenizer = tokenizer
        self.speech = is_speech_model(model.path)  # it transcribes audio rather than text
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
            # vLLM's --task names: a client learns which routes answer before using one
            "task": "transcription" if self.speech else "generate",
        }
        if self.model.makes_images:
            card |= {"task": IMAGE_TASK, "image_size": self.model.image_size}
        return JSONResponse({"object": "list", "data": [card]})

    async def completions(self, request: HttpRequest) -> Response:
        return await self._answer(request, chat=False)

    async def chat_completions(self, request: HttpRequest) -> Response:
        return await self._answer(request, chat=True)

    async def _answer(self, request: HttpRequest, *, chat: bool) -> Response:
        try:
            if self.speech:  # an audio engine has no add_request: its worker would die of it
                raise ApiError(
                    400,
                    f"the model {self.model.name!r} transcribes speech and completes no text; "
                    f"stream audio to the WebSocket {STREAM_PATH} or post a WAV to "
                    f"{TRANSCRIPTIONS_PATH}",
                    param="model",
                )
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
        return await json_body(request, self.model)

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
        finish_reason = answer.transcript.finish_reason(answer.generation)
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
                    finish_reason = answer.transcript.finish_reason(generation)
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
    audio = AudioRoutes(driver, model, tokenizer)
    images = ImageRoutes(driver, model, speech=routes.speech)
    if model.makes_images:  # no tokenizer, and an engine with add_image alone: refuse the rest
        completions, chat = images.not_text, images.not_text
        transcriptions, stream = images.not_audio, images.not_audio_stream
    else:
        completions, chat = routes.completions, routes.chat_completions
        transcriptions, stream = audio.transcriptions, audio.stream
    return Starlette(
        routes=[
            Route("/health", routes.health, methods=["GET"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route(TRANSCRIPTIONS_PATH, transcriptions, methods=["POST"]),
            WebSocketRoute(STREAM_PATH, stream),
            Route(IMAGES_PATH, images.generations, methods=["POST"]),
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
    model = ServedModel.from_dir(Path(spec.model_path), served_model_name)
    tokenizer = None  # an image model has no tokenizer files: its prompts are UTF-8 bytes
    if not model.makes_images:
        from transformers import AutoTokenizer

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

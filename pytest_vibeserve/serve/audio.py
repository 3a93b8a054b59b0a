"""Speech recognition routes: a WebSocket stream of audio, and OpenAI's offline transcriptions.

``/v1/audio/stream`` (WebSocket): one connection is one audio stream. The client sends 16 kHz mono
int16 little-endian PCM as binary messages of any length (or as text messages
``{"type": "audio", "audio": BASE64}``) and ends with ``{"type": "finish"}``, which may carry the
stream's last audio as ``"audio": BASE64``. The server buffers the samples and, after each client
message, submits the largest whole number of 20 ms frames (320 samples) it holds as the stream's
next chunk; ``finish`` submits what remains, zero-padded to whole frames, as the final chunk (empty
when nothing remains). Each chunk is answered, in order, by one text message
``{"type": "partial" | "final", "chunk": K, "text": ..., "token_ids": [...]}`` carrying the whole
transcript so far; after the final one the server closes the connection (1000). A query parameter
``?model=NAME`` must name the served model. Errors come as ``{"type": "error", "error": ...}``
followed by a close: 1003 or 1007 for a bad client message, 1008 for another model's name, 1011
when the engine failed or cannot serve audio.

``POST /v1/audio/transcriptions``: a WAV file (16 kHz mono 16-bit PCM) as the multipart field
``file`` (OpenAI's form, with optional ``model`` and ``response_format``: ``json``, the default,
``verbose_json`` or ``text``), or the WAV itself as the body with ``Content-Type: audio/wav`` (the
fields then as query parameters). The whole file goes to the engine as one stream of 2 s chunks,
the last one final, and the final transcript is the answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import uuid
import wave
from email.message import Message
from email.utils import collapse_rfc2231_value
from pathlib import Path
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from pytest_vibeserve.contract import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE, Event
from pytest_vibeserve.runner import EngineFailure
from pytest_vibeserve.serve.driver import AudioSession, EngineDriver
from pytest_vibeserve.serve.errors import ApiError, _engine_error
from pytest_vibeserve.serve.requests import ServedModel

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/audio/stream"
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
FRAME_BYTES = 2 * AUDIO_FRAME_SAMPLES  # one 20 ms frame of int16 samples
OFFLINE_CHUNK_SAMPLES = 2 * AUDIO_SAMPLE_RATE  # /v1/audio/transcriptions sends 2 s chunks
MAX_UPLOAD_BYTES = 25 << 20  # OpenAI's limit on an uploaded audio file
WAV_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"})
RESPONSE_FORMATS = ("json", "verbose_json", "text")
SPEECH_WORDS = ("moonshine", "whisper", "speech")  # in a speech model's model_type/architectures
WAV_NEEDED = "a WAV file of 16 kHz mono 16-bit PCM (16000 Hz, 1 channel, 16-bit samples)"
CONVERT_HINT = "convert it first, e.g. `ffmpeg -i IN -ar 16000 -ac 1 -c:a pcm_s16le OUT.wav`"

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # a message of a kind the stream does not take
CLOSE_INVALID = 1007  # a message whose content is malformed
CLOSE_POLICY = 1008  # another model's name
CLOSE_ENGINE = 1011  # the engine failed, or cannot serve audio


def is_speech_model(model_dir: Path) -> bool:
    """Whether the model in ``model_dir`` transcribes speech (Moonshine, Whisper, ...): its config
    names a speech architecture, or its encoder has a sample rate."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    names = [config.get("model_type"), *(config.get("architectures") or ())]
    if any(word in str(name).lower() for name in names for word in SPEECH_WORDS):
        return True
    encoder = config.get("encoder_config")
    return isinstance(encoder, dict) and "sample_rate" in encoder


def not_speech_message(model: ServedModel) -> str:
    return (
        f"the model {model.name!r} is a text model, so this server transcribes no audio; serve a "
        "speech engine and model, e.g. `vibeserve serve scenarios/streaming_asr/starter --scale "
        "asr-tiny`"
    )


class _Close(Exception):
    """End the stream with an error message and this close code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


_LEFT = object()  # the client went away


class _Feed:
    """The client's audio not yet submitted, re-cut into whole 20 ms frames."""

    def __init__(self, session: AudioSession) -> None:
        self.session = session
        self.pending = bytearray()
        self.received = 0  # bytes of audio the client sent

    def add(self, data: bytes) -> None:
        self.pending += data
        self.received += len(data)
        usable = len(self.pending) // FRAME_BYTES * FRAME_BYTES
        if usable:
            self.session.submit(bytes(self.pending[:usable]))
            del self.pending[:usable]

    def finish(self, data: bytes) -> None:
        self.pending += data
        self.received += len(data)
        if self.received % 2:
            raise _Close(
                CLOSE_INVALID,
                f"the stream's audio is {self.received} bytes, not a whole number of int16 "
                "samples; send 16 kHz mono PCM16 (2 bytes a sample, little-endian)",
            )
        if not self.received:
            raise _Close(
                CLOSE_INVALID,
                'the stream carried no audio; send PCM16 audio (binary messages, or {"type": '
                '"audio", "audio": BASE64}) before {"type": "finish"}',
            )
        pad = -len(self.pending) % FRAME_BYTES  # silence up to a whole frame
        self.session.submit(bytes(self.pending) + bytes(pad), final=True)
        self.pending.clear()


def _decode_audio(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _Close(
            CLOSE_INVALID,
            f'"audio" must be base64 text of PCM16 samples, got {type(value).__name__}',
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Close(
            CLOSE_INVALID, '"audio" is not valid base64; encode the PCM16 bytes with base64'
        ) from None


def read_wav(data: bytes) -> bytes:
    """The int16 samples of a 16 kHz mono 16-bit PCM WAV; ``ApiError`` 400 for anything else."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            pcm = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, ValueError) as error:
        raise ApiError(
            400, f"'file' is not a readable WAV file ({error}); send {WAV_NEEDED}", param="file"
        ) from None
    if (rate, channels, width) != (AUDIO_SAMPLE_RATE, 1, 2):
        raise ApiError(
            400,
            f"'file' is a WAV of {rate} Hz, {channels} channel(s), {8 * width}-bit samples; this "
            f"server needs {WAV_NEEDED}: {CONVERT_HINT}",
            param="file",
        )
    pcm = pcm[: len(pcm) // 2 * 2]
    if not pcm:
        raise ApiError(400, "'file' holds no audio samples", param="file")
    return pcm


def _header(name: str, value: str) -> Message:
    """A header alone, to read its parameters (``boundary``, ``name``, ``filename``)."""
    message = Message()
    message[name] = value
    return message


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[bytes, str | None]]:
    """The fields of a multipart/form-data body: name -> (content, filename or None)."""
    boundary = _header("content-type", content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ApiError(400, "the multipart/form-data Content-Type names no boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    parts = (b"\r\n" + body).split(delimiter)
    fields: dict[str, tuple[bytes, str | None]] = {}
    for part in parts[1:]:  # parts[0]: the preamble
        if part.startswith(b"--"):  # the closing delimiter
            return fields
        head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            raise ApiError(400, "a multipart/form-data part has no blank line after its headers")
        disposition = Message()
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = _header("content-disposition", value.strip())
        field = disposition.get_param("name", header="content-disposition")
        if field is None:
            raise ApiError(400, "a multipart/form-data part has no Content-Disposition name")
        fields[collapse_rfc2231_value(field)] = (content, disposition.get_filename())
    raise ApiError(400, "the multipart/form-data body is cut short (no closing boundary)")


class AudioRoutes:
    """The audio handlers, sharing the text routes' driver, tokenizer and model."""

    def __init__(self, driver: EngineDriver, model: ServedModel, tokenizer: Any) -> None:
        self.driver = driver
        self.model = model
        self.tokenizer = tokenizer
        self.speech = is_speech_model(model.path)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # -- the WebSocket stream --------------------------------------------------------------------
    async def stream(self, websocket: WebSocket) -> None:
        await websocket.accept()
        asked = websocket.query_params.get("model")
        if asked is not None and asked != self.model.name:
            message = f"the model {asked!r} does not exist; this server serves {self.model.name!r}"
            await _refuse(websocket, CLOSE_POLICY, message)
            return
        if not self.speech:
            await _refuse(websocket, CLOSE_ENGINE, not_speech_message(self.model))
            return
        if (failure := self.driver.failure) is not None:
            await _refuse(websocket, CLOSE_ENGINE, f"the engine failed: {failure}")
            return
        session = self.driver.open_stream(f"audio-{uuid.uuid4().hex}")
        reader = asyncio.create_task(self._read(websocket, _Feed(session)))
        done = False
        try:
            done = await self._answer(websocket, session)
        finally:
            reader.cancel()
            if not done:  # the client left, erred, or the server stops: close the engine's stream
                session.abandon()

    async def _read(self, websocket: WebSocket, feed: _Feed) -> None:
        """The client's messages, submitted as chunks; what ends them goes on the session queue."""
        queue = feed.session.queue
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    queue.put_nowait(_LEFT)
                    return
                if feed.session.finished:
                    raise _Close(
                        CLOSE_UNSUPPORTED,
                        'the stream is finished: no message may follow {"type": "finish"}; open '
                        "a new connection for new audio",
                    )
                if message.get("bytes") is not None:
                    feed.add(message["bytes"])
                else:
                    self._text_message(message.get("text") or "", feed)
        except _Close as close:
            queue.put_nowait(close)
        except (WebSocketDisconnect, RuntimeError, OSError):
            queue.put_nowait(_LEFT)

    @staticmethod
    def _text_message(text: str, feed: _Feed) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            raise _Close(
                CLOSE_INVALID,
                f"a text message must be JSON, got {text[:80]!r}; send PCM16 audio as binary "
                'messages (or {"type": "audio", "audio": BASE64}) and end with {"type": "finish"}',
            ) from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "audio":
            feed.add(_decode_audio(data.get("audio")))
        elif kind == "finish":
            audio = data.get("audio")
            feed.finish(b"" if audio is None else _decode_audio(audio))
        else:
            raise _Close(
                CLOSE_UNSUPPORTED,
                f"unknown message {text[:80]!r}; a text message is "
                '{"type": "audio", "audio": BASE64} or {"type": "finish"}',
            )

    async def _answer(self, websocket: WebSocket, session: AudioSession) -> bool:
        """Send each event of the stream until its final one (True), or end it early (False)."""
        while True:
            item = await session.queue.get()
            if isinstance(item, Event):
                body = {
                    "type": "final" if item.finished else "partial",
                    "chunk": (item.payload or {}).get("chunk"),
                    "text": self.decode(item.token_ids),
                    "token_ids": list(item.token_ids),
                }
                try:
                    await websocket.send_text(json.dumps(body))
                    if item.finished:
                        await websocket.close(CLOSE_NORMAL)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    return item.finished  # the client left
                if item.finished:
                    return True
            elif isinstance(item, EngineFailure):
                await _refuse(websocket, CLOSE_ENGINE, f"the engine failed: {item}")
                return False
            elif isinstance(item, _Close):
                await _refuse(websocket, item.code, str(item))
                return False
            else:  # _LEFT
                return False

    # -- offline transcription -----------------------------------------------------------------
    async def transcriptions(self, request: HttpRequest) -> Response:
        try:
            fields, audio = await self._upload(request)
            model = fields.get("model")
            if model is not None and model != self.model.name:
                raise ApiError(
                    404,
                    f"the model {model!r} does not exist; this server serves {self.model.name!r}",
                    param="model",
                    kind="NotFoundError",
                )
            response_format = fields.get("response_format") or "json"
            if response_format not in RESPONSE_FORMATS:
                raise ApiError(
                    400,
                    f"response_format {response_format!r} is not supported; use one of "
                    f"{', '.join(RESPONSE_FORMATS)}",
                    param="response_format",
                )
            temperature = fields.get("temperature")
            if temperature is not None and _float(temperature) != 0:
                raise ApiError(
                    400,
                    "decoding is greedy: temperature must be 0 (or left out)",
                    param="temperature",
                )
            if not self.speech:
                raise ApiError(400, not_speech_message(self.model), param="model")
            pcm = read_wav(audio)
            if (failure := self.driver.failure) is not None:
                raise _engine_error(failure)
            token_ids = await self._transcribe(pcm)
        except ApiError as error:
            return error.response()
        text = self.decode(token_ids)
        if response_format == "text":
            return PlainTextResponse(text)
        if response_format == "verbose_json":
            seconds = len(pcm) // 2 / AUDIO_SAMPLE_RATE
            return JSONResponse(
                {"task": "transcribe", "duration": seconds, "text": text, "token_ids": token_ids}
            )
        return JSONResponse({"text": text})

    async def _upload(self, request: HttpRequest) -> tuple[dict[str, str], bytes]:
        """The form fields and the WAV bytes of a transcription request."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            raise _too_large()
        body = await request.body()
        if len(body) > MAX_UPLOAD_BYTES:
            raise _too_large()
        content_type = request.headers.get("content-type", "")
        media = content_type.partition(";")[0].strip().lower()
        if media == "multipart/form-data":
            parts = parse_multipart(body, content_type)
            if "file" not in parts:
                raise ApiError(
                    400,
                    f"the form has no 'file' field; upload {WAV_NEEDED} as 'file'",
                    param="file",
                )
            fields = {
                name: content.decode(errors="replace").strip()
                for name, (content, filename) in parts.items()
                if name != "file" and filename is None
            }
            return fields, parts["file"][0]
        if media in WAV_TYPES:
            return dict(request.query_params), body
        raise ApiError(
            400,
            f"Content-Type {media or 'none'!r}: send multipart/form-data with the audio as 'file' "
            f"(OpenAI's form), or the WAV itself with Content-Type: audio/wav; the audio must be "
            f"{WAV_NEEDED}",
        )

    async def _transcribe(self, pcm: bytes) -> list[int]:
        """The final transcript of ``pcm`` sent as one stream of 2 s chunks."""
        session = self.driver.open_stream(f"transcription-{uuid.uuid4().hex}")
        step = 2 * OFFLINE_CHUNK_SAMPLES
        starts = range(0, len(pcm), step)
        for start in starts:
            piece = pcm[start : start + step]
            final = start == starts[-1]
            if final:
                piece += bytes(-len(piece) % FRAME_BYTES)
            session.submit(piece, final=final)
        try:
            while True:
                event = await session.receive()
                if event.finished:
                    return list(event.token_ids)
        except EngineFailure as failure:
            raise _engine_error(failure) from None
        finally:
            session.abandoned = True  # nobody reads what still comes (the final is submitted)


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ApiError(
            400, f"temperature must be a number, got {value!r}", param="temperature"
        ) from None


def _too_large() -> ApiError:
    return ApiError(
        413,
        f"the upload is over {MAX_UPLOAD_BYTES >> 20} MiB; send shorter audio, or stream it over "
        f"the WebSocket {STREAM_PATH}",
        param="file",
    )


async def _refuse(websocket: WebSocket, code: int, message: str) -> None:
    """Send the error message and close with ``code`` (a client that already left is fine)."""
    try:
        await websocket.send_text(json.dumps({"type": "error", "error": message}))
        reason = message.encode()[:120].decode(errors="ignore")  # a close reason: <= 123 bytes
        await websocket.close(code, reason)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass

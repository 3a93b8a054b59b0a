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

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST
/v1/chat/completions`` (text models), and for a speech model (its ``/v1/models`` card says
``"task": "transcription"``) the WebSocket ``/v1/audio/stream`` (binary PCM16 16 kHz mono messages
and a closing ``{"type": "finish"}`` in; one ``{"type": "partial" | "final", "chunk", "text",
"token_ids"}`` per chunk out) and ``POST /v1/audio/transcriptions`` (a WAV file, OpenAI's form).
``audio.py`` describes the audio protocol in full. For an image model (``"task":
"text-to-image"``) ``POST /v1/images/generations`` (OpenAI's images API: ``b64_json`` or a raw
``png`` body, plus ``seed``, ``num_inference_steps``, ``guidance_scale`` and ``probe_step``);
``images.py`` describes it.
"""

from pytest_vibeserve.serve.app import (
    base_url,
    bind_socket,
    create_app,
    hosted_engine,
    run_server,
    serve_in_thread,
)
from pytest_vibeserve.serve.audio import AudioRoutes, is_speech_model, parse_multipart, read_wav
from pytest_vibeserve.serve.driver import AudioSession, EngineDriver
from pytest_vibeserve.serve.errors import DEFAULT_LIMITS, GRACEFUL_SHUTDOWN_S, ApiError
from pytest_vibeserve.serve.images import ImageRoutes, parse_image_body
from pytest_vibeserve.serve.requests import Generation, RequestParser, ServedModel
from pytest_vibeserve.serve.responses import Answer, Delta, Transcript

__all__ = [
    "DEFAULT_LIMITS",
    "GRACEFUL_SHUTDOWN_S",
    "Answer",
    "ApiError",
    "AudioRoutes",
    "AudioSession",
    "Delta",
    "EngineDriver",
    "Generation",
    "ImageRoutes",
    "RequestParser",
    "ServedModel",
    "Transcript",
    "base_url",
    "bind_socket",
    "create_app",
    "hosted_engine",
    "is_speech_model",
    "parse_image_body",
    "parse_multipart",
    "read_wav",
    "run_server",
    "serve_in_thread",
]

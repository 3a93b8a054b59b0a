"""Text to image: OpenAI's ``POST /v1/images/generations`` for a text-to-image model.

The body is OpenAI's: ``prompt`` (a string of at most the model's ``max_text_tokens`` UTF-8 bytes;
empty is the unconditional image), ``n`` (1 only), ``size`` (``"WxH"``: only the model's own square
size, or ``"auto"``), ``response_format`` (``"b64_json"``, the default, or ``"png"``; ``"url"`` is
not offered), with diffusers-style vibeserve extensions: ``seed`` (the initial noise, default 0),
``num_inference_steps`` (schedule points, default 20: one model call fewer), ``guidance_scale``
(classifier-free guidance, default 5.0) and ``probe_step`` (the Euler step whose latent is reported,
default 0). Unknown fields are ignored, as on the text routes.

``b64_json`` answers ``{"created", "data": [{"b64_json": PNG base64, "revised_prompt": null}],
"vibeserve": {...}}``, where ``vibeserve`` carries the rest of the engine's image payload
(``contract.image_event``): ``shape``, ``probe_shape``, ``probe_latent``, ``trajectory``,
``model_calls``, ``uncond_calls``, ``timings_ms``. PNG is lossless, so a client rebuilds the exact
payload from it (``EndpointEngine.run`` does). ``png`` answers the PNG alone (``image/png``).

A server of a text or speech model refuses the route (400, param ``model``); a server of an image
model refuses the text and audio routes the same way (``app.py`` routes them here).
"""

from __future__ import annotations

import base64
import io
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from pytest_vibeserve.contract import ImageRequest, decode_image
from pytest_vibeserve.runner import EngineFailure
from pytest_vibeserve.serve.audio import CLOSE_ENGINE, _refuse
from pytest_vibeserve.serve.driver import EngineDriver
from pytest_vibeserve.serve.errors import ApiError, _engine_error
from pytest_vibeserve.serve.requests import ServedModel, _is_int, json_body

IMAGES_PATH = "/v1/images/generations"
IMAGE_TASK = "text-to-image"  # a /v1/models card's "task" for an image model
RESPONSE_FORMATS = ("b64_json", "png")
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
MAX_STEPS = 1000  # schedule points; more is a typo, not a request
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range
PNG_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> the PNG mode that holds them exactly
# the payload fields beside the pixels, in contract.image_event's order
PAYLOAD_FIELDS = (
    "probe_shape",
    "probe_latent",
    "trajectory",
    "model_calls",
    "uncond_calls",
    "timings_ms",
)


@dataclass(frozen=True, slots=True)
class ImageGeneration:
    """One validated image request: what the engine is asked and how the answer is shaped."""

    prompt: str
    seed: int
    steps: int
    guidance: float
    probe_step: int
    response_format: str  # one of RESPONSE_FORMATS

    def engine_request(self, request_id: str) -> ImageRequest:
        return ImageRequest(
            request_id=request_id,
            prompt=self.prompt,
            seed=self.seed,
            steps=self.steps,
            guidance=self.guidance,
            probe_step=self.probe_step,
        )


def parse_image_body(body: dict[str, Any], model: ServedModel) -> ImageGeneration:
    """The generation ``body`` asks of ``model`` (an image model); ``ApiError`` 400 naming the
    first field that is wrong and how to fix it."""
    size = model.image_size
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        message = f"prompt must be a string (the image's description), got {_shown(prompt)}"
        raise ApiError(400, message, param="prompt")
    length = len(prompt.encode("utf-8"))
    if length > model.max_model_len:
        raise ApiError(
            400,
            f"prompt is {length} UTF-8 bytes, over this model's max_text_tokens="
            f"{model.max_model_len} (its prompt tokens are UTF-8 bytes); shorten it",
            param="prompt",
        )
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise ApiError(
            400, f"n must be 1 (one image a request), got {_shown(n)}; send n requests", param="n"
        )
    asked = body.get("size")
    if asked is not None and asked not in (f"{size}x{size}", "auto"):
        raise ApiError(
            400,
            f"size {_shown(asked)} is not offered: this model makes {size}x{size} images only; "
            f'send "size": "{size}x{size}" or leave size out',
            param="size",
        )
    response_format = body.get("response_format")
    if response_format == "url":
        raise ApiError(
            400,
            "response_format 'url' is not offered (this server stores no images); use "
            "'b64_json' (the default) or 'png'",
            param="response_format",
        )
    if response_format is not None and response_format not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"response_format {_shown(response_format)} is not supported; use 'b64_json' (the "
            "default) or 'png'",
            param="response_format",
        )
    seed = _int(body, "seed", 0, 0, MAX_SEED)
    steps = _int(body, "num_inference_steps", DEFAULT_STEPS, 2, MAX_STEPS)
    probe_step = _int(body, "probe_step", 0, 0, steps - 2)
    guidance = body.get("guidance_scale", DEFAULT_GUIDANCE)
    if guidance is None:
        guidance = DEFAULT_GUIDANCE
    if (
        not isinstance(guidance, int | float)
        or isinstance(guidance, bool)
        or not math.isfinite(guidance)
        or guidance < 0
    ):
        raise ApiError(
            400,
            f"guidance_scale must be a number >= 0 (0: no guidance), got {_shown(guidance)}",
            param="guidance_scale",
        )
    return ImageGeneration(
        prompt=prompt,
        seed=seed,
        steps=steps,
        guidance=float(guidance),
        probe_step=probe_step,
        response_format=response_format or "b64_json",
    )


def _int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        hint = ""
        if name == "probe_step":
            hint = f" (one of the num_inference_steps - 1 = {high + 1} Euler steps)"
        if name == "num_inference_steps":
            hint = " (schedule points: one model call fewer)"
        raise ApiError(
            400,
            f"{name} must be an integer in [{low}, {high}]{hint}, got {_shown(value)}",
            param=name,
        )
    return value


def _shown(value: Any) -> str:
    return repr(value)[:80]


def png_bytes(pixels: Any) -> bytes:
    """The (H, W, C) uint8 image as a PNG (lossless: it decodes to the same bytes)."""
    from PIL import Image

    channels = pixels.shape[2]
    if channels not in PNG_MODES:
        raise ApiError(
            500,
            f"the engine's image has {channels} channels; a PNG holds 1, 3 or 4 (an engine "
            "answers with HxWx3 uint8 pixels)",
            kind="InternalServerError",
        )
    image = pixels[:, :, 0] if channels == 1 else pixels
    out = io.BytesIO()
    # compress_level 1: the encode is on the event loop, and its bytes are never stored
    Image.fromarray(image, PNG_MODES[channels]).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def not_image_message(model: ServedModel, *, speech: bool) -> str:
    kind = "transcribes speech" if speech else "is a text model"
    return (
        f"the model {model.name!r} {kind}, so this server makes no images; serve a text-to-image "
        "engine and model (a model built with `--scale t2i-tiny`) for /v1/images/generations"
    )


def image_model_message(model: ServedModel, route: str) -> str:
    return (
        f"the model {model.name!r} is a text-to-image model ({model.image_size}x"
        f"{model.image_size} images), so this server answers no {route}; post a prompt to "
        f"{IMAGES_PATH}"
    )


class ImageRoutes:
    """The image handler, sharing the other routes' driver and model; for an image model, also
    the refusals of the text and audio routes."""

    def __init__(self, driver: EngineDriver, model: ServedModel, *, speech: bool) -> None:
        self.driver = driver
        self.model = model
        self.speech = speech  # a speech model (for the refusal's wording)

    async def generations(self, request: HttpRequest) -> Response:
        try:
            if not self.model.makes_images:  # its engine has no add_image: its worker would die
                message = not_image_message(self.model, speech=self.speech)
                raise ApiError(400, message, param="model")
            generation = parse_image_body(await json_body(request, self.model), self.model)
            if (failure := self.driver.failure) is not None:
                raise _engine_error(failure)
            engine_request = generation.engine_request(f"img-{uuid.uuid4().hex}")
            try:
                event = await self.driver.generate_image(engine_request)
            except EngineFailure as failure:
                raise _engine_error(failure) from None
            payload = event.payload or {}  # checked by the driver with image_problem
            png = png_bytes(decode_image(payload))
        except ApiError as error:
            return error.response()
        if generation.response_format == "png":
            return Response(png, media_type="image/png")
        extras = {"shape": payload["shape"], **{k: payload[k] for k in PAYLOAD_FIELDS}}
        image = {"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": None}
        return JSONResponse({"created": int(time.time()), "data": [image], "vibeserve": extras})

    async def not_text(self, _: HttpRequest) -> Response:
        """/v1/completions and /v1/chat/completions of an image model."""
        message = image_model_message(self.model, "text completions")
        return ApiError(400, message, param="model").response()

    async def not_audio(self, _: HttpRequest) -> Response:
        """/v1/audio/transcriptions of an image model."""
        message = image_model_message(self.model, "audio transcriptions")
        return ApiError(400, message, param="model").response()

    async def not_audio_stream(self, websocket: WebSocket) -> None:
        """The WebSocket /v1/audio/stream of an image model: an error message, then 1011 (as the
        audio routes refuse a model that cannot serve audio)."""
        await websocket.accept()
        await _refuse(websocket, CLOSE_ENGINE, image_model_message(self.model, "audio streams"))

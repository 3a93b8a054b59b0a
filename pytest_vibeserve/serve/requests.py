"""OpenAI request bodies, validated field by field, into the engine contract's requests."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request as HttpRequest

from pytest_vibeserve.contract import Request
from pytest_vibeserve.serve.errors import DEFAULT_MAX_TOKENS, MAX_LOGPROBS, ApiError


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str  # what clients put in "model"
    path: Path
    max_model_len: int  # prompt plus output tokens (an image model: prompt bytes)
    vocab_size: int
    created: int = field(default_factory=lambda: int(time.time()))
    image_size: int | None = None  # a text-to-image model: the side of its square images, pixels

    @property
    def makes_images(self) -> bool:
        """A text-to-image model: prompts are UTF-8 bytes, it has no tokenizer files."""
        return self.image_size is not None

    @classmethod
    def from_dir(cls, model_dir: Path, name: str | None = None) -> ServedModel:
        """The model in ``model_dir`` (its config.json), served as ``name`` (default: dir name).

        A config with a top-level ``image_size`` and ``max_text_tokens`` (``showo2-t2i``, built by
        ``python -m reference_impls.models --scale t2i-tiny``) is a text-to-image model."""
        config = json.loads((Path(model_dir) / "config.json").read_text())
        if "image_size" in config and "max_text_tokens" in config:
            return cls(
                name=name or Path(model_dir).name,
                path=Path(model_dir),
                max_model_len=int(config["max_text_tokens"]),
                vocab_size=int(config.get("vocab_size", 256)),
                image_size=int(config["image_size"]),
            )
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


async def json_body(request: HttpRequest, model: ServedModel) -> dict[str, Any]:
    """The request's JSON object; 400 for anything else, 404 when it names another model."""
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    asked = body.get("model")
    if asked is not None and asked != model.name:
        raise ApiError(
            404,
            f"the model {asked!r} does not exist; this server serves {model.name!r}",
            param="model",
            kind="NotFoundError",
        )
    return body


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

"""Completions and chat responses, whole or as SSE chunks, with incremental detokenizing."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pytest_vibeserve.serve.errors import LOGPROB_FLOOR, REPLACEMENT_CHAR
from pytest_vibeserve.serve.requests import Generation


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

    def finish_reason(self, generation: Generation) -> str:
        """ "length" where the engine ran out of max_tokens, else "stop": a stop token, or an end
        the engine reached itself (a grammar whose document is complete)."""
        if self.token_ids and self.token_ids[-1] in generation.stop_token_ids:
            return "stop"
        return "length" if len(self.token_ids) >= generation.max_tokens else "stop"


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

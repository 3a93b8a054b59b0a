"""The reference's constrained greedy decoder: JSON-schema requests (scenario json_decoding).

The pinned library and configuration (``CONFIG``, recorded in every report and in the reference
cache key): llguidance, the schema compiled with compact separators (``","`` and ``":"``, no free
whitespace), then at every position:

- the tokens the grammar forces (``LLMatcher.compute_ff_tokens``: the canonical tokens of the bytes
  it fully determines) are taken as they are, no sampling;
- otherwise the token is the argmax of the model's logits over the tokens the grammar allows.

One model forward per token, forced or not (the forward also writes that token's keys and values).
A forced token's margin is ``FORCED_MARGIN``, so no near-tie ever excuses an engine that differs
there; a sampled one's is top-1 minus top-2 among the allowed tokens. Top logprobs are those of the
masked distribution. Decoding stops after the end-of-sequence token the grammar allows once the
document is complete (the matcher stops), or at ``max_new_tokens``.

``llguidance`` masks differ from xgrammar's and outlines' (../shared/CPU-NOTES.md), so another
library, or these options changed, is another reference: the version is part of ``config_id``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from reference_impls.greedy import ReferenceOutput

LIBRARY = "llguidance"
COMPILE_OPTIONS = {"whitespace_flexible": False}  # compact: "," and ":", no free whitespace
FORCED_MARGIN = 1e9  # the margin recorded for a token the grammar forces: never a near-tie


class GrammarError(ValueError):
    """A response_format the pinned library cannot compile (the message says why)."""


def config_id() -> str:
    """The library, its version and the options: what makes two references the same."""
    options = json.dumps(COMPILE_OPTIONS, sort_keys=True, separators=(",", ":"))
    return f"{LIBRARY}=={version(LIBRARY)} {options} forced-tokens"


def schema_of(response_format: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema an OpenAI ``response_format`` asks for.

    ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` gives its schema;
    ``{"type": "json_object"}`` any JSON object."""
    if not isinstance(response_format, dict):
        raise GrammarError(
            f"response_format must be an object, got {type(response_format).__name__}"
        )
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise GrammarError(
            f"response_format type {kind!r} is not supported; use 'json_schema' (with "
            "json_schema.schema) or 'json_object'"
        )
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise GrammarError("response_format json_schema.schema must be a JSON object (the schema)")
    return schema


@functools.lru_cache(maxsize=4)
def ll_tokenizer(model_dir: str) -> Any:
    """The model's tokenizer as llguidance sees it (built once per process: ~0.4 s)."""
    import llguidance.hf
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = int(AutoConfig.from_pretrained(model_dir).vocab_size)
    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=max(vocab, len(tokenizer)))


def compile_grammar(response_format: dict[str, Any]) -> str:
    """The llguidance grammar of a response_format under the pinned options."""
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_json_schema(schema_of(response_format), defaults=COMPILE_OPTIONS)


def new_matcher(model_dir: str, response_format: dict[str, Any]) -> Any:
    """A fresh matcher at the start of the document; a schema it cannot compile raises."""
    from llguidance import LLMatcher

    matcher = LLMatcher(ll_tokenizer(model_dir), compile_grammar(response_format), log_level=0)
    if matcher.is_error():
        raise GrammarError(f"{LIBRARY} cannot compile this schema: {matcher.get_error()}")
    return matcher


def allowed_tokens(matcher: Any, vocab: int) -> np.ndarray:
    """The grammar's mask at the matcher's position: a bool array over ``vocab`` token ids."""
    bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
    mask = np.unpackbits(bits, bitorder="little")[:vocab].astype(bool)
    if mask.size < vocab:  # ids past the tokenizer's vocabulary are never allowed
        mask = np.concatenate([mask, np.zeros(vocab - mask.size, dtype=bool)])
    return mask


def masked_logprobs(logits: torch.Tensor, allowed: np.ndarray) -> torch.Tensor:
    """log-softmax over the allowed tokens (-inf elsewhere)."""
    keep = torch.from_numpy(allowed)
    masked = torch.where(keep, logits.float(), torch.tensor(float("-inf")))
    return torch.log_softmax(masked, dim=-1)


@dataclass(slots=True)
class ConstrainedStep:
    token: int
    margin: float
    top_logprobs: dict[int, float]
    forced: bool
    finished: bool


class ConstrainedStepper:
    """Constrained greedy decoding of one request; each ``step()`` runs exactly one forward and
    yields one token. ``forced_tokens`` counts the tokens the grammar determined."""

    def __init__(
        self,
        model: PreTrainedModel,
        model_dir: str | Path,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        response_format: dict[str, Any],
        *,
        stop_token_ids: Sequence[int] = (),
        top_k: int = 0,
    ) -> None:
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model
        self.vocab = int(model.config.vocab_size)
        self.matcher = new_matcher(str(model_dir), response_format)
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.max_new_tokens = max_new_tokens
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.top_k = top_k
        self.tokens: list[int] = []
        self.forward_calls = 0
        self.forced_tokens = 0
        self.finished = False
        self._forced: list[int] = []  # forced tokens not yet emitted
        self._cache = DynamicCache(config=model.config)

    def _forward(self) -> torch.Tensor:
        feed = self.tokens[-1:] if self.tokens else self.prompt_ids
        input_ids = torch.tensor([feed], dtype=torch.long, device=self.model.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids, cache=self._cache, use_cache=True, logits_to_keep=1
            )
        self.forward_calls += 1
        return out.logits[0, -1].float()

    def step(self) -> ConstrainedStep:
        if self.finished:
            raise RuntimeError("ConstrainedStepper.step() called after the sequence finished")
        logits = self._forward()
        if not self._forced:
            self._forced = list(self.matcher.compute_ff_tokens())
        if self._forced:
            token, margin, forced = self._forced.pop(0), FORCED_MARGIN, True
            top = {token: 0.0} if self.top_k else {}
        else:
            allowed = allowed_tokens(self.matcher, self.vocab)
            if not allowed.any():
                raise GrammarError(
                    f"the grammar allows no token after {len(self.tokens)} tokens "
                    f"({self.matcher.get_error() or 'no error reported'})"
                )
            logprobs = masked_logprobs(logits, allowed)
            count = int(allowed.sum())
            best = torch.topk(logprobs, min(2, count))
            token = int(best.indices[0])
            forced = count == 1
            if forced:
                margin = FORCED_MARGIN
            else:
                # logit margin among allowed tokens (log-softmax differences equal logit ones)
                margin = float(best.values[0] - best.values[1])
            top = _top(logprobs, token, min(self.top_k, count))
        if not self.matcher.consume_token(token):
            raise GrammarError(
                f"the grammar rejected its own token {token}: {self.matcher.get_error()}"
            )
        self.forced_tokens += forced
        self.tokens.append(token)
        self.finished = (
            len(self.tokens) >= self.max_new_tokens
            or self.matcher.is_stopped()
            or token in self.stop_token_ids
        )
        return ConstrainedStep(token, margin, top, forced, self.finished)


def _top(logprobs: torch.Tensor, token: int, k: int) -> dict[int, float]:
    if k <= 0:
        return {}
    result = {token: float(logprobs[token])}
    for idx in torch.topk(logprobs, k + 1 if k + 1 <= logprobs.numel() else k).indices.tolist():
        if len(result) >= k:
            break
        if float(logprobs[idx]) > float("-inf"):
            result.setdefault(int(idx), float(logprobs[idx]))
    return result


def constrained_decode(
    model: PreTrainedModel,
    model_dir: str | Path,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    response_format: dict[str, Any],
    *,
    stop_token_ids: Sequence[int] = (),
    top_k: int = 5,
) -> ReferenceOutput:
    """The reference output of one JSON-schema request (see the module docstring)."""
    stepper = ConstrainedStepper(
        model,
        model_dir,
        prompt_ids,
        max_new_tokens,
        response_format,
        stop_token_ids=stop_token_ids,
        top_k=top_k,
    )
    out = ReferenceOutput(tokens=[], margins=[], top_logprobs=[])
    while not stepper.finished:
        step = stepper.step()
        out.tokens.append(step.token)
        out.margins.append(step.margin)
        out.top_logprobs.append(step.top_logprobs)
    return out


def departure(model_dir: str, response_format: dict[str, Any], tokens: Sequence[int]) -> dict:
    """Where an output left the grammar: the first token the pinned grammar engine rejects, the
    text before it, or (all accepted) whether the document was left unfinished."""
    matcher = new_matcher(model_dir, response_format)
    tokenizer = ll_tokenizer(model_dir)
    tokens = [int(t) for t in tokens]
    accepted = matcher.validate_tokens(tokens)
    before = tokenizer.decode_str(tokens[:accepted])[-60:]
    if accepted < len(tokens):
        bad = tokens[accepted]
        return {
            "accepted_tokens": accepted,
            "rejected_token": bad,
            "message": (
                f"it left the schema at token {accepted} ({tokenizer.decode_str([bad])!r} "
                f"after ...{before!r})"
            ),
        }
    matcher.consume_tokens(tokens)
    finished = matcher.is_accepting() or matcher.is_stopped()
    return {
        "accepted_tokens": accepted,
        "rejected_token": None,
        "message": (
            "every token is within the schema's grammar"
            + ("" if finished else f"; the document is unfinished (ends ...{before!r})")
        ),
    }

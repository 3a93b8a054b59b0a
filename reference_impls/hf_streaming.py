"""Engines built on transformers `generate()`, streamed token by token from a background thread.

The peer engines (prompt lookup, early-exit self-speculation) are this engine with different
`generate` arguments. One request runs at a time, FIFO. `step()` blocks until `generate` has
produced at least one new token (or ended) and returns every token available.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request
from reference_impls.greedy import load_model, top_logprobs_of

DRAFT_COUNTER = "draft_forward_calls"


class _LogitsRecorder(LogitsProcessor):
    """Keeps the target model's fp32 logits per position, for top_logprobs; changes nothing.

    Keyed by the length of the sequence the logits extend. Draft passes (and prompt lookup's probe
    calls) also write here, but always before the verification forward that rewrites those same
    positions, and the streamer reads a position right after its verification: what it reads is
    always the target model's logits.
    """

    def __init__(self) -> None:
        self.by_length: dict[int, torch.Tensor] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.by_length[input_ids.shape[-1]] = scores[0].detach().float().clone()  # [vocab]
        return scores

    def pop(self, length: int) -> torch.Tensor:
        logits = self.by_length.pop(length)
        for stale in [n for n in self.by_length if n < length]:
            del self.by_length[stale]
        return logits


@dataclass(slots=True)
class _Chunk:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    ended: bool = False
    error: BaseException | None = None


class _QueueStreamer(BaseStreamer):
    def __init__(
        self,
        out: queue.Queue[_Chunk],
        prompt_len: int,
        recorder: _LogitsRecorder | None,
        top_k: int,
    ) -> None:
        self._out = out
        self._next_len = prompt_len  # sequence length before the next generated token
        self._recorder = recorder
        self._top_k = top_k
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt itself
            self._prompt_seen = True
            return
        chunk = _Chunk(tokens=[int(t) for t in value.reshape(-1).tolist()])
        for token in chunk.tokens:
            if self._recorder is not None:
                logits = self._recorder.pop(self._next_len)
                chunk.logprobs.append(top_logprobs_of(logits, token, self._top_k))
            self._next_len += 1
        self._out.put(chunk)

    def end(self) -> None:
        pass  # the thread wrapper reports the end, also when generate() raises


class _Generation:
    """One `model.generate` call for one request, running in a daemon thread."""

    def __init__(self, model: PreTrainedModel, request: Request, extra: dict[str, Any]) -> None:
        self.request = request
        self.emitted = 0
        self._queue: queue.Queue[_Chunk] = queue.Queue()
        recorder = _LogitsRecorder() if request.top_logprobs > 0 else None
        prompt = torch.tensor([request.prompt_token_ids], dtype=torch.long, device=model.device)
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=request.max_new_tokens,
            # Only the request's stop tokens end it (the engine cleared the model's default EOS).
            eos_token_id=list(request.stop_token_ids) or None,
            pad_token_id=model.generation_config.pad_token_id,
            **extra,
        )
        kwargs: dict[str, Any] = dict(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            generation_config=config,
            streamer=_QueueStreamer(self._queue, prompt.shape[1], recorder, request.top_logprobs),
        )
        if recorder is not None:
            kwargs["logits_processor"] = LogitsProcessorList([recorder])
        self._thread = threading.Thread(
            target=self._run, args=(model, kwargs), name=f"generate-{request.request_id}"
        )
        self._thread.daemon = True  # an abandoned engine must not keep the process alive
        self._thread.start()

    def _run(self, model: PreTrainedModel, kwargs: dict[str, Any]) -> None:
        error: Exception | None = None
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except Exception as exc:  # noqa: BLE001 - handed to step(), which re-raises it
            error = exc
        finally:  # always, or step() would wait forever
            self._queue.put(_Chunk(ended=True, error=error))

    def next_chunk(self) -> _Chunk:
        """Block for at least one token or the end, then take everything already available."""
        merged = self._queue.get()
        while not merged.ended:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            merged.tokens += more.tokens
            merged.logprobs += more.logprobs
            merged.ended, merged.error = more.ended, more.error
        if merged.error is not None:
            raise RuntimeError(
                f"generate() failed for request {self.request.request_id!r}: {merged.error!r}"
            ) from merged.error
        return merged

    def join(self) -> None:
        self._thread.join()


class StreamingGenerateEngine:
    """FIFO engine around `model.generate(**generate_options)`, e.g. prompt lookup decoding."""

    def __init__(
        self,
        spec: EngineSpec,
        generate_options: dict[str, Any],
        model: PreTrainedModel | None = None,
    ) -> None:
        if model is None:
            model = load_model(
                spec.model_path, device=spec.device, dtype=spec.dtype, threads=spec.threads
            )
        self.model = model
        self.generate_options = dict(generate_options)
        # generate() fills unset options from model.generation_config (EOS, repetition penalty,
        # ...); the reference applies none of them, so start from a neutral config. Batch 1: pad
        # is never used but must be set.
        gen_cfg = self.model.generation_config
        pad = next(t for t in (gen_cfg.pad_token_id, gen_cfg.eos_token_id, 0) if t is not None)
        self.model.generation_config = GenerationConfig(
            pad_token_id=pad[0] if isinstance(pad, list) else pad
        )
        self._waiting: deque[Request] = deque()
        self._active: _Generation | None = None
        self._counts = {FORWARD_COUNTER: 0, DRAFT_COUNTER: 0}
        self._full_layers = self.model.config.num_hidden_layers
        self.model.register_forward_hook(self._count_forward)

    def _count_forward(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        # Early-exit drafting runs this same model with num_hidden_layers lowered for the call.
        layers = self.model.base_model.config.num_hidden_layers
        key = FORWARD_COUNTER if layers == self._full_layers else DRAFT_COUNTER
        self._counts[key] += 1

    def add_request(self, request: Request) -> None:
        self._waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return self._active is not None or bool(self._waiting)

    def step(self) -> list[Event]:
        if self._active is None:
            if not self._waiting:
                return []
            self._active = _Generation(self.model, self._waiting.popleft(), self.generate_options)
        gen = self._active
        request = gen.request
        chunk = gen.next_chunk()
        tokens, logprobs = chunk.tokens, chunk.logprobs
        # generate() already honours both limits; enforce the contract here regardless.
        keep = min(len(tokens), request.max_new_tokens - gen.emitted)
        for i, token in enumerate(tokens[:keep]):
            if token in request.stop_token_ids:
                keep = i + 1
                break
        finished = (
            chunk.ended
            or keep < len(tokens)
            or gen.emitted + keep >= request.max_new_tokens
            or (keep > 0 and tokens[keep - 1] in request.stop_token_ids)
        )
        gen.emitted += keep
        if finished:
            gen.join()
            self._active = None
        return [
            Event(
                request_id=request.request_id,
                token_ids=tokens[:keep],
                finished=finished,
                logprobs=logprobs[:keep] if request.top_logprobs > 0 else None,
            )
        ]

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

"""Baseline engine of scenario streaming_asr: the reference's own computation, per chunk.

Each chunk is answered by ``generate`` (greedy, HF) on all the stream's audio so far with the
attention mask, exactly as ``reference_impls.asr`` computes the reference transcripts: the whole
encoder again, the decoder from scratch. One chunk at a time, in arrival order.
"""

from collections import deque

import torch
from transformers import MoonshineStreamingForConditionalGeneration

from pytest_vibeserve.contract import FORWARD_COUNTER, AudioChunk, EngineSpec, transcript_event

SAMPLE_RATE = 16000


class NaiveStreamingAsr:
    def __init__(self, spec: EngineSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.device = torch.device(spec.device)
        self.per_second = float(spec.options.get("max_tokens_per_second", 6.5))
        self.model = MoonshineStreamingForConditionalGeneration.from_pretrained(
            spec.model_path, dtype=getattr(torch, spec.dtype)
        )
        self.model.to(self.device).eval()
        self.audio: dict[str, list[torch.Tensor]] = {}
        self.queue: deque[AudioChunk] = deque()
        self.forwards = 0

    def add_audio(self, chunk: AudioChunk) -> None:
        self.queue.append(chunk)

    def has_unfinished_requests(self) -> bool:
        return bool(self.queue)

    def counters(self) -> dict[str, int]:
        return {FORWARD_COUNTER: self.forwards}

    @torch.inference_mode()
    def step(self):
        chunk = self.queue.popleft()
        pieces = self.audio.setdefault(chunk.stream_id, [])
        if chunk.num_samples:
            pieces.append(torch.from_numpy(chunk.samples()))
        values = torch.cat(pieces)[None].to(self.device)
        mask = torch.ones(values.shape, dtype=torch.long, device=self.device)
        cap = max(1, int(values.shape[1] / SAMPLE_RATE * self.per_second))
        out = self.model.generate(
            input_values=values, attention_mask=mask, max_new_tokens=cap, do_sample=False
        )
        tokens = out[0, 1:].tolist()
        self.forwards += 1 + len(tokens)  # the encoder, then one decoder forward per token
        if chunk.final:
            del self.audio[chunk.stream_id]
        return [transcript_event(chunk.stream_id, chunk.index, tokens, chunk.final)]


def create_engine(spec: EngineSpec) -> NaiveStreamingAsr:
    return NaiveStreamingAsr(spec)

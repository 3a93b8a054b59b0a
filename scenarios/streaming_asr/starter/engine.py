"""Streaming speech recognition engine for scenario streaming_asr, rendered by
agents/recipes/asr_engine.py from its features.

Features: encoder=full cross_kv=recompute max_batch=1 decoder=transformers admission=tick
    threads=None

Every chunk re-encodes all the stream's audio from its start (the sliding windows apply because
the attention mask is passed).

Every transcript projects all encoder frames to cross-attention keys/values again.

One chunk at a time: each transcript decodes alone, one row per forward.

Each audio chunk is answered by one transcript of all the stream's audio so far: greedy decoding
from the decoder start token, capped at the scenario's ``max_tokens_per_second`` (engine option,
default 6.5) tokens per second of audio, stopped after an EOS. Everything it may import is the
contract, numpy, torch and transformers.
"""

from collections import deque

import torch
from transformers import (
    AutoConfig,
    DynamicCache,
    EncoderDecoderCache,
    MoonshineStreamingForConditionalGeneration,
)

from pytest_vibeserve.contract import FORWARD_COUNTER, AudioChunk, EngineSpec, transcript_event

SAMPLE_RATE = 16000
MAX_BATCH = 1  # chunks (of different streams) whose transcripts decode together


class Stream:
    """What the engine keeps of one open audio stream."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.pieces: list[torch.Tensor] = []  # every chunk's float samples so far
        self.samples = 0


class AsrEngine:
    def __init__(self, spec: EngineSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.device = torch.device(spec.device)
        self.per_second = float(spec.options.get("max_tokens_per_second", 6.5))
        self.model = MoonshineStreamingForConditionalGeneration.from_pretrained(
            spec.model_path, dtype=getattr(torch, spec.dtype)
        )
        self.model.to(self.device).eval()
        self.config = AutoConfig.from_pretrained(spec.model_path)
        self.encoder = self.model.model.encoder
        self.decoder = self.model.model.decoder
        self.start_id = self.config.decoder_start_token_id
        self.eos_id = self.config.eos_token_id
        windows = self.config.encoder_config.sliding_windows
        self.left = [w[0] for w in windows]  # frames back, the frame itself included
        self.ahead = [max(w[1] - 1, 0) for w in windows]  # frames ahead each layer waits for
        self.streams: dict[str, Stream] = {}
        self.queue: deque[AudioChunk] = deque()
        self.forwards = 0
        self.encoder_frames = 0  # frames run through the encoder layers (first layer's rows)
        self.cross_kv_frames = 0  # frames whose cross-attention keys/values were computed
        self.decoder_rows = 0  # token rows decoded
        self.decoder_steps = 0  # decoder forwards

    def add_audio(self, chunk: AudioChunk) -> None:
        self.queue.append(chunk)

    def has_unfinished_requests(self) -> bool:
        return bool(self.queue)

    def counters(self) -> dict[str, int]:
        return {
            FORWARD_COUNTER: self.forwards,
            "encoder_frames": self.encoder_frames,
            "cross_kv_frames": self.cross_kv_frames,
            "decoder_rows": self.decoder_rows,
            "decoder_steps": self.decoder_steps,
        }

    @torch.inference_mode()
    def step(self):
        """One scheduler tick: the oldest waiting chunk of up to MAX_BATCH streams."""
        batch, seen, rest = [], set(), deque()
        while self.queue:
            chunk = self.queue.popleft()
            if len(batch) < MAX_BATCH and chunk.stream_id not in seen:
                batch.append(chunk)
                seen.add(chunk.stream_id)
            else:
                rest.append(chunk)
        self.queue = rest
        jobs = []
        for chunk in batch:
            stream = self.streams.get(chunk.stream_id)
            if stream is None:
                stream = self.streams[chunk.stream_id] = Stream(chunk.stream_id)
            if chunk.num_samples:
                stream.pieces.append(torch.from_numpy(chunk.samples()).to(self.device))
                stream.samples += chunk.num_samples
            jobs.append((stream, self.encode(stream, chunk.num_samples)))
        transcripts = self.decode(jobs)
        events = []
        for chunk, tokens in zip(batch, transcripts, strict=True):
            events.append(transcript_event(chunk.stream_id, chunk.index, tokens, chunk.final))
            if chunk.final:
                del self.streams[chunk.stream_id]
        return events

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, stream: Stream, new_samples: int) -> torch.Tensor:
        """All the stream's audio again, through the whole encoder (the sliding windows apply
        because the attention mask is passed)."""
        values = torch.cat(stream.pieces)[None]
        mask = torch.ones(values.shape, dtype=torch.long, device=self.device)
        self.forwards += 1
        states = self.encoder(values, attention_mask=mask).last_hidden_state[0]
        self.encoder_frames += states.shape[0]
        return states

    # -- decoder ---------------------------------------------------------------------------
    def decode(self, jobs) -> list[list[int]]:
        """Greedy transcripts of every job's encoder states, one decoder forward per token for
        all rows at once (rows are dropped as they finish)."""
        rows = len(jobs)
        caps = [max(1, int(s.samples / SAMPLE_RATE * self.per_second)) for s, _ in jobs]
        lengths = [states.shape[0] for _, states in jobs]
        longest = max(lengths)
        width = jobs[0][1].shape[1]
        encoder_states = jobs[0][1].new_zeros(rows, longest, width)
        frame_mask = torch.zeros(rows, longest, dtype=torch.long, device=self.device)
        for row, (_, states) in enumerate(jobs):
            encoder_states[row, : lengths[row]] = states
            frame_mask[row, : lengths[row]] = 1
        cache = EncoderDecoderCache(
            DynamicCache(config=self.config), DynamicCache(config=self.config)
        )
        self.cross_kv_frames += sum(lengths)
        tokens = torch.full((rows, 1), self.start_id, dtype=torch.long, device=self.device)
        outputs: list[list[int]] = [[] for _ in jobs]
        active = list(range(rows))
        mask = frame_mask if rows > 1 else None
        while active:
            hidden = self.decoder(
                input_ids=tokens,
                encoder_hidden_states=encoder_states.clone(),  # the decoder adds positions in place
                encoder_attention_mask=mask,
                cache=cache,
                use_cache=True,
            ).last_hidden_state
            picked = self.model.proj_out(hidden[:, -1]).argmax(-1).tolist()
            self.forwards += 1
            self.decoder_steps += 1
            self.decoder_rows += len(active)
            keep = []
            for position, row in enumerate(active):
                outputs[row].append(picked[position])
                if picked[position] != self.eos_id and len(outputs[row]) < caps[row]:
                    keep.append(position)
            if len(keep) < len(active):
                if not keep:
                    break
                index = torch.tensor(keep, device=self.device)
                cache.self_attention_cache.batch_select_indices(index)
                cache.cross_attention_cache.batch_select_indices(index)
                encoder_states = encoder_states[index]
                if mask is not None:
                    mask = mask[index]
                picked = [picked[p] for p in keep]
                active = [active[p] for p in keep]
            tokens = torch.tensor(picked, device=self.device)[:, None]
        return outputs


def create_engine(spec: EngineSpec) -> AsrEngine:
    return AsrEngine(spec)

"""Streaming speech recognition references: seeded random MoonshineStreaming, built offline.

MoonshineStreaming (the paper's scenario D family) turns 16 kHz audio into 5 ms frames, a causal
convolution front end halves them twice (20 ms encoder frames), and six encoder layers attend
over sliding windows (15 frames back; 3 ahead on layers 0, 1, 4, 5: 12 frames of lookahead in
all). The windows apply only when an ``attention_mask`` is passed: without one the encoder is
bidirectional. The decoder cross-attends to the encoder states plus a learned position embedding.

Models by name: ``asr-tiny`` (hidden 64, seconds to build and run) and ``asr-cpu`` (the default
config, 44M parameters: what the transformers default describes as the tiny Moonshine). Both
carry Moonshine's own 32k BPE tokenizer, taken from the ``useful-moonshine-onnx`` wheel (MIT),
fetched once from PyPI. Random weights never emit EOS: every transcript is capped at
``max_tokens_per_second`` (6.5, as Moonshine caps its own) times the seconds of audio.

The reference partial for chunk k of a stream is HF greedy ``generate`` on all the stream's audio
up to the end of chunk k, with ``attention_mask``:

    python -m reference_impls.asr --model DIR --streams STREAMS.json --out OUT.json [--threads N]

STREAMS.json: ``[{"id", "pcm16": base64 int16 little-endian, "chunk_samples",
"max_tokens_per_second"}]``; OUT.json: ``{id: [{"tokens", "margins"} per chunk]}``, written after
every stream so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reference_impls.errors import ReferenceModelUnavailable
from reference_impls.files import write_text_atomic

SAMPLE_RATE = 16000
FRAME_SAMPLES = 320  # one encoder frame: 20 ms (5 ms frames, two stride-2 convolutions)
MAX_TOKENS_PER_SECOND = 6.5
TOKENIZER_REQUIREMENT = "useful-moonshine-onnx==20251121"
TOKENIZER_WHEEL = "useful_moonshine_onnx-20251121-py3-none-any.whl"
TOKENIZER_MEMBER = "moonshine_onnx/assets/tokenizer.json"
SPEECH_MEMBER = "moonshine_onnx/assets/beckett.wav"  # 10 s of real speech, the fallback audio
DECODER_START_ID = 1  # <s>
EOS_ID = 2  # </s>
PAD_ID = 0


@dataclass(frozen=True, slots=True)
class AsrRecipe:
    """Every number that decides the bytes of a built model."""

    name: str
    hidden_size: int
    intermediate_size: int
    encoder_layers: int
    decoder_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = 32768
    # 0.02 gives flat logits and a transcript of one repeated token; 0.1 is diverse.
    initializer_range: float = 0.1
    seed: int = 0
    revision: int = 1  # bump whenever the build code below changes the bytes it writes

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.digest()}"


RECIPES = {
    "asr-tiny": AsrRecipe("asr-tiny", 64, 256, 6, 2, 4, 4),
    "asr-cpu": AsrRecipe("asr-cpu", 320, 1280, 6, 6, 8, 8),
}


def tokens_cap(num_samples: int, per_second: float = MAX_TOKENS_PER_SECOND) -> int:
    """At most this many tokens transcribe ``num_samples`` of audio (at least one)."""
    return max(1, int(num_samples / SAMPLE_RATE * per_second))


def build_config(recipe: AsrRecipe) -> Any:
    from transformers import MoonshineStreamingConfig

    return MoonshineStreamingConfig(
        encoder_config={
            "hidden_size": recipe.hidden_size,
            "intermediate_size": recipe.intermediate_size,
            "num_hidden_layers": recipe.encoder_layers,
            "num_attention_heads": recipe.num_attention_heads,
            "num_key_value_heads": recipe.num_key_value_heads,
        },
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.decoder_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        initializer_range=recipe.initializer_range,
        decoder_start_token_id=DECODER_START_ID,
        bos_token_id=DECODER_START_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def tokenizer_wheel(downloads_dir: Path, pip_options: Sequence[str] = ()) -> Path:
    from reference_impls.smollm2 import fetch_wheel

    return fetch_wheel(
        downloads_dir,
        pip_options,
        requirement=TOKENIZER_REQUIREMENT,
        wheel_name=TOKENIZER_WHEEL,
        what="Moonshine's tokenizer (the useful-moonshine-onnx wheel)",
    )


def wheel_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except (zipfile.BadZipFile, KeyError) as error:
        raise ReferenceModelUnavailable(
            f"{wheel} lacks {member} ({error}): delete it and run again to fetch it anew"
        ) from None


def build_asr(out_dir: Path, recipe: AsrRecipe, downloads_dir: Path) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        MoonshineStreamingForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    tokenizer_file = out_dir / "tokenizer.json"
    tokenizer_file.write_bytes(wheel_member(tokenizer_wheel(downloads_dir), TOKENIZER_MEMBER))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = MoonshineStreamingForConditionalGeneration(build_config(recipe))
    model.generation_config = GenerationConfig(
        decoder_start_token_id=DECODER_START_ID,
        bos_token_id=DECODER_START_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        do_sample=False,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_text_atomic(out_dir / "vibeserve-recipe.json", json.dumps(asdict(recipe), indent=2))


# -- the reference transcriber ---------------------------------------------------------------
def pcm16_to_float(pcm: bytes) -> Any:
    """int16 little-endian samples -> float32 in [-1, 1): the one conversion every engine uses."""
    import numpy as np

    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def load_model(model_dir: Path, device: str = "cpu") -> Any:
    import torch
    from transformers import MoonshineStreamingForConditionalGeneration

    model = MoonshineStreamingForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32
    )
    return model.to(device).eval()


def greedy_transcribe(
    model: Any, samples: Any, per_second: float = MAX_TOKENS_PER_SECOND
) -> tuple[list[int], list[float]]:
    """HF greedy on ``samples`` (float32, 16 kHz) with attention_mask: tokens after the decoder
    start (EOS included if emitted) and the top-1 minus top-2 logit margin of each."""
    import torch

    device = next(model.parameters()).device
    values = torch.as_tensor(samples, dtype=torch.float32, device=device)[None]
    mask = torch.ones(values.shape, dtype=torch.long, device=device)
    with torch.inference_mode():
        out = model.generate(
            input_values=values,
            attention_mask=mask,
            max_new_tokens=tokens_cap(values.shape[1], per_second),
            do_sample=False,
            num_beams=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, 1:].tolist()
    margins = []
    for logits in out.logits[: len(tokens)]:
        top = torch.topk(logits[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    return tokens, margins


def transcribe_streams(
    model: Any, streams: list[dict[str, Any]], out_file: Path
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    if out_file.exists():
        results = json.loads(out_file.read_text())
    for stream in streams:
        if stream["id"] in results:
            continue
        samples = pcm16_to_float(base64.b64decode(stream["pcm16"]))
        step = int(stream["chunk_samples"])
        per_second = float(stream.get("max_tokens_per_second", MAX_TOKENS_PER_SECOND))
        chunks = math.ceil(len(samples) / step)
        partials = []
        for k in range(1, chunks + 1):
            tokens, margins = greedy_transcribe(model, samples[: k * step], per_second)
            partials.append({"tokens": tokens, "margins": margins})
        results[stream["id"]] = partials
        write_text_atomic(out_file, json.dumps(results))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--streams", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.device)
    transcribe_streams(model, json.loads(args.streams.read_text()), args.out)


if __name__ == "__main__":
    main()

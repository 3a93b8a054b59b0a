"""The streaming_asr engine renderer: every feature combination renders lint-clean code, and each
engine, driven in-process on the tiny model with interleaved streams, gives the reference's
transcript after every chunk."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from agents.recipes.asr_engine import AsrFeatures, render_engine
from agents.recipes.engines import load_features, write_engine
from agents.recipes.greedy_engine import FeatureError
from pytest_vibeserve.contract import AudioChunk, EngineSpec
from pytest_vibeserve.workloads.speech import speech_stream
from reference_impls import asr
from reference_impls.models import materialize

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [
    AsrFeatures(),
    AsrFeatures(encoder="incremental"),
    AsrFeatures(max_batch=4),
    AsrFeatures(encoder="incremental", cross_kv="append", max_batch=4, threads=1),
    AsrFeatures(decoder="lean"),
    AsrFeatures(max_batch=4, decoder="lean"),
    AsrFeatures(encoder="incremental", cross_kv="append", max_batch=4, decoder="lean"),
    AsrFeatures(encoder="incremental", max_batch=4, decoder="lean", admission="step"),
]
CHUNK = 32000  # 2 s


@pytest.fixture(scope="module")
def asr_tiny(vibeserve_cache) -> Path:
    return materialize("asr-tiny", vibeserve_cache)


@pytest.fixture(scope="module")
def streams() -> dict[str, bytes]:
    return {f"s{i}": speech_stream(7, i, 6.0)[0] for i in range(3)}


@pytest.fixture(scope="module")
def expected(asr_tiny, streams) -> dict[str, list[list[int]]]:
    model = asr.load_model(asr_tiny)
    out = {}
    for sid, pcm in streams.items():
        samples = asr.pcm16_to_float(pcm)
        out[sid] = [
            asr.greedy_transcribe(model, samples[: (k + 1) * CHUNK])[0]
            for k in range(len(samples) // CHUNK)
        ]
    return out


def drive(engine_dir: Path, model_dir: Path, streams: dict[str, bytes]):
    spec = importlib.util.spec_from_file_location("asr_engine_under_test", engine_dir / "engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    engine = module.create_engine(EngineSpec(model_path=str(model_dir)))
    got: dict[str, list[list[int]]] = {sid: [] for sid in streams}
    chunks = len(next(iter(streams.values()))) // (2 * CHUNK)
    for k in range(chunks):  # every stream's chunk k queued before any is answered
        for sid, pcm in streams.items():
            piece = pcm[2 * k * CHUNK : 2 * (k + 1) * CHUNK]
            engine.add_audio(AudioChunk(sid, k, piece, final=k == chunks - 1))
        while engine.has_unfinished_requests():
            for event in engine.step():
                kind = "final" if k == chunks - 1 else "partial"
                assert event.payload == {"type": kind, "chunk": k}
                got[event.request_id].append(event.token_ids)
    return got, engine.counters()


@pytest.mark.parametrize("features", VARIANTS, ids=lambda f: f.describe().replace(" ", ","))
def test_every_variant_gives_the_reference_transcripts(
    features, tmp_path, asr_tiny, streams, expected
):
    write_engine(tmp_path, features)
    got, counters = drive(tmp_path, asr_tiny, streams)
    assert got == expected
    frames = 3 * 3 * 100  # 3 streams, 3 chunks of 100 frames
    if features.encoder == "incremental":
        assert counters["encoder_frames"] == frames
    else:
        assert counters["encoder_frames"] == 3 * (1 + 2 + 3) * 100
    if features.max_batch > 1:  # the three streams' chunks share every decoder forward
        assert counters["decoder_rows"] == 3 * counters["decoder_steps"]
    else:
        assert counters["decoder_rows"] == counters["decoder_steps"]


def test_rendered_variants_pass_ruff(tmp_path):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    for index, features in enumerate([*VARIANTS, AsrFeatures(cross_kv="recompute", threads=2)]):
        write_engine(tmp_path / f"v{index}", features)
        assert load_features(tmp_path / f"v{index}") == features
    config = ["--config", str(ROOT / "pyproject.toml")]
    fmt = subprocess.run([ruff, "format", "--check", *config, str(tmp_path)], capture_output=True)
    lint = subprocess.run([ruff, "check", *config, str(tmp_path)], capture_output=True)
    assert fmt.returncode == 0, fmt.stdout.decode() + fmt.stderr.decode()
    assert lint.returncode == 0, lint.stdout.decode()


def test_the_starter_is_the_default_features_rendered():
    starter = ROOT / "scenarios" / "streaming_asr" / "starter"
    assert load_features(starter) == AsrFeatures()
    assert (starter / "engine.py").read_text() == render_engine(AsrFeatures())


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"cross_kv": "append"}, "set encoder='incremental'"),
        ({"encoder": "streaming"}, "full, incremental"),
        ({"max_batch": 0}, "max_batch"),
        ({"decoder": "onnx"}, "transformers, lean"),
        ({"admission": "step"}, "set decoder='lean'"),
    ],
)
def test_invalid_features_name_the_fix(changes, named):
    with pytest.raises(FeatureError, match=named):
        AsrFeatures(**changes)


def test_rows_admitted_at_different_steps_give_the_reference_transcripts(
    tmp_path, asr_tiny, streams, expected
):
    """Continuous batching: chunks arrive while other rows are mid-transcript, so rows decode at
    different positions in one forward; every transcript must still be the reference's."""
    write_engine(tmp_path, AsrFeatures(max_batch=2, decoder="lean", admission="step"))
    spec = importlib.util.spec_from_file_location("asr_ragged", tmp_path / "engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    engine = module.create_engine(EngineSpec(model_path=str(asr_tiny)))
    chunks = 3
    arrivals = sorted(
        (3 * (k * 3 + i), sid, k) for i, sid in enumerate(streams) for k in range(chunks)
    )
    got: dict[str, list[list[int]]] = {sid: [] for sid in streams}
    tick = 0
    while arrivals or engine.has_unfinished_requests():
        while arrivals and arrivals[0][0] <= tick:
            _, sid, k = arrivals.pop(0)
            piece = streams[sid][2 * k * CHUNK : 2 * (k + 1) * CHUNK]
            engine.add_audio(AudioChunk(sid, k, piece, final=k == chunks - 1))
        if engine.has_unfinished_requests():
            for event in engine.step():
                got[event.request_id].append(event.token_ids)
        tick += 1
    assert got == expected
    counters = engine.counters()
    # rows overlapped (fewer forwards than rows) though no two arrived together
    assert counters["decoder_steps"] < counters["decoder_rows"]

"""The parent's handle on the reference model: materialised weights and cached greedy outputs.

Reference outputs are computed by ``reference_impls.reference`` in a process of their own and
cached per request under the cache directory, keyed by the model's fingerprint and everything that
determines the output (prompt, length, stop tokens, top-k). Engine workers are never told where.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_vibeserve.checkers.tokens import ExpectedTokens
from pytest_vibeserve.contract import Request

MATERIALIZE_TIMEOUT_S = 1800


class ReferenceError(RuntimeError):
    """The reference could not be built or run; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ReferenceOutput:
    tokens: list[int]
    margins: list[float]  # top-1 minus top-2 logit per generated position
    top_logprobs: list[dict[int, float]]

    @property
    def expected(self) -> ExpectedTokens:
        return ExpectedTokens(tokens=self.tokens, margins=self.margins)


@dataclass(frozen=True, slots=True)
class ReferenceImage:
    """The reference's image for one ``ImageRequest`` and what the denoising checks compare."""

    pixels: Any  # (H, W, 3) uint8 numpy
    probe_latent: Any  # (C, h, w) float32 numpy: the latent after Euler step probe_step
    trajectory: list[list[float]]  # per model call: channel means of the latent after it
    trajectory_rms: list[float]  # per model call: the latent's RMS after it
    seconds: float  # what the reference took for it (not a measurement of any engine)


DEFAULT_BATCH = 16  # the reference CLI's default


def materialize_model(scale_model: str, cache_dir: Path, model_path: Path | None = None) -> Path:
    """Build (once) and return the model directory for a scale's ``model`` entry.

    A model already in the cache is found in-process; a build runs in a subprocess, so its
    gigabyte-sized conversion leaves nothing behind in the pytest process.
    """
    from reference_impls.models import SCALES, cached_model_dir

    built = [name for name in SCALES if name != "gpu"]
    scale = "gpu" if scale_model == "path" else scale_model if scale_model in built else None
    if scale is None:
        raise ReferenceError(
            f"unknown model {scale_model!r}; a scale's model is one of {', '.join(built)} "
            "(built by vibeserve) or path (--vibeserve-model)"
        )
    if scale == "gpu" and model_path is None:
        raise ReferenceError(
            "this scale needs a real checkpoint: pass --vibeserve-model PATH (a transformers "
            "model directory with config.json and safetensors weights)"
        )
    if model_path is None and (found := cached_model_dir(scale, cache_dir)) is not None:
        return found
    command = [sys.executable, "-m", "reference_impls.models", "--scale", scale]
    command += ["--cache-dir", str(cache_dir)]
    if model_path is not None:
        command += ["--model-path", str(model_path)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=MATERIALIZE_TIMEOUT_S, cwd=_project_root()
    )
    if done.returncode != 0:
        raise ReferenceError(
            f"building the {scale!r} reference model failed:\n{done.stderr.strip()[-3000:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


class Reference:
    def __init__(
        self,
        model_dir: Path,
        cache_dir: Path,
        *,
        device: str,
        dtype: str,
        threads: int,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        """``batch``: requests decoded together (left-padded); 1 decodes each independently from
        scratch, as a scenario whose model's batched numerics it does not trust asks for."""
        from reference_impls.models import model_fingerprint

        if batch < 1:
            raise ValueError(f"reference batch must be >= 1, got {batch}")
        self.model_dir = Path(model_dir)
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.dtype = dtype
        self.threads = threads
        self.batch = batch
        self.fingerprint = model_fingerprint(self.model_dir)
        self.outputs_dir = Path(cache_dir) / "reference-outputs" / self.fingerprint[:16]
        self.outputs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.computed_seconds = 0.0  # spent computing outputs the cache did not hold

    def _key(self, request: Request, top_k: int) -> str:
        # The prediction is deliberately not part of the key: greedy output ignores it.
        fields = [
            self.fingerprint,
            self.dtype,
            list(request.prompt_token_ids),
            request.max_new_tokens,
            list(request.stop_token_ids),
            top_k,
        ]
        if self.batch != DEFAULT_BATCH:  # the default keeps the keys of outputs already cached
            fields.append(f"batch={self.batch}")
        if request.response_format is not None:  # the schema and the pinned grammar engine
            from reference_impls.constrained import config_id

            fields += [json.dumps(request.response_format, sort_keys=True), config_id()]
        material = json.dumps(fields)
        return hashlib.sha256(material.encode()).hexdigest()[:32]

    def generate(
        self, requests: Sequence[Request], *, top_k: int = 5
    ) -> dict[str, ReferenceOutput]:
        keys = {r.request_id: self._key(r, top_k) for r in requests}
        missing = [
            r for r in requests if not (self.outputs_dir / f"{keys[r.request_id]}.json").exists()
        ]
        if missing:
            started = time.perf_counter()
            try:
                self._compute(missing, keys, top_k)
            finally:
                self.computed_seconds += time.perf_counter() - started
        outputs = {}
        for request in requests:
            data = json.loads((self.outputs_dir / f"{keys[request.request_id]}.json").read_text())
            outputs[request.request_id] = ReferenceOutput(
                tokens=data["tokens"],
                margins=data["margins"],
                top_logprobs=[{int(k): v for k, v in lp.items()} for lp in data["top_logprobs"]],
            )
        return outputs

    def transcribe(
        self, streams: Sequence[Any], *, max_tokens_per_second: float
    ) -> dict[str, list[ReferenceOutput]]:
        """Every chunk's reference transcript of each audio stream (``AudioStream``): HF greedy
        on all the stream's audio up to that chunk's end, with attention_mask. Cached per stream
        under a key of the model, the audio bytes, the chunking and the token cap."""
        keys = {}
        for stream in streams:
            material = json.dumps(
                [
                    self.fingerprint,
                    self.dtype,
                    hashlib.sha256(stream.pcm16).hexdigest(),
                    stream.chunk_samples,
                    max_tokens_per_second,
                    "asr-partials-1",
                ]
            )
            keys[stream.stream_id] = hashlib.sha256(material.encode()).hexdigest()[:32]
        missing = [
            s for s in streams if not (self.outputs_dir / f"{keys[s.stream_id]}.json").exists()
        ]
        if missing:
            started = time.perf_counter()
            try:
                self._compute_streams(missing, keys, max_tokens_per_second)
            finally:
                self.computed_seconds += time.perf_counter() - started
        outputs = {}
        for stream in streams:
            data = json.loads((self.outputs_dir / f"{keys[stream.stream_id]}.json").read_text())
            outputs[stream.stream_id] = [
                ReferenceOutput(tokens=p["tokens"], margins=p["margins"], top_logprobs=[])
                for p in data
            ]
        return outputs

    def images(self, requests: Sequence[Any]) -> dict[str, ReferenceImage]:
        """The reference image of each ``ImageRequest`` (reference_impls/showo2.py: the original
        data flow in fp32), cached under a key of the model and everything that decides it."""
        import numpy as np

        keys = {}
        for request in requests:
            material = json.dumps(
                [
                    self.fingerprint,
                    request.prompt,
                    request.seed,
                    request.steps,
                    request.guidance,
                    request.probe_step,
                    self.device,
                    "t2i-1",
                ]
            )
            keys[request.request_id] = hashlib.sha256(material.encode()).hexdigest()[:32]
        missing = [
            r for r in requests if not (self.outputs_dir / f"{keys[r.request_id]}.json").exists()
        ]
        if missing:
            started = time.perf_counter()
            try:
                self._compute_images(missing, keys)
            finally:
                self.computed_seconds += time.perf_counter() - started
        outputs = {}
        for request in requests:
            data = json.loads((self.outputs_dir / f"{keys[request.request_id]}.json").read_text())
            pixels = np.frombuffer(base64.b64decode(data["pixels"]), dtype=np.uint8)
            probe = np.frombuffer(base64.b64decode(data["probe_latent"]), dtype="<f4")
            outputs[request.request_id] = ReferenceImage(
                pixels=pixels.reshape(data["shape"]),
                probe_latent=probe.reshape(data["probe_shape"]),
                trajectory=data["trajectory"],
                trajectory_rms=data["trajectory_rms"],
                seconds=float(data["seconds"]),
            )
        return outputs

    def _compute_images(self, requests: Sequence[Any], keys: dict[str, str]) -> None:
        def job(tmp: Path, index: int, group: list[Any]) -> list[str]:
            requests_file = tmp / f"images-{index}.json"
            requests_file.write_text(json.dumps([r.to_dict() for r in group]))
            return ["reference_impls.showo2", "--model", str(self.model_dir), "--requests",
                    str(requests_file), "--device", self.device]  # fmt: skip

        self._compute_in_groups(requests, keys, lambda r: r.request_id, job)

    def _compute_in_groups(
        self,
        items: Sequence[Any],
        keys: dict[str, str],
        ident: Any,
        job: Any,
    ) -> None:
        """Compute ``items`` in reference processes (``job(tmp, index, group)`` gives a module
        and its arguments; ``--out`` and ``--threads`` are added): on the cpu one 1-thread process
        per thread of the scale (batch-1 work barely gains from a second thread), and store every
        result each finished, even when another failed or the run was interrupted."""
        parallel = self.threads if self.device == "cpu" else 1
        groups = [list(items[i::parallel]) for i in range(min(parallel, len(items)))]
        threads = 1 if parallel > 1 else self.threads
        with tempfile.TemporaryDirectory(prefix="vibeserve-ref-") as tmp:
            jobs = []
            for index, group in enumerate(groups):
                out_file = Path(tmp) / f"out-{index}.json"
                command = [sys.executable, "-m", *job(Path(tmp), index, group)]
                command += ["--out", str(out_file), "--threads", str(threads)]
                jobs.append((command, Path(tmp) / f"reference-{index}.log", out_file, group))
            try:
                self._run_references(jobs, threads)
            finally:
                for _, _, out_file, group in jobs:
                    if not out_file.exists():
                        continue
                    results = json.loads(out_file.read_text())  # every item it finished
                    for item in group:
                        if ident(item) in results:
                            target = self.outputs_dir / f"{keys[ident(item)]}.json"
                            partial = target.with_suffix(".tmp")
                            partial.write_text(json.dumps(results[ident(item)]))
                            partial.replace(target)

    def _compute_streams(
        self, streams: Sequence[Any], keys: dict[str, str], per_second: float
    ) -> None:
        def job(tmp: Path, index: int, group: list[Any]) -> list[str]:
            streams_file = tmp / f"streams-{index}.json"
            streams_file.write_text(
                json.dumps(
                    [
                        {
                            "id": s.stream_id,
                            "pcm16": base64.b64encode(s.pcm16).decode("ascii"),
                            "chunk_samples": s.chunk_samples,
                            "max_tokens_per_second": per_second,
                        }
                        for s in group
                    ]
                )
            )
            return ["reference_impls.asr", "--model", str(self.model_dir), "--streams",
                    str(streams_file), "--device", self.device]  # fmt: skip

        self._compute_in_groups(streams, keys, lambda s: s.stream_id, job)

    def _run_references(self, jobs: list[tuple[list[str], Path, Path, Any]], threads: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        processes = []
        try:
            for command, log_file, _, _ in jobs:
                with log_file.open("wb") as log:
                    processes.append(
                        subprocess.Popen(
                            command,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            cwd=_project_root(),
                            env=env,
                        )
                    )
            codes = [process.wait() for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:  # interrupted (Ctrl-C): stop them
                    process.kill()
                    process.wait()
        for code, (_, log_file, _, _) in zip(codes, jobs, strict=True):
            if code != 0:
                tail = log_file.read_text(errors="replace").strip()[-3000:]
                raise ReferenceError(f"the reference run failed ({code}):\n{tail}")

    def _compute(self, requests: Sequence[Request], keys: dict[str, str], top_k: int) -> None:
        with tempfile.TemporaryDirectory(prefix="vibeserve-ref-") as tmp:
            requests_file = Path(tmp) / "requests.json"
            out_file = Path(tmp) / "out.json"
            log_file = Path(tmp) / "reference.log"
            requests_file.write_text(json.dumps([r.to_dict() for r in requests]))
            command = [sys.executable, "-m", "reference_impls.reference"]
            command += ["--model", str(self.model_dir), "--requests", str(requests_file)]
            command += ["--out", str(out_file), "--threads", str(self.threads)]
            command += ["--device", self.device, "--dtype", self.dtype, "--top-k", str(top_k)]
            command += ["--batch", str(self.batch)]
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "HF_HUB_OFFLINE": "1"}
            with log_file.open("wb") as log:
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, cwd=_project_root(), env=env
                )
                try:
                    code = process.wait()
                finally:
                    if process.poll() is None:  # interrupted (Ctrl-C): stop it, keep its results
                        process.kill()
                        process.wait()
                    self._store(out_file, requests, keys)
            if code != 0:
                tail = log_file.read_text(errors="replace").strip()[-3000:]
                raise ReferenceError(f"the reference run failed ({code}):\n{tail}")

    def _store(self, out_file: Path, requests: Sequence[Request], keys: dict[str, str]) -> None:
        """Cache every output the reference finished, even from a run that did not complete."""
        if not out_file.exists():
            return
        results = json.loads(out_file.read_text())
        for request in requests:
            if request.request_id not in results:
                continue
            target = self.outputs_dir / f"{keys[request.request_id]}.json"
            partial = target.with_suffix(".tmp")
            partial.write_text(json.dumps(results[request.request_id]))
            partial.replace(target)

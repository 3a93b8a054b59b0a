"""The ``vibeserve`` command: ``vibeserve serve ENGINE_DIR`` puts an OpenAI-compatible server in
front of an engine directory (text completions; for a speech engine and model audio streamed
over the WebSocket /v1/audio/stream and files posted to /v1/audio/transcriptions; for a
text-to-image engine and model images from /v1/images/generations).

Each subcommand is a function that adds its parser and sets its ``handler`` there;
``SUBCOMMANDS`` lists them, so a new subcommand is one more function in it. A handler reports bad
input by raising ``UsageError``: one line on stderr saying what is wrong and how to fix it, exit
status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_vibeserve.contract import EngineSpec
from pytest_vibeserve.runner import EngineFailure, Limits

USAGE_ERROR = 2  # argparse's exit status for bad arguments
DEFAULT_SCALE = "tiny"


class UsageError(Exception):
    """Bad input to a subcommand; the message says what is wrong and how to fix it."""


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


# -- serve ------------------------------------------------------------------------------------


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = Limits()
    parser = subparsers.add_parser(
        "serve",
        help="serve an engine directory behind an OpenAI-compatible HTTP API",
        description="Serve ENGINE_DIR (engine.py with create_engine) at /v1/completions, "
        "/v1/chat/completions, /v1/models and /health; a speech engine and model (e.g. "
        "scenarios/streaming_asr/starter with --scale asr-tiny) at the WebSocket "
        "/v1/audio/stream (PCM16 16 kHz mono in, one transcript per chunk out) and "
        "/v1/audio/transcriptions (a WAV file); a text-to-image engine and model (e.g. "
        "scenarios/unified_multimodal/starter with --scale t2i-tiny) at "
        "/v1/images/generations (OpenAI's body plus seed, num_inference_steps, guidance_scale "
        "and probe_step; a PNG back as b64_json or image/png). Stop it with Ctrl-C or SIGTERM.",
    )
    parser.add_argument("engine_dir", metavar="ENGINE_DIR", type=Path, help="the engine to serve")
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--model",
        metavar="PATH",
        type=Path,
        help="a transformers model directory (config.json, safetensors, tokenizer). "
        "Default: the --scale model.",
    )
    model.add_argument(
        "--scale",
        metavar="NAME",
        help="a model vibeserve builds into the cache: tiny, cpu, hybrid-tiny, hybrid-cpu, "
        "asr-tiny, asr-cpu (speech), t2i-tiny or t2i-cpu (text to image). "
        f"Default: {DEFAULT_SCALE}.",
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        type=Path,
        help="where built models live. Default: $VIBESERVE_CACHE or ~/.cache/vibeserve.",
    )
    parser.add_argument("--host", metavar="HOST", default="127.0.0.1", help="Default: 127.0.0.1.")
    parser.add_argument(
        "--port", metavar="N", type=_port, default=8000, help="0: any free port. Default: 8000."
    )
    parser.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the name clients put in 'model'. Default: the model directory's name.",
    )
    parser.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int,
        default=1,
        help="torch threads in the engine. Default: 1.",
    )
    parser.add_argument("--device", metavar="DEVICE", default="cpu", help="Default: cpu.")
    parser.add_argument(
        "--dtype",
        metavar="DTYPE",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="Default: float32.",
    )
    parser.add_argument(
        "--step-timeout",
        metavar="S",
        type=_positive_float,
        default=defaults.step_timeout_s,
        help="seconds the engine may go silent with requests in flight before it is declared "
        f"hung. Default: {defaults.step_timeout_s:g}.",
    )
    parser.add_argument(
        "--memory",
        metavar="GIB",
        type=_positive_float,
        default=defaults.memory_bytes / 2**30,
        help="the engine worker's resident memory cap in GiB. "
        f"Default: {defaults.memory_bytes / 2**30:g}.",
    )
    parser.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> None:
    from pytest_vibeserve.options import default_cache_dir
    from pytest_vibeserve.reference import ReferenceError, materialize_model
    from pytest_vibeserve.serve import bind_socket, run_server
    from reference_impls.models import SCALES

    engine_dir = args.engine_dir.resolve()
    if not (engine_dir / "engine.py").is_file():
        raise UsageError(
            f"{engine_dir} has no engine.py; pass an engine directory whose engine.py defines "
            "create_engine(spec), e.g. scenarios/standard/starter",
        )
    scales = [name for name in SCALES if name != "gpu"]
    scale = "path" if args.model is not None else args.scale or DEFAULT_SCALE
    if scale != "path" and scale not in scales:
        raise UsageError(f"unknown scale {scale!r}; use one of {', '.join(scales)} or --model PATH")
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as error:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port} ({error.strerror or error}); "
            "pick a free port with --port"
        ) from None
    with sock:
        try:
            model_dir = materialize_model(scale, args.cache or default_cache_dir(), args.model)
        except ReferenceError as error:
            raise UsageError(str(error).replace("\n", " ")) from None
        spec = EngineSpec(
            model_path=str(model_dir), device=args.device, dtype=args.dtype, threads=args.threads
        )
        limits = Limits(step_timeout_s=args.step_timeout, memory_bytes=int(args.memory * 2**30))
        try:
            run_server(
                engine_dir, spec, sock, served_model_name=args.served_model_name, limits=limits
            )
        except EngineFailure as failure:
            sys.exit(f"vibeserve serve: the engine failed: {failure}")


# -- the command ------------------------------------------------------------------------------


def add_peers_parser(subparsers: argparse._SubParsersAction) -> None:
    from pytest_vibeserve.peers import add_peers_parser as add

    add(subparsers)


# Each adds one subcommand's parser and sets its handler(args) as a default there.
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_serve_parser,
    add_peers_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vibeserve", description="Serve and inspect vibeserve engines."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run one subcommand; bad input exits with status 2 and a one-line message on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    try:
        args.handler(args)
    except UsageError as error:
        parser.exit(USAGE_ERROR, f"vibeserve {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()

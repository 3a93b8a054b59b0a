"""Command-line options: each ``--vibeserve-<noun>``, validated, with its default in its help."""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_vibeserve.metrics import Slo
from pytest_vibeserve.scenario import SCALE_NAME, SCALES


def _engine_dir(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a directory; pass an engine directory holding engine.py"
        )
    if not (path / "engine.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{value!r} has no engine.py; an engine directory defines create_engine(spec) there"
        )
    return path.resolve()


def _scale(value: str) -> str:
    if not SCALE_NAME.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a scale name; use {', '.join(SCALES)} or a scale the scenario's "
            "scenario.toml defines ([scales.<name>], e.g. cpu-large)"
        )
    return value


def _device(value: str) -> str:
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device; use cpu, cuda, cuda:N or mps")
    return value


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{what} {value!r} must be >= {minimum}")
        return number

    return parse


_positive_int = _int_at_least(1, "a whole number")
_seed = _int_at_least(0, "an integer seed")


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be > 0")
    return number


def _report_path(value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory; name a .json file")
    if not path.parent.resolve().is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {value!r} does not exist; create it first")
    return path.resolve()


def _model_path(value: str) -> Path:
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a transformers model directory (no config.json)"
        )
    return path.resolve()


def _peers(value: str) -> tuple[str, ...] | None:
    """Peers: reference engine names or ``label=DIR`` entries, comma-separated."""
    if value == "scenario":
        return None
    if value == "none":
        return ()
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(
            "name peers separated by commas (a reference engine's name, or label=DIR for an "
            "engine directory), or 'none'/'scenario'"
        )
    for name in names:
        label, _, directory = name.partition("=")
        if directory and not (Path(directory) / "engine.py").is_file():
            raise argparse.ArgumentTypeError(
                f"peer {label!r}: {directory} has no engine.py (label=DIR names an engine "
                "directory)"
            )
    return names


def _workload_setting(value: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a TOML value (``requests=2``, ``prediction="as_sent"``)."""
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"{value!r}: write KEY=VALUE, e.g. requests=2 or max_new_tokens=128"
        )
    try:
        parsed = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = raw.strip()  # a bare word is a string
    return key.strip(), parsed


def _baseline(value: str) -> str:
    """A reference engine's name, an engine directory (anything with a path separator), or
    ``none`` (measure the candidate alone)."""
    if os.sep in value or value.startswith("."):
        if not (Path(value) / "engine.py").is_file():
            raise argparse.ArgumentTypeError(f"{value} has no engine.py: not an engine directory")
        return str(Path(value).resolve())
    return value


def _slo(value: str) -> Slo:
    try:
        return Slo.parse(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _endpoint(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a server URL; write e.g. http://127.0.0.1:8000 (the server's base "
            "URL, without /v1)"
        )
    return value.rstrip("/").removesuffix("/v1")


def _new_dir(value: str) -> Path:
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} exists and is not a directory")
    return path.resolve()


def default_cache_dir() -> Path:
    if env := os.environ.get("VIBESERVE_CACHE"):
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vibeserve"


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("vibeserve", "vibeserve: check and measure LLM serving engines")
    add = group.addoption
    add(
        "--vibeserve-engine",
        metavar="PATH",
        type=_engine_dir,
        default=None,
        help="engine directory (engine.py with create_engine) under test. "
        "Default: the scenario's starter/.",
    )
    add(
        "--vibeserve-scale",
        metavar="SCALE",
        type=_scale,
        default="cpu",
        help=f"model scale: {', '.join(SCALES)} or one the scenario defines in its "
        "scenario.toml (e.g. hybrid_ssm's cpu-large). Default: cpu.",
    )
    add(
        "--vibeserve-device",
        metavar="DEVICE",
        type=_device,
        default=None,
        help="torch device for engines and reference. Default: the scale's device.",
    )
    add(
        "--vibeserve-seed",
        metavar="N",
        type=_seed,
        default=0,
        help="workload seed (a different seed draws held-out inputs). Default: 0.",
    )
    add(
        "--vibeserve-report",
        metavar="PATH",
        type=_report_path,
        default=None,
        help="write the machine-readable JSON report here. Default: no report.",
    )
    add(
        "--vibeserve-model",
        metavar="PATH",
        type=_model_path,
        default=None,
        help="a real checkpoint directory (required at the gpu scale). Default: the scale's model.",
    )
    add(
        "--vibeserve-threads",
        metavar="N",
        type=_positive_int,
        default=None,
        help="torch threads pinned for every engine and the reference. Default: the scale's.",
    )
    add(
        "--vibeserve-repeats",
        metavar="N",
        type=_positive_int,
        default=None,
        help="alternating candidate/baseline repeats (>= 2; >= 1 with --vibeserve-baseline none). "
        "Default: the scenario's.",
    )
    add(
        "--vibeserve-peers",
        metavar="NAMES",
        type=_peers,
        default=None,
        help="peer engines to measure beside the baseline: comma list, 'none' or 'scenario'. "
        "Default: the scenario's list.",
    )
    add(
        "--vibeserve-baseline",
        metavar="ENGINE",
        type=_baseline,
        default=None,
        help="the engine the candidate is compared with: a reference engine's name, an engine "
        "directory (e.g. the best engine so far), or 'none' to measure the candidate alone (no "
        "ratio; --vibeserve-repeats may then be 1). Default: the scenario's baseline.",
    )
    add(
        "--vibeserve-workload",
        metavar="KEY=VALUE",
        type=_workload_setting,
        action="append",
        default=[],
        help="override one setting of the scale's workload (repeatable), e.g. requests=2: a "
        "smaller held-out check, a bigger benchmark. Default: the scenario's settings.",
    )
    add(
        "--vibeserve-step-timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=120.0,
        help="fail an engine silent this long with requests in flight. Default: 120.",
    )
    add(
        "--vibeserve-memory",
        metavar="GIB",
        type=_positive_float,
        default=16.0,
        help="fail an engine whose resident memory exceeds this. Default: 16.",
    )
    add(
        "--vibeserve-endpoint",
        metavar="URL",
        type=_endpoint,
        default=None,
        help="test an OpenAI-compatible server instead of an engine directory: the candidate's "
        "requests go to URL/v1/completions (token-id prompts, streamed). Default: none.",
    )
    add(
        "--vibeserve-endpoint-model",
        metavar="NAME",
        default=None,
        help="the model name to ask --vibeserve-endpoint for. Default: the only one its "
        "/v1/models lists.",
    )
    add(
        "--vibeserve-goodput",
        metavar="SLOS",
        type=_slo,
        default=None,
        help="goodput's SLOs in ms, as vLLM's --goodput: e.g. 'ttft:2000 tpot:100' (keys ttft, "
        "tpot, e2el). Default: the scenario's [performance] slo.",
    )
    add(
        "--vibeserve-bench-dir",
        metavar="DIR",
        type=_new_dir,
        default=None,
        help="write every measured run as a JSON file with vllm bench serve's field names, for "
        "existing plotting scripts. Default: none.",
    )
    add(
        "--vibeserve-cache",
        metavar="DIR",
        type=Path,
        default=None,
        help="models and reference outputs. Default: $VIBESERVE_CACHE or ~/.cache/vibeserve.",
    )


@dataclass(frozen=True, slots=True)
class Options:
    engine: Path | None
    scale: str
    device: str | None
    seed: int
    report: Path | None
    model: Path | None
    threads: int | None
    repeats: int | None
    peers: tuple[str, ...] | None
    step_timeout_s: float
    memory_gib: float
    cache_dir: Path
    baseline: str | None = None
    workload: tuple[tuple[str, Any], ...] = ()
    endpoint: str | None = None
    endpoint_model: str | None = None
    slo: Slo | None = None
    bench_dir: Path | None = None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        get = config.getoption
        repeats = get("vibeserve_repeats")
        alone = get("vibeserve_baseline") == "none"
        if repeats is not None and repeats < 2 and not alone:
            raise pytest.UsageError(
                "--vibeserve-repeats must be >= 2: the noise band needs at least two repeats "
                "(1 is allowed only with --vibeserve-baseline none)"
            )
        return cls(
            engine=get("vibeserve_engine"),
            scale=get("vibeserve_scale"),
            device=get("vibeserve_device"),
            seed=get("vibeserve_seed"),
            report=get("vibeserve_report"),
            model=get("vibeserve_model"),
            threads=get("vibeserve_threads"),
            repeats=repeats,
            peers=get("vibeserve_peers"),
            step_timeout_s=get("vibeserve_step_timeout"),
            memory_gib=get("vibeserve_memory"),
            cache_dir=(get("vibeserve_cache") or default_cache_dir()).expanduser().resolve(),
            baseline=get("vibeserve_baseline"),
            workload=tuple(get("vibeserve_workload") or ()),
            endpoint=get("vibeserve_endpoint"),
            endpoint_model=get("vibeserve_endpoint_model"),
            slo=get("vibeserve_goodput"),
            bench_dir=get("vibeserve_bench_dir"),
        )

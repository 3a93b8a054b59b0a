"""Per-session state: scenarios, their engines and reference, and every result bound for the report.

One ``VibeSession`` lives in ``config.stash``; fixtures reach it, hooks fill and flush it. Engine
workers are started lazily, reused by every test of the session, and killed at its end.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_vibeserve.checkers.result import CheckResult
from pytest_vibeserve.compare import Comparison
from pytest_vibeserve.contract import EngineSpec, ImageRequest
from pytest_vibeserve.metrics import Slo
from pytest_vibeserve.options import Options
from pytest_vibeserve.reference import DEFAULT_BATCH, Reference, materialize_model
from pytest_vibeserve.roofline import MachineLimits, Roofline, measure_limits, roofline_for
from pytest_vibeserve.runner import EngineProcess, Limits, RunResult
from pytest_vibeserve.scenario import Scenario, ScenarioError, find_scenario_root, load_scenario
from pytest_vibeserve.workload import Workload

if TYPE_CHECKING:
    from pytest_vibeserve.endpoint import EndpointEngine

ENGINES_DIR = Path(__file__).resolve().parent.parent / "reference_impls" / "engines"
CANDIDATE = "candidate"
BASELINE = "baseline"
NO_BASELINE = "none"  # --vibeserve-baseline none: measure the candidate alone


@dataclass(slots=True)
class TestOutcome:
    nodeid: str
    kind: str  # "correctness" or "performance"
    outcome: str  # passed / failed / skipped / error
    message: str = ""


@dataclass(slots=True)
class PerformanceRecord:
    nodeid: str
    workload: str
    comparison: Comparison
    roofline: Roofline | None
    engines: dict[str, str]  # role -> engine directory
    gate_failures: list[str] = field(default_factory=list)
    workload_stats: dict[str, Any] = field(default_factory=dict)
    gates_skipped: list[str] = field(default_factory=list)  # not applicable, with why
    peers_skipped: dict[str, str] = field(default_factory=dict)  # peer -> why it did not run
    slo: Slo | None = None  # goodput's objectives in this run
    label: str = ""  # a short name for summary tables (default: the workload's name)
    headline: bool = True  # False: context beside the headline (e.g. batch-1 speed under load)
    # role -> what ``compare(validate=...)`` said of its last measured run's outputs (e.g. the
    # schema validity of a peer's JSON documents: peers are timed, not judged)
    validity: dict[str, str] = field(default_factory=dict)


class ScenarioContext:
    """One scenario at the session's scale: its model, reference and engine workers."""

    def __init__(self, scenario: Scenario, options: Options) -> None:
        self.scenario = scenario
        self.options = options
        scale = scenario.scale(options.scale)
        if options.workload:  # --vibeserve-workload KEY=VALUE overrides
            scale = dataclasses.replace(
                scale, workload={**scale.workload, **dict(options.workload)}
            )
        self.scale = scale
        self.device = options.device or self.scale.device
        self.threads = options.threads or self.scale.threads
        self.dtype = self.scale.dtype
        self._model_dir: Path | None = None
        self._reference: Reference | None = None
        self._engines: dict[str, EngineProcess | EndpointEngine] = {}
        self._servers: dict[str, Any] = {}  # peer role -> its PeerServer, stopped at close
        self._runs: dict[tuple[str, str], RunResult] = {}
        self._warmed: set[tuple[str, str]] = set()
        self._served: set[str] = set()  # roles whose current process has run a workload
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, factory: Callable[[], Any]) -> Any:
        """Build once per session and scenario (workloads, tokenizers), whichever module asks."""
        if key not in self._memo:
            self._memo[key] = factory()
        return self._memo[key]

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_dir)

    @property
    def model_dir(self) -> Path:
        if self._model_dir is None:
            self._require_device()
            model = "path" if self.options.model is not None else self.scale.model
            self._model_dir = materialize_model(model, self.options.cache_dir, self.options.model)
        return self._model_dir

    def _require_device(self) -> None:
        """Fail before building a model or a reference for a device this machine lacks."""
        if not self.device.startswith("cuda"):
            return
        import torch

        if not torch.cuda.is_available():
            raise ScenarioError(
                f"scenario {self.scenario.name!r} at scale {self.options.scale!r} runs on "
                f"{self.device}, but torch here sees no CUDA device: run it on a machine with "
                "a GPU, pick a cpu scale (--vibeserve-scale tiny or cpu), or force "
                "--vibeserve-device cpu (slow at this scale)"
            )

    @property
    def reference(self) -> Reference:
        if self._reference is None:
            self._reference = Reference(
                self.model_dir,
                self.options.cache_dir,
                device=self.device,
                dtype=self.dtype,
                threads=self.threads,
                batch=int(self.scenario.correctness.get("reference_batch", DEFAULT_BATCH)),
            )
        return self._reference

    @property
    def has_baseline(self) -> bool:
        """False with ``--vibeserve-baseline none``: the candidate is measured alone."""
        return self.options.baseline != NO_BASELINE

    def engine_dir(self, role: str) -> Path:
        if role == CANDIDATE:
            return self.options.engine or self.scenario.starter
        if role == BASELINE:
            name = self.options.baseline or self.scenario.performance.baseline
        else:
            name = self._peer_dirs().get(role, role)
        if os.sep in name:  # an engine directory (--vibeserve-baseline DIR, a label=DIR peer)
            return Path(name)
        path = ENGINES_DIR / name
        if not (path / "engine.py").is_file():
            raise ScenarioError(
                f"scenario {self.scenario.name!r} names engine {name!r}, but {path} has no "
                "engine.py; fix [performance] baseline/peers in scenario.toml (or the "
                "--vibeserve-baseline / --vibeserve-peers options)"
            )
        return path

    def _peer_dirs(self) -> dict[str, str]:
        chosen = self.options.peers or ()
        return {
            label: str(Path(directory).resolve())
            for label, _, directory in (entry.partition("=") for entry in chosen)
            if directory
        }

    @property
    def peers(self) -> tuple[str, ...]:
        chosen = self.options.peers
        if chosen is None:
            if self.scale.peers is not None:
                return self.scale.peers
            return self.scenario.performance.peers
        return tuple(entry.partition("=")[0] for entry in chosen)

    def is_endpoint(self, role: str) -> bool:
        """Whether ``role`` runs on an OpenAI-compatible server rather than an engine worker."""
        from pytest_vibeserve.peers import is_peer

        return (role == CANDIDATE and self.options.endpoint is not None) or is_peer(role)

    def engine_source(self, role: str) -> str:
        """What runs ``role``, for reports: an engine directory, a URL or a peer server."""
        if role == CANDIDATE and self.options.endpoint is not None:
            return self.options.endpoint
        if self.is_endpoint(role):
            from pytest_vibeserve.peers import PEERS

            return f"peer {role}: {PEERS[role].description}"
        return str(self.engine_dir(role))

    def peer_missing(self, role: str) -> str | None:
        """Why a peer cannot run here (not installed, no model for it), or None."""
        from pytest_vibeserve.peers import PEERS, PeerUnavailable, gguf_q4, is_peer

        if not is_peer(role):
            return None
        if reason := PEERS[role].missing(self.options.cache_dir):
            return reason
        if role == "llama_cpp_q4":
            try:
                gguf_q4(self.model_dir, self.options.cache_dir)
            except PeerUnavailable as error:
                return str(error)
        return None

    def engine(self, role: str) -> EngineProcess | EndpointEngine:
        if role not in self._engines:
            limits = Limits(
                step_timeout_s=self.options.step_timeout_s,
                memory_bytes=int(self.options.memory_gib * 2**30),
            )
            if self.is_endpoint(role):
                engine = self._endpoint(role, limits)
            else:
                spec = EngineSpec(
                    model_path=str(self.model_dir),
                    device=self.device,
                    dtype=self.dtype,
                    threads=self.threads,
                    options=dict(self.scenario.engine_options),
                )
                engine = EngineProcess(self.engine_dir(role), spec, name=role, limits=limits)
            self._engines[role] = engine
            engine.start()
        return self._engines[role]

    def _endpoint(self, role: str, limits: Limits) -> EndpointEngine:
        from pytest_vibeserve.endpoint import EndpointEngine
        from pytest_vibeserve.peers import PeerServer, PeerUnavailable

        if role == CANDIDATE:
            return EndpointEngine(
                self.options.endpoint, name=role, model=self.options.endpoint_model, limits=limits
            )
        if reason := self.peer_missing(role):
            raise PeerUnavailable(reason)
        server = PeerServer(role, self.model_dir, self.options.cache_dir, threads=self.threads)
        server.start()
        self._servers[role] = server
        return EndpointEngine(
            server.base_url, name=role, limits=limits, pid=server.pid, prompt_cache=False
        )

    def restart(self, role: str) -> None:
        """Stop ``role``'s engine process: the next use starts (and warms up) a new one."""
        if (process := self._engines.pop(role, None)) is not None:
            process.close()
        if (server := self._servers.pop(role, None)) is not None:
            server.close()
        self._warmed = {key for key in self._warmed if key[0] != role}
        self._served.discard(role)

    def fresh(self, role: str) -> None:
        """Make sure ``role``'s next run meets an engine that has served nothing but warm-ups
        (restarting it only if it has: a new process costs a model load)."""
        if role in self._served:
            self.restart(role)

    def warm_up(self, role: str, workload: Workload) -> None:
        if workload.warmup and (role, workload.name) not in self._warmed:
            if workload.streams:  # audio: warm-up streams, as fast as the engine answers
                self._run_streams(role, workload.warmup, pace=0)
            else:
                self.engine(role).run(workload.warmup, concurrency=workload.concurrency)
            self._warmed.add((role, workload.name))

    def _run_streams(self, role: str, streams: Any, *, pace: float) -> RunResult:
        engine = self.engine(role)
        if not hasattr(engine, "run_streams"):
            raise ScenarioError(
                f"{self.engine_source(role)} cannot take audio streams; give an engine directory "
                "(--vibeserve-engine) or a vibeserve serve URL with /v1/audio/stream"
            )
        return engine.run_streams(streams, pace=pace)

    def run(self, role: str, workload: Workload, *, cached: bool = True) -> RunResult:
        """One run of ``workload`` on an engine; cached runs serve every correctness test."""
        key = (role, workload.name)
        if cached and key in self._runs:
            return self._runs[key]
        self.warm_up(role, workload)
        self._served.add(role)
        if workload.streams:
            result = self._run_streams(role, workload.streams, pace=workload.pace)
            if cached:
                self._runs[key] = result
            return result
        engine = self.engine(role)
        extra = {}
        if cached and not getattr(engine, "streams_every_id", True):
            # a check of tokens on a server that streams some ids lossily: whole replies
            extra["stream"] = False
        result = engine.run(
            workload.requests,
            concurrency=workload.concurrency,
            arrival_offsets_s=workload.arrival_offsets_s,
            **extra,
        )
        if cached:
            self._runs[key] = result
        return result

    @property
    def slo(self) -> Slo | None:
        """Goodput's SLOs: --vibeserve-goodput, else the scenario's [performance] slo."""
        return self.options.slo or self.scenario.performance.slo

    def close(self) -> None:
        for process in self._engines.values():
            process.close()
        self._engines.clear()
        for server in self._servers.values():
            server.close()
        self._servers.clear()


class VibeSession:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.contexts: dict[Path, ScenarioContext] = {}
        self.checks: list[tuple[str, CheckResult]] = []
        self.outcomes: dict[str, TestOutcome] = {}
        self.performance: list[PerformanceRecord] = []
        self.worker_reports: list[dict[str, Any]] = []  # from pytest-xdist workers
        self.synth: Any = None  # SynthOptions in --vibeserve-synth mode
        self._limits: dict[tuple[str, int], MachineLimits] = {}

    def context_for(self, path: Path) -> ScenarioContext:
        root = find_scenario_root(path)
        if root is None:
            raise ScenarioError(
                f"{path} is not inside a scenario folder (none of its parents holds a "
                "scenario.toml); vibeserve fixtures work only in scenarios/<name>/ tests"
            )
        if root not in self.contexts:
            self.contexts[root] = ScenarioContext(load_scenario(root), self.options)
        return self.contexts[root]

    def machine_limits(self, device: str, threads: int) -> MachineLimits:
        key = (device, threads)
        if key not in self._limits:
            self._limits[key] = measure_limits(device, threads)
        return self._limits[key]

    def roofline(self, context: ScenarioContext, workload: Workload | None = None) -> Roofline:
        """The machine's limits against the model: per token, or for an image model per image
        of ``workload`` (its mean prompt length and schedule)."""
        from reference_impls.models import model_bytes

        limits = self.machine_limits(context.device, context.threads)
        weights = model_bytes(context.model_dir)
        images = [r for r in (workload.requests if workload else ()) if isinstance(r, ImageRequest)]
        if not images:
            return roofline_for(limits, weights)
        from reference_impls.showo2_flops import image_flops

        minimal, reference = image_flops(context.model_dir, images)
        return roofline_for(limits, weights, minimal_flops=minimal, reference_flops=reference)

    def close(self) -> None:
        for context in self.contexts.values():
            context.close()

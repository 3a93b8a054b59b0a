"""Streaming metrics of one run, computed from the parent's timestamps.

Definitions (vLLM's benchmark conventions): TTFT is request sent -> first token arrived; TPOT is
(last token - first token) / (output tokens - 1) per request; ITL is each gap between consecutive
token arrivals (tokens arriving in one batch share a time, so a speculative engine shows zero gaps
inside a verified block); end-to-end latency is sent -> finished. Output tok/s is all output tokens
over the run's wall time. Goodput (``Slo``, vLLM's ``--goodput``) is the requests that met every
SLO given, per second of the run. Times are seconds here; reports convert to ms where the unit says
so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pytest_vibeserve.contract import FORWARD_COUNTER
from pytest_vibeserve.runner import RunResult

PERCENTILES = (50, 90, 99)
# name -> (unit, higher_is_better): the metrics a scenario may choose as its headline
METRICS: dict[str, tuple[str, bool]] = {
    "output_tok_per_s": ("tok/s", True),
    "request_per_s": ("req/s", True),
    "ttft_p50_ms": ("ms", False),
    "ttft_p99_ms": ("ms", False),
    "tpot_p50_ms": ("ms", False),
    "tpot_p99_ms": ("ms", False),
    "itl_p50_ms": ("ms", False),
    "e2e_p50_ms": ("ms", False),
    "e2e_p90_ms": ("ms", False),
    "e2e_p99_ms": ("ms", False),
    "peak_rss_mib": ("MiB", False),
    "tokens_per_forward": ("tok/forward", True),
    "prefix_hit_fraction": ("fraction", True),
    "goodput_req_per_s": ("req/s", True),
    "forced_fraction": ("fraction", True),
    "mask_ms_per_token": ("ms", False),
    # audio streams: chunk sent -> its transcript event arrived
    "chunk_latency_ms_p50": ("ms", False),
    "chunk_latency_ms_p90": ("ms", False),
    "chunk_latency_ms_p99": ("ms", False),
    "real_time_factor": ("x", False),
    "realtime_streams": ("streams", True),
    # images: request sent -> its image arrived
    "image_latency_s_p50": ("s", False),
    "image_latency_s_p90": ("s", False),
}

# The engine counter (optional) of prompt tokens served from a prefix cache instead of computed,
# as vLLM's prefix-cache hit metrics count them.
PREFIX_HIT_COUNTER = "prefix_cache_hit_tokens"
# Constrained decoding (optional, engine-reported): output tokens the grammar determined, which an
# engine may append without a model call of their own, and milliseconds spent computing masks.
FORCED_COUNTER = "grammar_forced_tokens"
MASK_MS_COUNTER = "grammar_mask_ms"
# Streaming speech recognition (optional, engine-reported): 20 ms frames run through the encoder,
# frames whose cross-attention keys/values were projected, token rows decoded, decoder forwards.
ENCODER_FRAMES_COUNTER = "encoder_frames"
CROSS_KV_FRAMES_COUNTER = "cross_kv_frames"
DECODER_ROWS_COUNTER = "decoder_rows"
DECODER_STEPS_COUNTER = "decoder_steps"


@dataclass(frozen=True, slots=True)
class Slo:
    """Service-level objectives a request must all meet to count toward goodput (ms; None: no
    objective on that latency). Keys as vLLM's ``--goodput``: ttft, tpot, e2el."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    KEYS = ("ttft", "tpot", "e2el")

    @classmethod
    def parse(cls, text: str) -> Slo:
        """``"ttft:2000 tpot:100"`` (commas or spaces between pairs) -> Slo."""
        values: dict[str, float] = {}
        for pair in text.replace(",", " ").split():
            key, sep, raw = pair.partition(":")
            if not sep or key not in cls.KEYS:
                raise ValueError(
                    f"{pair!r}: write KEY:MILLISECONDS with KEY one of {', '.join(cls.KEYS)}, "
                    "e.g. ttft:2000 tpot:100"
                )
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{pair!r}: {raw!r} is not a number of milliseconds") from None
            if not value > 0:  # also rejects nan, which no latency could ever meet
                raise ValueError(f"{pair!r}: an SLO must be a number > 0 ms")
            values[f"{key}_ms"] = value
        if not values:
            raise ValueError("no SLO given; write e.g. ttft:2000 tpot:100")
        return cls(**values)

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> Slo:
        known = {f.name for f in fields(cls)}
        if unknown := set(table) - known:
            raise ValueError(f"{where}: unknown SLO key(s) {sorted(unknown)}; use {sorted(known)}")
        values = {}
        for key, raw in table.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{where}.{key} = {raw!r}: a number of milliseconds") from None
            if not value > 0:
                raise ValueError(f"{where}.{key} = {raw!r}: an SLO must be a number > 0 ms")
            values[key] = value
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        return " ".join(f"{k[:-3]}:{v:g}" for k, v in self.to_dict().items())

    def met(self, ttft_s: float | None, tpot_s: float, e2el_s: float) -> bool:
        checks = ((self.ttft_ms, ttft_s), (self.tpot_ms, tpot_s), (self.e2el_ms, e2el_s))
        return all(
            limit is None or (value is not None and value * 1000 <= limit)
            for limit, value in checks
        )


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass(frozen=True, slots=True)
class RunMetrics:
    requests: int
    output_tokens: int
    wall_s: float
    output_tok_per_s: float
    request_per_s: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p90_ms: float
    tpot_p99_ms: float
    itl_p50_ms: float
    itl_p90_ms: float
    itl_p99_ms: float
    e2e_p50_ms: float
    e2e_p90_ms: float
    e2e_p99_ms: float
    peak_rss_mib: float
    tokens_per_forward: float  # output tokens per model forward: > 1 when drafts are accepted
    # prompt tokens the engine served from its prefix cache / prompt tokens sent (NaN: the engine
    # does not report PREFIX_HIT_COUNTER); engine-reported, so it informs hints, never verdicts
    prefix_hit_fraction: float = math.nan
    ttft_mean_ms: float = math.nan
    tpot_mean_ms: float = math.nan
    itl_mean_ms: float = math.nan
    e2e_mean_ms: float = math.nan
    input_tokens: int = 0
    goodput_req_per_s: float = math.nan  # NaN: no SLO given for this run
    # per output token, from FORCED_COUNTER and MASK_MS_COUNTER (NaN: not reported)
    forced_fraction: float = math.nan
    mask_ms_per_token: float = math.nan
    # audio streams (NaN for text runs): per-chunk latency, chunk sent -> its event arrived
    chunk_latency_ms_p50: float = math.nan
    chunk_latency_ms_p90: float = math.nan
    chunk_latency_ms_p99: float = math.nan
    chunk_latency_ms_mean: float = math.nan
    audio_s: float = 0.0  # seconds of audio sent, all streams
    # wall time over the time the last chunk was sent (at real-time pace: when the last audio
    # ended): 1.0 = the last transcript came at once; 1.1 = 10% of the stream's length later
    real_time_factor: float = math.nan
    # seconds of audio transcribed per second of wall time: the number of real-time streams the
    # engine kept pace with (meaningful in an accelerated run, pace 0)
    realtime_streams: float = math.nan
    # engine-reported (ENCODER_FRAMES_COUNTER ...; NaN: not reported), for hints only: encoder
    # frames computed, and cross-attention keys/values projected, per 20 ms frame of audio sent
    # (1 = each once; re-encoding all audio per chunk grows with the stream), token rows per
    # decoder forward (1 = one transcript at a time)
    encoder_frames_per_audio_frame: float = math.nan
    cross_kv_frames_per_audio_frame: float = math.nan
    decode_rows_per_step: float = math.nan
    # images (NaN for other runs): request sent -> image arrived, and the engine's own per-stage
    # timings (its payloads' timings_ms, mean per image; reported, never trusted for the verdict)
    image_latency_s_p50: float = math.nan
    image_latency_s_p90: float = math.nan
    image_latency_s_mean: float = math.nan
    image_stages_ms: dict[str, float] = field(default_factory=dict)
    # engine-reported work (NaN: not reported), for hints only: token rows through the LM body,
    # lm_head logit rows, input-path rows, per-row modulation loops and masked padding keys per
    # model call; VAE time taps per image (3: causal 3-D kernels over one frame, 1: 2-D); weight
    # bits; whether the step is compiled
    body_tokens_per_call: float = math.nan
    logit_rows_per_call: float = math.nan
    input_rows_per_call: float = math.nan
    modulation_loops_per_call: float = math.nan
    padded_keys_per_call: float = math.nan  # attended key slots that are masked prefix padding
    vae_taps_per_image: float = math.nan
    compiled: float = math.nan  # 1: the engine runs a torch.compile'd step, 0: eager
    weight_bits: float = math.nan
    uncond_per_call: float = math.nan  # unconditional rows evaluated per model call (CFG)

    def get(self, name: str) -> float:
        if name not in METRICS:
            raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compute_metrics(run: RunResult, slo: Slo | None = None) -> RunMetrics:
    ttft, tpot, itl, e2e = [], [], [], []
    output_tokens = 0
    good = 0
    for record in run.records.values():
        times = record.token_times
        output_tokens += len(record.token_ids)
        first = times[0] - record.sent_at if times else None
        request_tpot = 0.0  # vLLM's convention for a one-token output
        if times:
            ttft.append(first)
            itl.extend(b - a for a, b in itertools.pairwise(times))
            if len(times) > 1:
                request_tpot = (times[-1] - times[0]) / (len(times) - 1)
                tpot.append(request_tpot)
        end = record.finished_at if record.finished_at is not None else run.ended_at
        e2e.append(end - record.sent_at)
        finished = record.finished_at is not None
        if slo is not None and finished and slo.met(first, request_tpot, e2e[-1]):
            good += 1
    wall = max(run.wall_s, 1e-9)

    def pct_ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1000

    def mean_ms(values: list[float]) -> float:
        return sum(values) / len(values) * 1000 if values else math.nan

    return RunMetrics(
        requests=len(run.records),
        output_tokens=output_tokens,
        wall_s=run.wall_s,
        output_tok_per_s=output_tokens / wall,
        request_per_s=len(run.records) / wall,
        ttft_p50_ms=pct_ms(ttft, 50),
        ttft_p90_ms=pct_ms(ttft, 90),
        ttft_p99_ms=pct_ms(ttft, 99),
        tpot_p50_ms=pct_ms(tpot, 50),
        tpot_p90_ms=pct_ms(tpot, 90),
        tpot_p99_ms=pct_ms(tpot, 99),
        itl_p50_ms=pct_ms(itl, 50),
        itl_p90_ms=pct_ms(itl, 90),
        itl_p99_ms=pct_ms(itl, 99),
        e2e_p50_ms=pct_ms(e2e, 50),
        e2e_p90_ms=pct_ms(e2e, 90),
        e2e_p99_ms=pct_ms(e2e, 99),
        peak_rss_mib=run.peak_rss_bytes / 2**20,
        tokens_per_forward=output_tokens / run.forward_calls if run.forward_calls else math.nan,
        prefix_hit_fraction=_prefix_hit_fraction(run),
        ttft_mean_ms=mean_ms(ttft),
        tpot_mean_ms=mean_ms(tpot),
        itl_mean_ms=mean_ms(itl),
        e2e_mean_ms=mean_ms(e2e),
        input_tokens=sum(record.prompt_len for record in run.records.values()),
        goodput_req_per_s=good / wall if slo is not None else math.nan,
        forced_fraction=_per_output_token(run, FORCED_COUNTER, output_tokens),
        mask_ms_per_token=_per_output_token(run, MASK_MS_COUNTER, output_tokens),
        **_audio_metrics(run),
        **_image_metrics(run),
    )


def _image_metrics(run: RunResult) -> dict[str, Any]:
    latencies, stages = [], {}
    for record in run.records.values():
        payload = record.payloads[-1] if record.payloads else None
        if not payload or payload.get("type") != "image" or record.finished_at is None:
            continue
        latencies.append(record.finished_at - record.sent_at)
        for stage, ms in (payload.get("timings_ms") or {}).items():
            stages.setdefault(stage, []).append(float(ms))
    if not latencies:
        return {}

    def per(counter: str, unit: str) -> float:
        grown, units = run.counter_delta(counter), run.counter_delta(unit)
        return grown / units if grown is not None and units else math.nan

    bits, compiled = run.counters.get("weight_bits"), run.counters.get("compiled")
    return {
        "body_tokens_per_call": per("body_token_rows", FORWARD_COUNTER),
        "logit_rows_per_call": per("logit_rows", FORWARD_COUNTER),
        "input_rows_per_call": per("input_path_rows", FORWARD_COUNTER),
        "modulation_loops_per_call": per("modulation_loops", FORWARD_COUNTER),
        "padded_keys_per_call": per("padded_key_slots", FORWARD_COUNTER),
        "vae_taps_per_image": per("vae_time_taps", "images"),
        "uncond_per_call": per("uncond_calls", FORWARD_COUNTER),
        "weight_bits": float(bits) if bits is not None else math.nan,
        "compiled": float(compiled) if compiled is not None else math.nan,
        "image_latency_s_p50": percentile(latencies, 50),
        "image_latency_s_p90": percentile(latencies, 90),
        "image_latency_s_mean": sum(latencies) / len(latencies),
        "image_stages_ms": {k: sum(v) / len(v) for k, v in stages.items()},
    }


def _audio_metrics(run: RunResult) -> dict[str, float]:
    latencies = [p.latency_s for record in run.records.values() for p in record.partials]
    if not latencies:
        return {}
    from pytest_vibeserve.contract import AUDIO_SAMPLE_RATE

    audio_s = sum(record.audio_samples for record in run.records.values()) / AUDIO_SAMPLE_RATE
    # the latest moment a stream's last chunk went out: at real-time pace, when its audio ended
    span = max(
        record.partials[-1].sent_at - run.started_at
        for record in run.records.values()
        if record.partials
    )
    wall = max(run.wall_s, 1e-9)
    from pytest_vibeserve.contract import AUDIO_FRAME_SAMPLES

    frames = sum(record.audio_samples for record in run.records.values()) / AUDIO_FRAME_SAMPLES

    def ratio(counter: str, per: float | None) -> float:
        grown = run.counter_delta(counter)
        return grown / per if grown is not None and per else math.nan

    return {
        "encoder_frames_per_audio_frame": ratio(ENCODER_FRAMES_COUNTER, frames),
        "cross_kv_frames_per_audio_frame": ratio(CROSS_KV_FRAMES_COUNTER, frames),
        "decode_rows_per_step": ratio(
            DECODER_ROWS_COUNTER, run.counter_delta(DECODER_STEPS_COUNTER)
        ),
        "chunk_latency_ms_p50": percentile(latencies, 50) * 1000,
        "chunk_latency_ms_p90": percentile(latencies, 90) * 1000,
        "chunk_latency_ms_p99": percentile(latencies, 99) * 1000,
        "chunk_latency_ms_mean": sum(latencies) / len(latencies) * 1000,
        "audio_s": audio_s,
        "real_time_factor": wall / span if span > 0 else math.nan,
        "realtime_streams": audio_s / wall,
    }


def _per_output_token(run: RunResult, counter: str, output_tokens: int) -> float:
    grown = run.counter_delta(counter)
    if grown is None or not output_tokens:
        return math.nan
    return grown / output_tokens


def _prefix_hit_fraction(run: RunResult) -> float:
    hits = run.counter_delta(PREFIX_HIT_COUNTER)
    prompt_tokens = sum(record.prompt_len for record in run.records.values())
    if hits is None or not prompt_tokens:
        return math.nan
    return hits / prompt_tokens

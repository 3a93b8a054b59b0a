"""The loop's reports: ``report.json`` for machines, ``report.md`` with an SVG plot for people."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

PLOT_WIDTH, PLOT_HEIGHT, MARGIN = 640, 280, 40
COLORS = {"accepted": "#1a7f37", "rejected": "#cf222e", "failed": "#9a6700"}


def best_round(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    accepted = [r for r in rounds if r.get("verdict") == "accepted" and r.get("ratio") is not None]
    return max(accepted, key=lambda r: r["ratio"]) if accepted else None


def seed_summary(ratios: list[float]) -> dict[str, Any]:
    if not ratios:
        return {"seeds": 0}
    return {
        "seeds": len(ratios),
        "ratios": ratios,
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "stdev": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
    }


def plot_svg(rounds: list[dict[str, Any]], unit_label: str) -> str:
    """Headline ratio per round: a line through accepted rounds, a dot for every round."""
    points = [(r["round"], r["ratio"], r["verdict"]) for r in rounds if r.get("ratio") is not None]
    if not points:
        return ""
    top = max(1.0, max(ratio for _, ratio, _ in points)) * 1.1
    last = max(1, max(n for n, _, _ in points))

    def xy(n: int, ratio: float) -> tuple[float, float]:
        x = MARGIN + (PLOT_WIDTH - 2 * MARGIN) * n / last
        y = PLOT_HEIGHT - MARGIN - (PLOT_HEIGHT - 2 * MARGIN) * ratio / top
        return x, y

    accepted = " ".join(
        "{:.1f},{:.1f}".format(*xy(n, ratio))
        for n, ratio, verdict in points
        if verdict == "accepted"
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}">',
        f'<text x="{MARGIN}" y="20" font-size="13">{unit_label} per round '
        "(green accepted, red rejected, amber failed)</text>",
        f'<line x1="{MARGIN}" y1="{PLOT_HEIGHT - MARGIN}" x2="{PLOT_WIDTH - MARGIN}" '
        f'y2="{PLOT_HEIGHT - MARGIN}" stroke="black"/>',
        f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{PLOT_HEIGHT - MARGIN}" '
        'stroke="black"/>',
        f'<polyline points="{accepted}" fill="none" stroke="#1a7f37"/>',
    ]
    baseline_y = xy(0, 1.0)[1]
    parts.append(
        f'<line x1="{MARGIN}" y1="{baseline_y:.1f}" x2="{PLOT_WIDTH - MARGIN}" '
        f'y2="{baseline_y:.1f}" stroke="#888" stroke-dasharray="4"/>'
    )
    for n, ratio, verdict in points:
        x, y = xy(n, ratio)
        color = COLORS.get(verdict, "#555")
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">'
            f"<title>round {n}: {ratio:.2f}x {verdict}</title></circle>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def write_reports(
    run_dir: Path, scenario: str, rounds: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    best = best_round(rounds)
    report = {
        "scenario": scenario,
        "best": None
        if best is None
        else {k: best.get(k) for k in ("round", "commit", "tag", "ratio", "value", "unit")},
        "rounds": rounds,
        **extra,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = run_dir / "report.json.partial"
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(run_dir / "report.json")
    baseline = extra.get("baseline", "baseline")
    svg = plot_svg(rounds, f"ratio vs {baseline}")
    (run_dir / "ratio.svg").write_text(svg)
    lines = [f"# vibeserve synthesis: {scenario}", ""]
    if best is not None:
        lines.append(
            f"Best: round {best['round']} ({best.get('commit', '')[:10]}), "
            f"{best['ratio']:.2f}x the {baseline} ({best.get('value', 0):.4g} "
            f"{best.get('unit', '')})."
        )
    confirmed = extra.get("confirmed")
    if confirmed and confirmed.get("ok"):
        lines.append(
            f"Confirmed in one same-run A/B at the end: round {confirmed['round']} is "
            f"{confirmed['ratio_vs_starter']:.2f}x the starter (noise ± {confirmed['noise']:.1%}; "
            f"{confirmed['value']:.4g} vs {confirmed['starter_value']:.4g} {confirmed['unit']})."
        )
        figures = _figures_line(confirmed.get("engines") or {})
        if figures:
            lines.append(figures)
    elif confirmed:
        lines.append(f"The confirming run failed: {confirmed.get('problem', '')[:300]}")
    lines += [
        "",
        "![ratio per round](ratio.svg)",
        "",
        "| round | skill | params | verdict | value | ratio | reasons |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        value = "" if r.get("value") is None else f"{r['value']:.4g}"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        reasons = "; ".join(r.get("reasons") or [])[:200].replace("|", "/")
        lines.append(
            f"| {r['round']} | {r.get('skill') or ''} | {r.get('params') or ''} | "
            f"{r['verdict']} | {value} | {ratio} | {reasons} |"
        )
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return report


def _figures_line(engines: dict[str, dict[str, float]]) -> str:
    """One sentence of what the confirmed engines report about themselves."""
    parts = []
    for name in ("best", "starter"):
        figures = engines.get(name) or {}
        words = []
        if "tokens_per_forward" in figures:
            words.append(f"{figures['tokens_per_forward']:.2f} tokens per forward")
        if "forced_fraction" in figures:
            words.append(f"{figures['forced_fraction']:.0%} of output tokens forced by the grammar")
        if "mask_ms_per_token" in figures:
            words.append(f"{figures['mask_ms_per_token']:.2f} ms of grammar work per token")
        if "chunk_latency_ms_p90" in figures:  # measured by the harness, not reported
            words.append(f"(measured) chunk latency p90 {figures['chunk_latency_ms_p90']:.0f} ms")
        if "real_time_factor" in figures:
            words.append(f"(measured) real-time factor {figures['real_time_factor']:.2f}")
        if "decode_rows_per_step" in figures:
            words.append(f"{figures['decode_rows_per_step']:.2f} token rows per decoder forward")
        if "encoder_frames_per_audio_frame" in figures:
            words.append(
                f"{figures['encoder_frames_per_audio_frame']:.2f} encoder frames per frame of audio"
            )
        if words:
            who = "the best engine" if name == "best" else "the starter"
            parts.append(f"{who} " + ", ".join(words))
    return f"Engine-reported in that run: {'; '.join(parts)}." if parts else ""

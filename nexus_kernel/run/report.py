"""The run report: the figures of a run directory as `report.html` and as a text table.

`collect(run_dir)` reads what the stages wrote (profiles, `architecture.json`,
`training.jsonl`, `verify_report.json`, `package_report.json`), tolerating stages that did
not run. `render_html` draws four plots as inline SVG (no plotting library, no network):
explained variance per capability, the rank audit, loss curves with rollback markers, and
retention bars with their 95 % intervals; `table` is the same figures as the text printed at
the end of `nexus run`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from nexus_kernel.run.layout import PROFILE_DIR, REPORT_HTML

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_WIDTH, _HEIGHT, _PAD = 560, 260, 40


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(run_dir: Path) -> dict[str, Any]:
    """Every figure the report shows, from the run directory (missing stages give empty parts)."""

    figures: dict[str, Any] = {"run": str(run_dir), "variance": {}, "ranks": {}, "losses": {}, "rollbacks": [],
                               "retention": {}}
    architecture = _read(run_dir / "architecture.json") or {"capabilities": {}}
    for name in sorted(architecture["capabilities"]) or sorted(p.name for p in (run_dir / PROFILE_DIR).glob("*/")):
        profile = _read(run_dir / PROFILE_DIR / name / "profile.json")
        if profile:
            first = profile["key_layers"][0]
            figures["variance"][name] = profile["layers"][first]["explained_variance_ratio"]
            figures["ranks"][name] = profile["rank_audit"]
    journal = run_dir / "training.jsonl"
    if journal.is_file():
        offset = 0
        phase_end: dict[str, int] = {}
        for line in journal.read_text().splitlines():
            event = json.loads(line)
            if event["kind"] == "start":
                offset = sum(phase_end.values())
                phase_end[event["phase"]] = event["steps"]
            elif event["kind"] == "step":
                figures["losses"].setdefault(event["phase"], []).append((offset + event["step"], event["loss"]))
            elif event["kind"] == "rollback":
                figures["rollbacks"].append({"phase": event["phase"], "step": offset + event["at_step"],
                                             "reason": event["reason"]})
    verify = _read(run_dir / "verify_report.json") or {}
    package = _read(run_dir / "package_report.json") or {}
    for name, entry in (verify.get("capabilities") or {}).items():
        row = {"benchmark": entry["benchmark"], "teacher": entry["teacher"]["value"],
               "student": entry["student"]["value"], "ratio": entry["retention"]["ratio"],
               "interval": entry["retention"]["interval"], "status": entry["retention"]["status"],
               "rank": architecture["capabilities"].get(name, {}).get("rank")}
        after = (package.get("quantized") or {}).get(name)
        if after:
            row |= {"quantized": after["student"]["value"], "quantized_ratio": after["retention"]["ratio"],
                    "quantized_interval": after["retention"]["interval"]}
        row["tier"] = (package.get("tiers") or {}).get(name, "-")
        figures["retention"][name] = row
    figures["gate"] = (verify.get("gate") or {}).get("status", "not run")
    figures["bundle"] = {key: package.get(key) for key in ("bundle", "bundle_bytes", "scheme")} | {
        "ratio_to_fp32": (package.get("sizes") or {}).get("ratio_to_fp32")}
    return figures


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(value: Any) -> str:
    return "-" if not value else f"[{value[0]:.3f}, {value[1]:.3f}]"


def table(figures: dict[str, Any]) -> str:
    """The retention figures as fixed-width text, one row per capability."""
    header = f"{'capability':<11}{'rank':>5} {'benchmark':<24}{'teacher':>8}{'student':>8}{'ratio':>7} " \
             f"{'95% interval':<17}{'quantized':>10}{'ratio':>7} {'tier':<8}"
    lines = [header, "-" * len(header)]
    for name, row in figures["retention"].items():
        lines.append(f"{name:<11}{row['rank'] or '-':>5} {row['benchmark'][:23]:<24}{_fmt(row['teacher']):>8}"
                     f"{_fmt(row['student']):>8}{_fmt(row['ratio']):>7} {_interval(row['interval']):<17}"
                     f"{_fmt(row.get('quantized')):>10}{_fmt(row.get('quantized_ratio')):>7} {row['tier']:<8}")
    bundle = figures["bundle"]
    lines.append(f"teacher-removal gate: {figures['gate']}; bundle: {bundle.get('bundle') or 'not written'}"
                 + (f" ({bundle['bundle_bytes'] / 1e6:.2f} MB, {bundle['scheme']}, "
                    f"{bundle['ratio_to_fp32']:.2f} x fp32)" if bundle.get("bundle_bytes") else ""))
    return "\n".join(lines)


def _scale(values: list[float], low: float, high: float, start: float, end: float) -> list[float]:
    span = (high - low) or 1.0
    return [start + (value - low) / span * (end - start) for value in values]


def _frame(title: str, body: str, x_label: str, y_label: str) -> str:
    return (f'<figure><svg width="{_WIDTH}" height="{_HEIGHT}" role="img" aria-label="{html.escape(title)}">'
            f'<rect x="{_PAD}" y="10" width="{_WIDTH - _PAD - 10}" height="{_HEIGHT - _PAD - 10}" fill="none" stroke="#999"/>'
            f'{body}<text x="{_WIDTH / 2}" y="{_HEIGHT - 8}" text-anchor="middle" font-size="11">{html.escape(x_label)}</text>'
            f'<text x="12" y="{_HEIGHT / 2}" font-size="11" transform="rotate(-90 12 {_HEIGHT / 2})" '
            f'text-anchor="middle">{html.escape(y_label)}</text></svg><figcaption>{html.escape(title)}</figcaption></figure>')


def _legend(names: list[str]) -> str:
    return "".join(f'<text x="{_PAD + 8}" y="{26 + 13 * i}" font-size="11" fill="{_COLOURS[i % len(_COLOURS)]}">'
                   f'{html.escape(name)}</text>' for i, name in enumerate(names))


def _lines(series: dict[str, list[tuple[float, float]]], y_low: float, y_high: float) -> str:
    xs = [x for points in series.values() for x, _ in points]
    if not xs:
        return ""
    body = []
    for index, (name, points) in enumerate(series.items()):
        px = _scale([x for x, _ in points], min(xs), max(xs), _PAD, _WIDTH - 10)
        py = _scale([y for _, y in points], y_low, y_high, _HEIGHT - _PAD, 10)
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px, py, strict=True))
        body.append(f'<polyline fill="none" stroke="{_COLOURS[index % len(_COLOURS)]}" stroke-width="1.3" '
                    f'points="{path}"><title>{html.escape(name)}</title></polyline>')
    return "".join(body) + _legend(list(series))


def variance_plot(figures: dict[str, Any]) -> str:
    series = {}
    for name, ratios in figures["variance"].items():
        total, points = 0.0, []
        for k, ratio in enumerate(ratios[:64], start=1):
            total += ratio
            points.append((k, total))
        series[name] = points
    return _frame("Cumulative explained variance of the first key layer, per capability",
                  _lines(series, 0.0, 1.0), "principal components", "explained variance")


def rank_plot(figures: dict[str, Any]) -> str:
    names = list(figures["ranks"])
    if not names:
        return _frame("Rank audit", "", "capability", "dimensions")
    top = max(max(a["intrinsic_dim"], a["chosen_rank"]) for a in figures["ranks"].values()) or 1
    width = (_WIDTH - _PAD - 20) / len(names)
    body = []
    for i, name in enumerate(names):
        audit = figures["ranks"][name]
        for j, (key, colour) in enumerate((("intrinsic_dim", "#aaa"), ("chosen_rank", _COLOURS[0]))):
            height = audit[key] / top * (_HEIGHT - _PAD - 30)
            x = _PAD + 10 + i * width + j * width * 0.4
            body.append(f'<rect x="{x:.1f}" y="{_HEIGHT - _PAD - height:.1f}" width="{width * 0.35:.1f}" '
                        f'height="{height:.1f}" fill="{colour}"><title>{name} {key} {audit[key]}</title></rect>')
        body.append(f'<text x="{_PAD + 10 + i * width + width * 0.35:.1f}" y="{_HEIGHT - _PAD + 14}" font-size="11" '
                    f'text-anchor="middle">{html.escape(name)} {audit["chosen_rank"]}/{audit["intrinsic_dim"]}'
                    f'{" (cut)" if audit["truncated"] else ""}</text>')
    return _frame("Rank audit: intrinsic dimension (grey) and chosen rank (blue); max rank caps it",
                  "".join(body), "capability (rank/intrinsic dim)", "dimensions")


def loss_plot(figures: dict[str, Any]) -> str:
    losses = figures["losses"]
    values = [loss for points in losses.values() for _, loss in points]
    if not values:
        return _frame("Training loss", "", "step", "loss")
    high = sorted(values)[int(0.99 * (len(values) - 1))]
    body = _lines({phase: [(x, min(y, high)) for x, y in points] for phase, points in losses.items()}, 0.0, high)
    xs = [x for points in losses.values() for x, _ in points]
    for rollback in figures["rollbacks"]:
        x = _scale([rollback["step"]], min(xs), max(xs), _PAD, _WIDTH - 10)[0]
        body += (f'<line x1="{x:.1f}" x2="{x:.1f}" y1="10" y2="{_HEIGHT - _PAD}" stroke="#d62728" stroke-dasharray="4 3">'
                 f'<title>rollback ({rollback["reason"]}) in {rollback["phase"]} at step {rollback["step"]}</title></line>')
    return _frame(f"Training loss per phase (steps laid end to end); dashed red: rollbacks "
                  f"({len(figures['rollbacks'])})", body, "step", "loss (clipped at the 99th percentile)")


def retention_plot(figures: dict[str, Any]) -> str:
    from nexus_kernel.algorithms.retention import THRESHOLD

    rows = figures["retention"]
    if not rows:
        return _frame("Retention", "", "capability", "student / teacher")
    low, high = 0.8, 1.1
    width = (_WIDTH - _PAD - 20) / len(rows)
    body = []
    threshold_y = _scale([THRESHOLD], low, high, _HEIGHT - _PAD, 10)[0]
    for i, (name, row) in enumerate(rows.items()):
        for j, (ratio_key, interval_key, colour) in enumerate(
                (("ratio", "interval", _COLOURS[0]), ("quantized_ratio", "quantized_interval", _COLOURS[2]))):
            ratio = row.get(ratio_key)
            if ratio is None:
                continue
            x = _PAD + 10 + i * width + j * width * 0.4
            top = _scale([min(max(ratio, low), high)], low, high, _HEIGHT - _PAD, 10)[0]
            body.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{width * 0.35:.1f}" height="{_HEIGHT - _PAD - top:.1f}" '
                        f'fill="{colour}"><title>{name} {ratio_key} {ratio:.3f}</title></rect>')
            if row.get(interval_key):
                ends = _scale([min(max(v, low), high) for v in row[interval_key]], low, high, _HEIGHT - _PAD, 10)
                centre = x + width * 0.175
                body.append(f'<line x1="{centre:.1f}" x2="{centre:.1f}" y1="{ends[0]:.1f}" y2="{ends[1]:.1f}" '
                            f'stroke="#000" stroke-width="1.5"/>')
        body.append(f'<text x="{_PAD + 10 + i * width + width * 0.35:.1f}" y="{_HEIGHT - _PAD + 14}" font-size="11" '
                    f'text-anchor="middle">{html.escape(name)}</text>')
    body.append(f'<line x1="{_PAD}" x2="{_WIDTH - 10}" y1="{threshold_y:.1f}" y2="{threshold_y:.1f}" stroke="#d62728"/>'
                f'<text x="{_WIDTH - 14}" y="{threshold_y - 4:.1f}" font-size="10" text-anchor="end">{THRESHOLD}</text>')
    return _frame("Retention student/teacher (blue fp32, green quantized) with 95 % intervals; red line: the "
                  "threshold; axis from 0.8", "".join(body), "capability", "student / teacher")


def render_html(figures: dict[str, Any]) -> str:
    plots = "".join((variance_plot(figures), rank_plot(figures), loss_plot(figures), retention_plot(figures)))
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Nexus run report</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}figure{display:inline-block;margin:8px}"
            "pre{background:#f6f6f6;padding:8px}</style></head><body>"
            f"<h1>Nexus run report</h1><p>{html.escape(figures['run'])}</p>"
            f"<h2>Retention</h2><pre>{html.escape(table(figures))}</pre><h2>Plots</h2>{plots}</body></html>")


def write_report(run_dir: Path) -> Path:
    """Write `report.html` for `run_dir` (atomically) and return its path."""
    from nexus_kernel.run.fsio import atomic_write_text

    path = run_dir / REPORT_HTML
    atomic_write_text(path, render_html(collect(run_dir)))
    return path

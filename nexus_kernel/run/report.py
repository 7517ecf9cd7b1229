"""The run report: the figures of a run directory as `report.html` and as a text table.

`collect(run_dir)` reads what the stages wrote (profiles, `architecture.json`,
`training.jsonl`, `verify_report.json`, `package_report.json`), tolerating stages that did
not run. `render_html` draws four matplotlib plots, each saved as SVG and inlined in the page
(one self-contained file: no network, nothing next to it): explained variance per capability,
the rank audit, loss curves with rollback markers, and retention bars with their 95 % intervals
and the pass threshold. Every plot has labelled ticks on both axes, axis labels and a title; the
bars carry their values; a stage that did not run gives a plot that says so. The same figures
give the same bytes (fixed SVG ids, no date). `table` is the same figures as the text printed at
the end of `nexus run`. matplotlib is imported inside the functions: `nexus --help` stays fast.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nexus_kernel.run.layout import PROFILE_DIR, REPORT_HTML


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


def _plot(name: str, title: str, x_label: str, y_label: str, draw: Callable[[Any], None] | None) -> str:
    """One figure as `<figure id=name>` around an inline `<svg>`: `draw(axes)` fills it, or a
    "not run" text when `draw` is None. Labels stay SVG text (`svg.fonttype = none`); a fixed
    salt makes matplotlib's element ids the same for the same figures, and the ids are prefixed
    with `name` so that four plots share one page without two elements of the same id."""
    import io

    import matplotlib
    import matplotlib.style
    from matplotlib.figure import Figure

    # A bare Figure, not pyplot: no global figure manager keeps it alive, so there is nothing
    # to close and no backend to switch (savefig picks the SVG canvas).
    # matplotlib's defaults under ours, not a user's matplotlibrc: the same run, the same report.
    ours = {"svg.fonttype": "none", "svg.hashsalt": f"nexus-{name}", "font.size": 9, "axes.grid": True,
            "grid.alpha": 0.3, "axes.axisbelow": True}
    with matplotlib.style.context("default"), matplotlib.rc_context(ours):
        figure = Figure(figsize=(6.0, 3.2))
        axes = figure.add_subplot()
        if draw is None:
            axes.text(0.5, 0.5, "not run", transform=axes.transAxes, ha="center", va="center", fontsize=12,
                      color="0.4")
        else:
            draw(axes)
            if axes.get_legend_handles_labels()[0]:
                # Outside the data area, so a legend never covers a bar or a curve.
                axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, frameon=False)
        axes.set(title=title, xlabel=x_label, ylabel=y_label)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = re.sub(r'(\bid="|href="#|url\(#)', rf"\g<1>{name}-", svg[svg.index("<svg"):])
    return f'<figure id="{name}">{svg}</figure>'


def variance_plot(figures: dict[str, Any]) -> str:
    """Cumulative explained variance of the first key layer (first 64 components), one curve per capability."""
    variance = figures["variance"]

    def draw(axes: Any) -> None:
        from itertools import accumulate

        from matplotlib.ticker import MaxNLocator

        for name, ratios in variance.items():
            cumulative = list(accumulate(ratios[:64]))
            axes.plot(range(1, len(cumulative) + 1), cumulative, marker=".", markersize=3, label=name)
        axes.set_ylim(0.0, 1.02)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))

    return _plot("variance", "Cumulative explained variance of the first key layer", "principal components",
                 "cumulative explained variance", draw if variance else None)


def rank_plot(figures: dict[str, Any]) -> str:
    """Intrinsic dimension and chosen rank per capability, values on the bars, the max rank dashed."""
    ranks = figures["ranks"]

    def draw(axes: Any) -> None:
        from matplotlib.ticker import MaxNLocator

        names, width = list(ranks), 0.38
        centres = range(len(names))
        for offset, key, label, colour in ((-width / 2, "intrinsic_dim", "intrinsic dimension", "0.6"),
                                           (width / 2, "chosen_rank", "chosen rank", "C0")):
            bars = axes.bar([i + offset for i in centres], [ranks[name][key] for name in names], width,
                            label=label, color=colour)
            axes.bar_label(bars, padding=2, fontsize=8)
        capped = [(i, ranks[name]["max_rank"]) for i, name in enumerate(names) if ranks[name].get("max_rank")]
        if capped:
            axes.hlines([cap for _, cap in capped], [i - width for i, _ in capped], [i + width for i, _ in capped],
                        colors="C3", linestyles="dashed", label="max rank")
        axes.set_xticks(list(centres), [name + ("\n(truncated)" if ranks[name]["truncated"] else "")
                                        for name in names])
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.margins(y=0.15)

    return _plot("ranks", "Rank audit: intrinsic dimension and chosen rank per capability", "capability",
                 "dimensions", draw if ranks else None)


def loss_plot(figures: dict[str, Any]) -> str:
    """Training loss per phase, steps laid end to end, clipped at the 99th percentile; rollbacks dashed."""
    import math

    losses = {phase: [(x, y) for x, y in points if y is not None and math.isfinite(y)]
              for phase, points in figures["losses"].items()}
    values = sorted(y for points in losses.values() for _, y in points)
    rollbacks = figures["rollbacks"]

    def draw(axes: Any) -> None:
        high = values[int(0.99 * (len(values) - 1))]
        for phase, points in losses.items():
            axes.plot([x for x, _ in points], [min(y, high) for _, y in points], linewidth=1.2, label=phase)
        for index, rollback in enumerate(rollbacks):
            axes.axvline(rollback["step"], color="C3", linestyle="--", linewidth=1,
                         label="rollback" if index == 0 else "_nolegend_")
        low = min(0.0, values[0])
        axes.set_ylim(low, high + 0.05 * ((high - low) or 1.0))

    return _plot("losses", f"Training loss per phase, steps end to end; rollbacks: {len(rollbacks)}", "step",
                 "loss (clipped at the 99th percentile)", draw if values else None)


def retention_plot(figures: dict[str, Any]) -> str:
    """Student/teacher ratio per capability, fp32 and quantized, with 95 % intervals, values on the
    bars and the pass threshold; a ratio that is not measurable is written where its bar would be."""
    from nexus_kernel.algorithms.retention import THRESHOLD

    rows = figures["retention"]

    def draw(axes: Any) -> None:
        from matplotlib.ticker import MaxNLocator, StrMethodFormatter

        names, width = list(rows), 0.38
        seen = [THRESHOLD, 1.0]
        missing = []
        for offset, key, interval_key, label, colour in (
                (-width / 2, "ratio", "interval", "fp32", "C0"),
                (width / 2, "quantized_ratio", "quantized_interval", "quantized", "C2")):
            xs, heights, below, above = [], [], [], []
            for i, name in enumerate(names):
                row = rows[name]
                if key not in row:  # not packaged
                    continue
                if row[key] is None:
                    missing.append(i + offset)
                    continue
                interval = row.get(interval_key) or (row[key], row[key])
                xs.append(i + offset)
                heights.append(row[key])
                below.append(max(0.0, row[key] - interval[0]))
                above.append(max(0.0, interval[1] - row[key]))
                seen += [row[key], *interval]
            if xs:
                bars = axes.bar(xs, heights, width, yerr=[below, above], capsize=3, ecolor="black",
                                label=f"{label} (95 % interval)", color=colour)
                axes.bar_label(bars, fmt="{:.3f}", padding=2, fontsize=8)
        axes.axhline(THRESHOLD, color="C3", linestyle="--", linewidth=1, label=f"threshold {THRESHOLD}")
        # The ratios sit near 1: an axis from 0 would hide their differences, so it starts near the lowest.
        bottom = min(0.8, min(seen) - 0.05)
        top = max(1.05, max(seen))
        axes.set_ylim(bottom, top + 0.1 * (top - bottom))
        for x in missing:
            axes.text(x, bottom, " not measurable", rotation=90, ha="center", va="bottom", fontsize=8, color="0.3")
        axes.set_xticks(range(len(names)), names)
        axes.set_xlim(-0.5, len(names) - 0.5)  # room for every capability, also one with no bar
        axes.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
        axes.yaxis.set_major_formatter(StrMethodFormatter("{x:.2f}"))

    return _plot("retention", "Retention: student / teacher per capability", "capability", "student / teacher",
                 draw if rows else None)


def render_html(figures: dict[str, Any]) -> str:
    """The whole page: the run, the retention table and the four plots, self-contained."""
    plots = "".join((variance_plot(figures), rank_plot(figures), loss_plot(figures), retention_plot(figures)))
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Nexus run report</title><style>"
            "body{font-family:sans-serif;max-width:1360px;margin:2em auto;padding:0 1em}"
            "figure{display:inline-block;margin:8px;vertical-align:top}figure svg{max-width:100%;height:auto}"
            "pre{background:#f6f6f6;padding:8px;overflow-x:auto}</style></head><body>"
            f"<h1>Nexus run report</h1><p>{html.escape(figures['run'])}</p>"
            f"<h2>Retention</h2><pre id=\"retention-table\">{html.escape(table(figures))}</pre>"
            f"<h2>Plots</h2>{plots}</body></html>")


def write_report(run_dir: Path) -> Path:
    """Write `report.html` for `run_dir` (atomically) and return its path."""
    from nexus_kernel.run.fsio import atomic_write_text

    path = run_dir / REPORT_HTML
    atomic_write_text(path, render_html(collect(run_dir)))
    return path

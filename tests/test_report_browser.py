"""`report.html` as a person sees it: rendered in headless Chromium (through Playwright, with the
system's `chromium`) from a run directory with realistic figures, then checked for what is on
screen (four drawn plots, tick labels and bar values as text, the retention table, no errors,
nothing fetched from outside the file) and saved as a full-page screenshot, `report.png`.

Without Chromium the browser test skips, unless `NEXUS_REQUIRE_BROWSER=1` (set by `.ci/run`,
which installs it) makes that a failure."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from nexus_kernel.algorithms.retention import THRESHOLD
from nexus_kernel.run.layout import PROFILE_DIR
from nexus_kernel.run.report import collect, render_html, write_report

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
# Per capability: intrinsic dim, max rank, chosen rank, student / teacher (None: not measurable)
# and its interval, and the same after quantization.
FIGURES = {
    "math": (5, 16, 5, None, None, None, None),
    "reasoning": (23, 16, 16, 0.953, (0.921, 0.985), 0.944, (0.910, 0.977)),
    "vision": (7, 16, 8, 1.012, (0.984, 1.041), 1.004, (0.975, 1.033)),
    "voice": (12, 16, 12, 0.991, (0.962, 1.018), 0.978, (0.949, 1.006)),
}
PHASES = {"adapter-math": 60, "adapter-reasoning": 60, "joint": 120}


def _score(value: float, n: int = 200) -> dict:
    return {"value": value, "n": n, "chance": 0.25}


def write_run_dir(run_dir: Path) -> Path:
    """A run directory after stage 6 as `collect` reads it: the architecture, one profile per
    capability, a journal of three phases with two rollbacks, and both retention reports."""
    capabilities = {}
    verify: dict = {"format": 1, "threshold": THRESHOLD, "gate": {"status": "passed"}, "capabilities": {}}
    quantized, tiers = {}, {}
    for index, (name, (intrinsic, max_rank, rank, ratio, interval, q_ratio, q_interval)) in enumerate(FIGURES.items()):
        capabilities[name] = {"rank": rank, "modality": "text", "teacher": f"nexus-demo-{name}"}
        decay = 0.25 + 0.1 * index
        weights = [math.exp(-decay * k) for k in range(max_rank)]
        layers = {f"model.layers.{k}": {"intrinsic_dim": intrinsic,
                                        "explained_variance_ratio": [w / sum(weights) * 0.97 for w in weights]}
                  for k in (3, 5)}
        profile = {"capability": name, "key_layers": ["model.layers.3", "model.layers.5"], "layers": layers,
                   "rank_audit": {"layer": "model.layers.3", "intrinsic_dim": intrinsic, "max_rank": max_rank,
                                  "chosen_rank": rank, "truncated": intrinsic > rank}}
        (run_dir / PROFILE_DIR / name).mkdir(parents=True)
        (run_dir / PROFILE_DIR / name / "profile.json").write_text(json.dumps(profile))
        teacher = 0.8 if ratio is not None else 0.27
        for report, value, bounds in ((verify["capabilities"], ratio, interval), (quantized, q_ratio, q_interval)):
            status = "not measurable" if value is None else "pass" if value >= THRESHOLD else f"below {THRESHOLD}"
            report[name] = {"benchmark": f"{name}-heldout", "teacher": _score(teacher),
                            "student": _score(teacher * (value if value is not None else 1.0)),
                            "retention": {"status": status, "ratio": value, "interval": bounds and list(bounds)}}
        tiers[name] = "gold" if ratio and ratio >= THRESHOLD else "unverified"
    (run_dir / "architecture.json").write_text(json.dumps({"capabilities": capabilities}))
    events = []
    for phase, steps in PHASES.items():
        events.append({"phase": phase, "kind": "start", "steps": steps})
        for step in range(steps):
            loss = 4.0 * math.exp(-step / 25) + 0.6 + 0.05 * math.sin(step)
            events.append({"phase": phase, "kind": "step", "step": step, "loss": loss * (30 if step == 7 else 1)})
            if phase == "joint" and step in (41, 87):
                events.append({"phase": phase, "kind": "rollback", "reason": "spike", "at_step": step,
                               "value": 9.0, "to_step": step - 10})
    (run_dir / "training.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    (run_dir / "verify_report.json").write_text(json.dumps(verify))
    (run_dir / "package_report.json").write_text(json.dumps({
        "status": "passed", "scheme": "int8", "quantized": quantized, "tiers": tiers,
        "bundle": str(run_dir / "bundle"), "bundle_bytes": 3_400_000, "sizes": {"ratio_to_fp32": 0.29}}))
    return run_dir


def test_report_is_deterministic_and_draws_stages_not_run(tmp_path: Path) -> None:
    run_dir = write_run_dir(tmp_path / "run")
    page = render_html(collect(run_dir))
    assert page == render_html(collect(run_dir))  # same figures, same bytes
    assert page.count("<svg") == 4 and "<?xml" not in page and "<!DOCTYPE svg" not in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "two elements of one id"
    referenced = set(re.findall(r'(?:href="#|url\(#)([^")]+)', page))
    assert referenced and referenced <= set(ids)
    empty = tmp_path / "empty"
    empty.mkdir()
    bare = render_html(collect(empty))
    assert bare.count("<svg") == 4 and bare.count(">not run</text>") == 4


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        found, why = None, f"playwright is not installed ({error}); make test installs the test extra"
    else:
        why = "chromium not found on PATH; .ci/run installs it (apt-get install chromium)"
    if found:
        return found
    if os.environ.get("NEXUS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"NEXUS_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


# Per plot, what the browser drew: its box, its shapes and its texts by role.
_LOOK = """() => [...document.querySelectorAll("figure")].map(figure => {
    const svg = figure.querySelector("svg"), box = svg.getBoundingClientRect();
    const texts = selector => [...svg.querySelectorAll(selector)].map(t => t.textContent.trim()).filter(t => t);
    return {id: figure.id, width: box.width, height: box.height,
            shapes: svg.querySelectorAll("path, rect, polyline, line, use").length,
            xticks: texts('[id*="-xtick_"] text'), yticks: texts('[id*="-ytick_"] text'),
            texts: texts("text"), visible: svg.checkVisibility(),
            yticks_right: Math.max(...[...svg.querySelectorAll('[id*="-ytick_"] text')]
                                   .map(t => t.getBoundingClientRect().right)),
            unmeasured_left: [...svg.querySelectorAll("text")].filter(t => t.textContent.includes("not measurable"))
                                 .map(t => t.getBoundingClientRect().left)};
})"""


def test_report_in_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    run_dir = write_run_dir(tmp_path / "run")
    report = write_report(run_dir)
    problems: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: problems.append(f"console: {message.text}")
                    if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("request", lambda request: fetched.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            plots = {plot["id"]: plot for plot in page.evaluate(_LOOK)}
            table = page.locator("#retention-table").inner_text()
            screenshot = run_dir / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert not problems, problems
    assert fetched == [report.as_uri()], f"the page fetched more than itself: {fetched}"
    assert list(plots) == ["variance", "ranks", "losses", "retention"]
    for name, plot in plots.items():
        assert plot["visible"] and plot["width"] > 200 and plot["height"] > 150, (name, plot)
        assert plot["shapes"] > 10, (name, plot["shapes"])
        assert len(plot["xticks"]) >= 2 and len(plot["yticks"]) >= 2, (name, plot["xticks"], plot["yticks"])
        assert "not run" not in plot["texts"], name

    retention = plots["retention"]
    assert all(re.fullmatch(r"\d\.\d\d", tick) for tick in retention["yticks"]), retention["yticks"]
    assert {"0.95", "1.00"} <= set(retention["yticks"])
    assert retention["xticks"] == list(FIGURES)
    bars = {f"{figure[k]:.3f}" for figure in FIGURES.values() for k in (3, 5) if figure[k] is not None}
    assert bars <= set(retention["texts"]), bars - set(retention["texts"])
    assert f"threshold {THRESHOLD}" in retention["texts"]
    # math's two bars are not measurable: said where they would be, clear of the y tick labels
    assert len(retention["unmeasured_left"]) == 2
    assert min(retention["unmeasured_left"]) > retention["yticks_right"] + 5, retention
    ranks = plots["ranks"]
    assert {"intrinsic dimension", "chosen rank", "max rank"} <= set(ranks["texts"])
    assert {str(figure[k]) for figure in FIGURES.values() for k in (0, 2)} <= set(ranks["texts"])
    assert "(truncated)" in ranks["xticks"]  # reasoning: intrinsic dim 23 above max rank 16
    assert set(PHASES) | {"rollback"} <= set(plots["losses"]["texts"])
    assert "Training loss per phase, steps end to end; rollbacks: 2" in plots["losses"]["texts"]
    assert set(FIGURES) <= set(plots["variance"]["texts"])

    rows = table.splitlines()
    assert rows[0].startswith("capability") and len(rows) == 2 + len(FIGURES) + 1
    assert rows[5].startswith("voice") and "0.991" in rows[5] and "[0.962, 1.018]" in rows[5]

    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1400 and height > 900 and len(data) > 50_000, (width, height, len(data))
    from PIL import Image

    with Image.open(screenshot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 100, "the screenshot is nearly blank"

"""Distillation across tokenizers: ULD against sequence-level cross-entropy, same budget, one run.

A mixed project, as a user with two teachers of different families has: SmolLM2-135M-Instruct
(49,152-token BPE) as the knowledge teacher and the demo reasoning teacher (a word-level
tokenizer of a few hundred pieces, 1.000 on its held-out questions), into one student cut from
SmolLM2 (`student.backbone = "teacher:knowledge"`, `--keep` blocks by stage 2's ranking,
adapters only, backbone frozen). No reasoning-teacher logit can be read in the student's
vocabulary, so the reasoning capability distils across tokenizers. `nexus run --to distill`
runs once per reasoning loss (`[capabilities.reasoning] text_loss = "sequence"`, then
`"uld"`), with the same seed, pools, batch and number of steps; knowledge keeps its `kl`. For
each loss and capability it prints the teacher's and the student's held-out scores, the
retention ratio with its 95 % interval (`nexus_kernel.algorithms.retention.verdict`, as
`distill_report.json` has it), the objective and why, and stage 4's seconds; then the ratio of
the reasoning retentions uld / sequence.

    python benchmarks/cross_tokenizer.py [--steps 200] [--keep 28] [--pool 256] [--batch 16]
        [--eval 80] [--teacher DIR] [--smollm2 DIR] [--cache DIR] [--json f.json]
        [--losses sequence uld]

Measured on 2 cores, `--steps 100 --eval 80`, student cut to 28 blocks by stage 2's greedy
removal ranking (commit dbd19fd): with `sequence`, knowledge 0.812 against the teacher's 0.825
(retention 0.985 [0.905, 1.079]) and reasoning 0.588 against 0.988 (0.595 [0.481, 0.696],
chance 0.400); stage 4 1231 s. With `uld` (`--losses uld`, same settings): knowledge the same
0.812, reasoning 0.475 (0.481 [0.375, 0.590]); stage 4 1298 s. Retention uld / sequence = 0.81,
so sequence stays the default across tokenizers.

Earlier measurement, with a stand-in student (SmolLM2 with 6 evenly spaced blocks, reasoning
alone, 50 adapter steps, 2 cores shared with other jobs): retention sequence 0.438 [0.325,
0.550], uld 0.375 [0.263, 0.475] (n = 80, chance 0.400), both still at chance.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nexus_kernel.run.fsio import atomic_write_json, sha256_json

REPO = Path(__file__).resolve().parents[1]
LOSSES = ("sequence", "uld")
sys.path.insert(0, str(REPO / "tests"))
from real_models import cache_root, smollm2_folder  # noqa: E402  (the tests' one way to SmolLM2)


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a `save_pretrained` folder (`tests/real_models.py`), or exit saying why."""
    folder, why = smollm2_folder()
    if folder is None:
        sys.exit(f"{why} (or pass --smollm2 DIR)")
    return folder


def reasoning_teacher(cache: Path) -> Path:
    """The demo reasoning teacher, built once with its default recipe into `cache` (keyed by
    the recipe's hash)."""
    from nexus_cap_reasoning.teacher import demo

    teacher = demo()
    folder = cache / f"{teacher.name}-{sha256_json(teacher.recipe)[:12]}"
    if (folder / "config.json").is_file():
        return folder
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache))
    result = teacher.build(partial, teacher.recipe, lambda steps: None)
    scores = ", ".join(f"{name} {score.value:.3f} (n={score.n})" for name, score in result.scores.items())
    print(f"built {teacher.name}: held-out {scores}", flush=True)
    partial.rename(folder)
    return folder


def project(root: Path, teacher: Path, smollm2_folder: Path, loss: str, args: argparse.Namespace) -> Path:
    """A mixed project in `root`: SmolLM2 as the knowledge teacher and a copy of the demo
    reasoning `teacher`, both as the user's folders; the student cut from SmolLM2
    (`student.backbone = "teacher:knowledge"`, `--keep` blocks by stage 2's ranking, adapters
    only); reasoning distilled with this `loss`."""
    shutil.copytree(REPO / "configs", root / "configs")
    csv_path = root / "configs/ModelName-Parameters-Category-BestFeature.csv"
    rows = [row for row in csv.DictReader(csv_path.read_text().splitlines()) if row["Category"] == "Reasoning"]
    rows.append({"Model Name": smollm2_folder.name, "Parameters": "135M", "Category": "Knowledge",
                 "Best Feature": "short factual questions"})
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copytree(teacher, root / "models" / rows[0]["Model Name"],
                    ignore=shutil.ignore_patterns("nexus_demo.json", ".*"))
    shutil.copytree(smollm2_folder, root / "models" / smollm2_folder.name)
    config = root / "configs/nexus.toml"
    # The demo config pins NF4 for the demo teachers; SmolLM2 takes the CPU's fastest precision.
    config.write_text(config.read_text().replace('quantization = "nf4"', 'quantization = "auto"'))
    with config.open("a") as handle:
        handle.write(f"""
[student]
backbone = "teacher:knowledge"
keep_layers = {args.keep}

[distill]
adapter_steps = {args.steps}
pool_size = {args.pool}
batch_size = {args.batch}
eval_samples = {args.eval}
learning_rate = {args.lr}
threads = {args.threads}
checkpoint_every = {max(args.steps, 1)}
check_every = {max(args.steps // 2, 1)}

[capabilities.reasoning]
text_loss = "{loss}"
""")
    return root


def distil(root: Path) -> dict[str, Any]:
    """`nexus run --to distill` in `root`; the reasoning entry of `distill_report.json` and
    stage 4's seconds."""
    nexus = Path(sys.executable).parent / "nexus"
    command = [str(nexus), "run", "--plugins", "knowledge,reasoning", "--config", "configs/nexus.toml", "--run-dir",
               "run", "--to", "distill"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"nexus run failed in {root} (exit {done.returncode}):\n{done.stderr[-4000:]}")
    state = json.loads((root / "run/state.json").read_text())["stages"]
    report = json.loads((root / "run/distill_report.json").read_text())
    figures: dict[str, Any] = {"distill_seconds": state["distill"]["seconds"],
                               "run_seconds": round(time.perf_counter() - started, 1), "capabilities": {}}
    for name, entry in report["capabilities"].items():
        headline = entry["benchmark"]
        figures["capabilities"][name] = {
            "teacher": entry["teacher"][headline], "student": entry["student"][headline],
            "retention": entry["retention"], "output_loss": entry["output_loss"],
            "phase": report["phases"][f"adapter-{name}"]}
    return figures


def _line(loss: str, name: str, figures: dict[str, Any]) -> str:
    retention = figures["retention"]
    interval = retention["interval"]
    shown = "not measurable" if retention["ratio"] is None else (
        f"{retention['ratio']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""))
    return (f"{loss:>8} {name:>9}: teacher {figures['teacher']['value']:.3f}, student {figures['student']['value']:.3f} "
            f"(n={figures['student']['n']}, chance {figures['teacher']['chance']:.3f}), retention {shown}, "
            f"{figures['output_loss']['why']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="adapter steps, the same for each loss")
    parser.add_argument("--pool", type=int, default=256, help="training items the teacher answers")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval", type=int, default=80, help="held-out questions scored")
    parser.add_argument("--lr", type=float, default=2e-3, help="adapter learning rate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=int, default=28, help="SmolLM2 blocks the student keeps (stage 2's ranking)")
    parser.add_argument("--teacher", type=Path, help="a built demo reasoning teacher (default: build one)")
    parser.add_argument("--smollm2", type=Path, help="SmolLM2-135M-Instruct folder (default: the tests' cache)")
    parser.add_argument("--cache", type=Path, default=cache_root() / "benchmarks")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES),
                        help="the reasoning losses to run (default both; the ratio needs both)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    teacher = args.teacher or reasoning_teacher(args.cache)
    source = args.smollm2 or smollm2()
    figures: dict[str, Any] = {"steps": args.steps, "pool": args.pool, "batch": args.batch, "eval": args.eval,
                               "learning_rate": args.lr, "threads": args.threads, "teacher": str(teacher),
                               "knowledge_teacher": str(source), "keep_layers": args.keep, "losses": {}}
    with tempfile.TemporaryDirectory(prefix="nexus-cross-tokenizer-") as scratch:
        for loss in args.losses:
            figures["losses"][loss] = distil(project(Path(scratch) / loss, teacher, source, loss, args))
            for name, entry in sorted(figures["losses"][loss]["capabilities"].items()):
                print(_line(loss, name, entry), flush=True)
            print(f"{loss:>8}: stage 4 {figures['losses'][loss]['distill_seconds']:.0f} s", flush=True)
    if args.json:
        atomic_write_json(args.json, figures)
    if len(args.losses) < len(LOSSES):
        return
    ratios = {loss: figures["losses"][loss]["capabilities"]["reasoning"]["retention"]["ratio"] for loss in LOSSES}
    figures["ratio"] = ratios["uld"] / ratios["sequence"] if ratios["uld"] is not None and ratios["sequence"] else None
    shown = f"{figures['ratio']:.3f}" if figures["ratio"] is not None else "undefined (sequence retained nothing)"
    print(f"reasoning across tokenizers, {args.steps} adapter steps each: retention uld / sequence = {shown}")
    if args.json:
        atomic_write_json(args.json, figures)


if __name__ == "__main__":
    main()

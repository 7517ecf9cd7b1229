"""Distillation across tokenizers: ULD against sequence-level cross-entropy, same budget, one run.

The demo reasoning teacher (word-level tokenizer of a few hundred pieces, 1.000 on its held-out
questions) is distilled into a student whose backbone is a local causal-LM folder derived from
SmolLM2-135M-Instruct (49,152-token BPE), so no teacher logit can be read in the student's
vocabulary. `nexus run --to distill` runs on a reasoning-only project once per loss
(`[capabilities.reasoning] text_loss = "sequence"`, then `"uld"`), with the same seed, pool,
batch and number of steps, adapter only (backbone frozen, `distill.joint_steps = 0`). For each
loss it prints the teacher's and the student's held-out scores, the retention ratio with its
95 % interval (`nexus_kernel.algorithms.retention.verdict`, as `distill_report.json` has it),
the objective and why, and stage 4's seconds; then the ratio of retentions uld / sequence.

The student backbone is a stand-in made by `student_backbone` (SmolLM2 with `--keep` evenly
spaced decoder blocks, saved with `save_pretrained`); once `student.backbone` can depth-prune a
teacher by stage 2's ranking, only that function changes.

    python benchmarks/cross_tokenizer.py [--steps 50] [--pool 256] [--batch 8] [--eval 80]
        [--teacher DIR] [--smollm2 DIR] [--cache DIR] [--json f.json]

Measured at the defaults on 2 CPU cores shared with other jobs: a step of the 6-block,
49.6M-parameter student on a batch of 8 took 10-18 s (635 s of training for `sequence`, 717 s
for `uld`), stage 4 about 15 minutes per loss with its scoring, so 30-35 minutes in all
(building the demo teacher, once, about 4 more). Retention: sequence 0.438 [0.325, 0.550], uld
0.375 [0.263, 0.475] (n = 80, chance 0.400): ratio 0.857, both still at chance after 50 steps.
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


def student_backbone(source: Path, cache: Path, keep: int) -> Path:
    """A causal-LM folder of `source` with `keep` evenly spaced decoder blocks (the first and
    the last included), its tokenizer beside it, in `cache` (made once, atomically). The
    embeddings are untied (the student's weights file cannot hold shared tensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache / f"{source.name}-{keep}-blocks"
    if (folder / "config.json").is_file():
        return folder
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    total = model.config.num_hidden_layers
    kept = sorted({round(i * (total - 1) / max(1, keep - 1)) for i in range(keep)})
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in kept])
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
    if model.config.tie_word_embeddings:
        model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        model.config.tie_word_embeddings = False
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache))
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(source).save_pretrained(partial)
    (partial / "nexus_blocks.json").write_text(json.dumps({"source": str(source), "kept": kept}))
    partial.rename(folder)
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
    print(f"built {teacher.name}: held-out {result.scores}", flush=True)
    partial.rename(folder)
    return folder


def project(root: Path, teacher: Path, backbone: Path, loss: str, args: argparse.Namespace) -> Path:
    """A reasoning-only project in `root`: the default configs, the CSV's reasoning row, a copy
    of `teacher` as the user's folder, the student `backbone` and this loss."""
    shutil.copytree(REPO / "configs", root / "configs")
    csv_path = root / "configs/ModelName-Parameters-Category-BestFeature.csv"
    rows = [row for row in csv.DictReader(csv_path.read_text().splitlines()) if row["Category"] == "Reasoning"]
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copytree(teacher, root / "models" / rows[0]["Model Name"],
                    ignore=shutil.ignore_patterns("nexus_demo.json", ".*"))
    with (root / "configs/nexus.toml").open("a") as config:
        config.write(f"""
[student]
backbone = "{backbone}"

[distill]
adapter_steps = {args.steps}
joint_steps = 0
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
    command = [str(nexus), "run", "--plugins", "reasoning", "--config", "configs/nexus.toml", "--run-dir", "run",
               "--to", "distill"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"nexus run failed in {root} (exit {done.returncode}):\n{done.stderr[-4000:]}")
    state = json.loads((root / "run/state.json").read_text())["stages"]
    report = json.loads((root / "run/distill_report.json").read_text())
    entry = report["capabilities"]["reasoning"]
    headline = entry["benchmark"]
    return {"teacher": entry["teacher"][headline], "student": entry["student"][headline],
            "retention": entry["retention"], "output_loss": entry["output_loss"],
            "distill_seconds": state["distill"]["seconds"], "run_seconds": round(time.perf_counter() - started, 1),
            "phase": report["phases"]["adapter-reasoning"]}


def _line(loss: str, figures: dict[str, Any]) -> str:
    retention = figures["retention"]
    interval = retention["interval"]
    shown = "not measurable" if retention["ratio"] is None else (
        f"{retention['ratio']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""))
    return (f"{loss:>8}: teacher {figures['teacher']['value']:.3f}, student {figures['student']['value']:.3f} "
            f"(n={figures['student']['n']}, chance {figures['teacher']['chance']:.3f}), retention {shown}, "
            f"stage 4 {figures['distill_seconds']:.0f} s; {figures['output_loss']['why']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="adapter steps, the same for each loss")
    parser.add_argument("--pool", type=int, default=256, help="training items the teacher answers")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eval", type=int, default=80, help="held-out questions scored")
    parser.add_argument("--lr", type=float, default=3e-3, help="adapter learning rate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=int, default=6, help="SmolLM2 blocks the stand-in student keeps")
    parser.add_argument("--teacher", type=Path, help="a built demo reasoning teacher (default: build one)")
    parser.add_argument("--smollm2", type=Path, help="SmolLM2-135M-Instruct folder (default: the tests' cache)")
    parser.add_argument("--cache", type=Path, default=cache_root() / "benchmarks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    teacher = args.teacher or reasoning_teacher(args.cache)
    backbone = student_backbone(args.smollm2 or smollm2(), args.cache, args.keep)
    figures: dict[str, Any] = {"steps": args.steps, "pool": args.pool, "batch": args.batch, "eval": args.eval,
                               "learning_rate": args.lr, "threads": args.threads, "teacher": str(teacher),
                               "student_backbone": str(backbone), "losses": {}}
    with tempfile.TemporaryDirectory(prefix="nexus-cross-tokenizer-") as scratch:
        for loss in LOSSES:
            figures["losses"][loss] = distil(project(Path(scratch) / loss, teacher, backbone, loss, args))
            print(_line(loss, figures["losses"][loss]), flush=True)
    ratios = {loss: figures["losses"][loss]["retention"]["ratio"] for loss in LOSSES}
    figures["ratio"] = ratios["uld"] / ratios["sequence"] if ratios["uld"] is not None and ratios["sequence"] else None
    shown = f"{figures['ratio']:.3f}" if figures["ratio"] is not None else "undefined (sequence retained nothing)"
    print(f"reasoning across tokenizers, {args.steps} adapter steps each: retention uld / sequence = {shown}")
    if args.json:
        atomic_write_json(args.json, figures)


if __name__ == "__main__":
    main()

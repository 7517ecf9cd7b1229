"""The encoder matrix: a tiny random-init teacher of each speech and image-encoder class
(`encoder_zoo`), saved with its own extractor or processor, through stages 0-6 as a user's
voice or vision teacher.

Each class is a teacher folder named in a one-row CSV. Its data are noise recordings or noise
images, and every held-out item has a label of its own: leave-one-out nearest-centroid accuracy
has no centroid to find for any of them, so teacher and student score exactly 0 on any machine
and retention must say "not measurable" (never a pass); what the runs check is that every
class is read, profiled on its own blocks, answers the pool with embeddings of its width, and
is packaged. Per-class stage seconds are printed (`-s`) and written to `encoder-matrix.json` in
the module's temporary folder.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from encoder_zoo import IMAGE_KINDS, SPEECH_KINDS, WIDTH, save_encoder
from kernel_helpers import MATRIX_STAGES, TINY_PROFILE_AND_STUDENT, nexus, record_stage_times, require_plugins

PLUGIN = {**dict.fromkeys(SPEECH_KINDS, "voice"), **dict.fromkeys(IMAGE_KINDS, "vision")}
TINY_RUN = """
[plugins]
enabled = ["{plugin}"]

[registry]
csv = "{kind}.csv"
models_dir = "../models"

[capabilities.{plugin}]
data_dir = "../data/{plugin}"
""" + TINY_PROFILE_AND_STUDENT + """
[distill]
adapter_steps = 2
joint_steps = 0
pool_size = 16
batch_size = 8
eval_samples = 30
checkpoint_every = 2
check_every = 2

[package]
bundle_dir = "../bundles/{kind}"
max_fp32_ratio = 0.9  # int8 saves less on a 32-wide student than on a real one
"""


def _noise_data(root: Path) -> None:
    """`data/voice`: 60 noise recordings named `{label}_{speaker}_{take}.wav` (takes 0-4 test,
    5-9 train); `data/vision`: 66 noise images in `<split>/<label>/`. Training items take the
    labels `a` and `b` in turn; each of the 30 held-out items its own."""
    from nexus_cap_vision.data import LabelledImage, write_image_folder
    from nexus_cap_voice.data import SAMPLE_RATE, TEST_TAKES, wav_bytes

    rng, own, pair = np.random.default_rng(11), (f"u{index:02d}" for index in itertools.count()), itertools.cycle("ab")
    (root / "data/voice").mkdir(parents=True)
    for speaker in ("ann", "bob", "cal"):
        for take in range(10):
            for index in range(2):
                seconds = 0.3 + 0.1 * ((take + index) % 4)
                samples = (rng.standard_normal(int(SAMPLE_RATE * seconds)) * 0.1).astype(np.float32)
                label = next(own) if take in TEST_TAKES else next(pair)
                (root / "data/voice" / f"{label}_{speaker}{index}_{take}.wav").write_bytes(wav_bytes(samples))
    for split, count, labels in (("train", 36, pair), ("test", 30, own)):
        write_image_folder(root / "data/vision", split, [
            LabelledImage(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), next(labels)) for _ in range(count)])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every class's tiny teacher, the noise data, and a config and one-row CSV per class."""
    require_plugins("nexus_cap_voice", "nexus_cap_vision")
    root = tmp_path_factory.mktemp("encoders")
    _noise_data(root)
    (root / "configs").mkdir()
    for kind, plugin in PLUGIN.items():
        save_encoder(root / "models" / kind, kind)
        with (root / "configs" / f"{kind}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Model Name", "Parameters", "Category", "Best Feature"])
            writer.writerow([kind, "60K", plugin.title(), f"a random-init {kind}"])
        (root / "configs" / f"{kind}.toml").write_text(TINY_RUN.format(plugin=plugin, kind=kind))
    return root


_TIMES: dict[str, dict[str, float]] = {}


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*SPEECH_KINDS, *IMAGE_KINDS])
def test_each_encoder_class_runs_stages_0_to_6(project: Path, kind: str) -> None:
    plugin = PLUGIN[kind]
    result = nexus("run", "--config", f"configs/{kind}.toml", "--run-dir", f"runs/{kind}", "--to", "package",
                   cwd=project)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = project / "runs" / kind
    state = json.loads((run_dir / "state.json").read_text())
    assert all(state["stages"][stage]["status"] == "passed" for stage in MATRIX_STAGES), state
    record_stage_times(project / "encoder-matrix.json", _TIMES, kind, state)

    registry = json.loads((run_dir / "configs/teacher_registry.json").read_text())["teachers"]
    assert [(entry["output"], entry["benchmarks"][0]) for entry in registry] == [
        ("embedding", f"{plugin} centroid accuracy")]
    profile = json.loads((run_dir / f"niwt_stage2_output/{plugin}/profile.json").read_text())
    ranking = profile["ablation"]["ranking"]
    assert len(ranking) == 2 and all(re.search(r"(^|\.)layers?\.[01]$", name) for name in ranking)  # not convolutions
    assert set(profile["key_layers"]) <= set(ranking)
    assert all(layer["vectors"] > 0 for layer in profile["layers"].values())
    architecture = json.loads((run_dir / "architecture.json").read_text())["capabilities"][plugin]
    assert (architecture["adapter"]["output"], architecture["adapter"]["output_dim"]) == ("embedding", WIDTH)
    assert architecture["shapes"]["embedding"] == [2, WIDTH]
    pool = json.loads((run_dir / f"checkpoints/{plugin}/pool.json").read_text())
    assert pool["teacher"] == kind and pool["objective"] == "cosine"

    verify = json.loads((run_dir / "verify_report.json").read_text())["capabilities"][plugin]
    assert verify["teacher"]["n"] == 30 and verify["teacher"]["value"] == verify["student"]["value"] == 0
    assert verify["retention"]["status"] == "not measurable" and verify["retention"]["ratio"] is None
    manifest = json.loads((project / "bundles" / kind / "manifest.json").read_text())
    assert [t["name"] for t in manifest["provenance"]["teachers"]] == [kind]


def test_a_class_the_vision_plugin_cannot_serve_stops_stage_1_naming_it(project: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
              ).save_pretrained(project / "models" / "bert")
    (project / "configs" / "bert.csv").write_text("Model Name,Parameters,Category,Best Feature\nbert,60K,Vision,text\n")
    (project / "configs" / "bert.toml").write_text(TINY_RUN.format(plugin="vision", kind="bert"))
    result = nexus("run", "--config", "configs/bert.toml", "--run-dir", "runs/bert", "--to", "registry", cwd=project)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("vision: teacher class BertModel (model_type 'bert') in " in result.stderr
            and "supported model types: image encoders vit, dinov2, clip" in result.stderr)

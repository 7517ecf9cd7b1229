"""CONTRIBUTING.md's worked examples, typed out as written: each installs with pip and passes
the conformance kit, and the text-in, embedding-out one (`acme-cap-sentences`) runs every stage
on a tiny random-init BERT teacher, a user's folder registered through the CSV's `Path`
column, then a resumed stage 4 that must judge the same headline (the declared
`benchmarks[0]`), so the page a plugin author copies from stays true."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kernel_helpers import REPO, add_settings, file_hashes, nexus

_BLOCK = re.compile(r"```(?:python|toml)\n# file: (?P<path>\S+)\n(?P<body>.*?)```", re.DOTALL)
EXAMPLES = {"acme-cap-chemistry": "acme_cap_chemistry", "acme-cap-sentences": "acme_cap_sentences",
            "acme-cap-glyphs": "acme_cap_glyphs"}


def example_files() -> dict[str, str]:
    """Relative path to text of every `# file:` block in CONTRIBUTING.md."""
    return {match["path"]: match["body"] for match in _BLOCK.finditer((REPO / "CONTRIBUTING.md").read_text())}


def write_examples(root: Path) -> Path:
    for relative, body in example_files().items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    return root


def install(project: Path, site: Path) -> None:
    """`pip install --no-deps` into `site` (its dependencies are the installed kernel and helpers)."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(site), str(project)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_page_has_every_file_of_three_packages() -> None:
    files = set(example_files())
    for distribution, module in EXAMPLES.items():
        assert {f"{distribution}/pyproject.toml", f"{distribution}/src/{module}/__init__.py",
                f"{distribution}/src/{module}/teacher.py", f"{distribution}/src/{module}/student.py"} <= files


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder with the three examples pip-installed, once for the module."""
    pytest.importorskip("nexus_modalities", reason="the examples import nexus-modalities")
    root = write_examples(tmp_path_factory.mktemp("examples"))
    site = tmp_path_factory.mktemp("site")
    for distribution in EXAMPLES:
        install(root / distribution, site)
    return site


@pytest.mark.slow
def test_the_worked_examples_install_and_pass_the_conformance_kit(example_site: Path, tmp_path: Path) -> None:
    site = example_site
    probe = ("import importlib, json, sys\n"
             "from nexus_kernel.kit.testing import check_capability_plugin\n"
             "found = {}\n"
             f"for distribution, module in {EXAMPLES!r}.items():\n"
             "    plugin = importlib.import_module(module).plugin\n"
             "    found[distribution] = [(c.name, c.modality, c.output) for c in\n"
             "                           check_capability_plugin(plugin, distribution=distribution)]\n"
             "print(json.dumps(found))\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environment,
                            check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        '{"acme-cap-chemistry": [["chemistry", "text", "text"]], '
        '"acme-cap-sentences": [["sentences", "text", "embedding"]], '
        '"acme-cap-glyphs": [["glyphs", "image", "embedding"]]}')


TOPICS = {
    "fruit": ("apple", "pear", "plum", "mango"),
    "tools": ("hammer", "saw", "drill", "wrench"),
    "weather": ("rain", "snow", "storm", "wind"),
    "music": ("violin", "drum", "flute", "piano"),
}


def make_sentences(count: int, seed: int) -> list[dict[str, str]]:
    """`count` labelled sentences, the topics in turn, each three distinct words of its topic
    in random order: the topics differ in vocabulary, so even a random encoder separates them
    (chance is 0.25), and a few hundred sentences cover most orders, so a tiny student trained
    for a few hundred steps keeps up with its teacher."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    rows = []
    for index in range(count):
        label = topics[index % len(topics)]
        rows.append({"text": " ".join(rng.sample(TOPICS[label], 3)), "label": label})
    return rows


CENTROID = "sentence centroid accuracy"
COSINE = "cosine to the teacher"

STAGES = ("doctor", "lock", "registry", "profile", "architecture", "distill", "validate", "package", "cleanup")

TINY = """
[profiling]
probe_samples = 8
samples = 64

[distill]
adapter_steps = 300
joint_steps = 0
learning_rate = 1e-2
pool_size = 128
batch_size = 8
eval_samples = 40
checkpoint_every = 100
check_every = 100

# A small student: the adapter phase takes a few hundred cheap steps.
[student]
hidden_size = 32
layers = 2
heads = 2
intermediate_size = 64

[capabilities.sentences]
data_dir = "{data}"
"""


def write_bert_teacher(folder: Path, texts: list[str]) -> None:
    """A random-init `BertModel` and a word-level tokenizer trained on `texts` with the
    `tokenizers` library, saved side by side as a user's model folder (safetensors)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(token, tokenizer.token_to_id(token)) for token in ("[CLS]", "[SEP]")])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                      cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(7)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                        pad_token_id=tokenizer.token_to_id("[PAD]"))
    BertModel(config).save_pretrained(folder)
    wrapped.save_pretrained(folder)


@pytest.fixture
def sentence_project(tmp_path: Path, example_site: Path) -> tuple[Path, Path]:
    """A project whose only teacher is the BERT sentence encoder (outside the project, by
    absolute `Path`), its data folder, and CONTRIBUTING's `acme-cap-sentences` pip-installed
    into a site folder; returns the project root and the site folder to put on PYTHONPATH."""
    pytest.importorskip("nexus_modalities", reason="the example imports nexus-modalities")
    data = tmp_path / "data"
    data.mkdir()
    splits = {"train": make_sentences(128, seed=1), "test": make_sentences(40, seed=2)}
    for split, rows in splits.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    teacher = tmp_path / "elsewhere" / "acme-sentence-encoder"
    write_bert_teacher(teacher, [row["text"] for rows in splits.values() for row in rows])
    project = tmp_path / "project"
    shutil.copytree(REPO / "configs", project / "configs")
    (project / "configs/ModelName-Parameters-Category-BestFeature.csv").write_text(
        f"Model Name,Parameters,Category,Best Feature,Path\nacme-sentence-encoder,0.1M,Sentences,topics,{teacher}\n")
    config = project / "configs/nexus.toml"
    # Norms and embeddings stay fp32 in the bundle: a 32-wide student cannot shrink to 0.35 x.
    text = config.read_text().replace("[package]\n", "[package]\nmax_fp32_ratio = 0.7\n")
    config.write_text(text)
    add_settings(config, TINY.format(data=data))
    return project, example_site


def _statuses(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in STAGES and parts[0].lstrip("-").isdigit():
            found[parts[1]] = parts[2]
    return found


@pytest.mark.slow
def test_the_embedding_example_passes_every_stage_and_a_resumed_stage_4_keeps_its_headline(
    sentence_project: tuple[Path, Path],
) -> None:
    project, site = sentence_project
    fresh = nexus("run", "--plugins", "sentences", cwd=project, extra_path=site)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert _statuses(fresh.stdout) == dict.fromkeys(STAGES, "passed"), fresh.stdout
    run_dir = project / "runs/demo"

    architecture = json.loads((run_dir / "architecture.json").read_text())["capabilities"]["sentences"]
    assert architecture["adapter"]["output"] == "embedding" and architecture["adapter"]["input_projector"] is None
    assert architecture["shapes"]["embedding"] == [2, 32]  # the BERT teacher's hidden size
    assert "logits" not in architecture["shapes"]

    # The teacher's scores are cached in sorted order: the declared headline is not the first key.
    pool = json.loads((run_dir / "checkpoints/sentences/pool.json").read_text())
    assert pool["objective"] == "cosine" and list(pool["teacher_scores"]) == [COSINE, CENTROID]
    teacher = pool["teacher_scores"][CENTROID]
    # Topics differ in vocabulary, so even the random teacher separates them: measurable.
    assert teacher["chance"] == 1 / len(TOPICS) and teacher["value"] > 0.5

    report = json.loads((run_dir / "distill_report.json").read_text())["capabilities"]["sentences"]
    assert report["benchmark"] == CENTROID
    ratio = report["student"][CENTROID]["value"] / report["teacher"][CENTROID]["value"]
    assert report["retention"]["ratio"] == pytest.approx(ratio)
    assert report["retention"]["status"] == ("pass" if ratio >= 0.97 else "below 0.97")
    verify = json.loads((run_dir / "verify_report.json").read_text())["capabilities"]["sentences"]
    assert verify["benchmark"] == CENTROID and verify["retention"]["status"] == "pass"
    manifest = json.loads((project / "bundles/nexus_bundle_v1/manifest.json").read_text())
    assert manifest["capabilities"]["sentences"]["benchmark"] == CENTROID
    student_bytes = file_hashes(run_dir, "student.safetensors")

    # Resume stage 4: the adapter phase loses its end (it restarts from its last checkpoint)
    # and the teacher's figures come back from the cached pool.json, not from a loaded teacher.
    (run_dir / "checkpoints/adapter-sentences/done.json").unlink()
    (run_dir / "checkpoints/adapter-sentences/final.safetensors").unlink()
    resumed = nexus("run", "--plugins", "sentences", "--from", "distill", cwd=project, extra_path=site)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _statuses(resumed.stdout)["distill"] == "passed"
    again = json.loads((run_dir / "distill_report.json").read_text())["capabilities"]["sentences"]
    assert again["benchmark"] == CENTROID and again == report
    assert json.loads((run_dir / "verify_report.json").read_text())["capabilities"]["sentences"] == verify
    assert file_hashes(run_dir, "student.safetensors") == student_bytes

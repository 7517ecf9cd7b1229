"""The architecture matrix: a tiny random-init teacher of each supported causal-LM class, with
its own tokenizer trained here, through stages 0-6 as the math teacher.

Each class (`causal_zoo.SPECS`, the classes `nexus_kernel.teachers.classes` lists) is a user's
teacher folder named in a one-row CSV; a run per class profiles it (key layers are the class's
own block paths), has it answer the distillation pool, scores it on held-out items (random
weights sit at chance, so retention must be "not measurable", never a pass) and packages the
student. Per-class stage seconds come from `state.json` and are printed (`-s`) and written to
`architecture-matrix.json` in the module's temporary folder. The faster tests above the runs
check what the runs rely on: the tokenizers' special ids, batched cached decoding equal to
one-by-one decoding, and a class the kernel cannot hook failing clearly.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from causal_zoo import SPECS, ZooSpec, build_zoo_teacher
from kernel_helpers import MATRIX_STAGES, REPO, TINY_PROFILE_AND_STUDENT, nexus, record_stage_times, require_plugins

from nexus_kernel.errors import NexusError
from nexus_kernel.teachers.classes import SUPPORTED_CAUSAL_LMS, UnsupportedTeacherError, decoder_blocks
from nexus_kernel.teachers.loading import load_teacher_folder

IDS = [spec.architecture for spec in SPECS]
TINY_RUN = """
[plugins]
enabled = ["math"]

[registry]
csv = "{csv}"
models_dir = "../models"
""" + TINY_PROFILE_AND_STUDENT + """
[distill]
adapter_steps = 2
joint_steps = 0
pool_size = 8
batch_size = 8
eval_samples = 4
checkpoint_every = 2
check_every = 2

[package]
bundle_dir = "../bundles/{name}"
max_fp32_ratio = 0.9  # int8 saves less on a 32-wide student than on a real one
"""


def _math_texts() -> list[str]:
    """What the tokenizers learn from: the math plugin's synthetic prompts and answers."""
    require_plugins("nexus_cap_math")
    from nexus_cap_math import benchmark
    from nexus_cap_math.data import SyntheticRecipe

    return [f"{benchmark.prompt_of(p)} {p.answer}" for p in itertools.islice(SyntheticRecipe().train(), 300)]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every class's tiny teacher, built once: `<root>/models/<class>`."""
    root = tmp_path_factory.mktemp("zoo")
    texts = _math_texts()
    for spec in SPECS:
        build_zoo_teacher(root / "models" / spec.architecture, spec, texts)
    return root


def _spec(architecture: str) -> ZooSpec:
    return next(spec for spec in SPECS if spec.architecture == architecture)


def test_the_matrix_covers_every_supported_class() -> None:
    assert sorted(IDS) == sorted(SUPPORTED_CAUSAL_LMS)
    assert {spec.architecture: spec.blocks for spec in SPECS} == SUPPORTED_CAUSAL_LMS


@pytest.mark.parametrize("architecture", IDS)
def test_each_class_loads_with_its_own_tokenizer_and_blocks(zoo: Path, architecture: str) -> None:
    from transformers import AutoTokenizer

    from nexus_kernel.student.decoding import SpecialIds, completion_batch, left_padded

    spec = _spec(architecture)
    folder = zoo / "models" / architecture
    loaded = load_teacher_folder(architecture, folder, "fp32")
    assert type(loaded.model).__name__ == architecture and loaded.quantization == "fp32"
    assert decoder_blocks(loaded.model) == [f"{spec.blocks}.{i}" for i in range(3)]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and "assistant:" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    special = SpecialIds.of(tokenizer)
    roles = spec.roles
    assert special.bos == (None if roles["bos"] is None else tokenizer.convert_tokens_to_ids(roles["bos"]))
    assert special.eos == tokenizer.convert_tokens_to_ids(roles["eos"])
    fill = roles["pad"] or roles["eos"]
    assert special.pad == tokenizer.convert_tokens_to_ids(fill)
    ids, mask = left_padded(tokenizer, ["Ann has 3 pens.", "Tom"])
    first = ids[1][mask[1].bool()][0].item()
    assert first == (special.bos if special.bos is not None else special.eos)  # no BOS: EOS starts it
    assert set(ids[1][~mask[1].bool()].tolist()) == {special.pad}
    _, _, labels = completion_batch(tokenizer, [("Question: 1", " 2")])
    assert labels[0][labels[0] != -100].tolist()[-1] == special.eos


@pytest.mark.parametrize("architecture", IDS)
def test_batched_cached_decoding_equals_one_by_one_decoding(zoo: Path, architecture: str) -> None:
    """Left padding, position ids and the key/value cache of each class: a batch of prompts
    of different lengths decodes exactly as each prompt alone, and as recomputing without a
    cache; log-likelihoods of a batch equal each request's alone."""
    from nexus_modalities.text_model import CausalTextModel
    from transformers import AutoTokenizer

    from nexus_kernel.student.decoding import SpecialIds, cached_step, greedy_decode, left_padded, recomputing

    folder = zoo / "models" / architecture
    model = load_teacher_folder(architecture, folder, "fp32").model
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = ["Question: Ann has 12 pens and buys 3 more.\nAnswer:", "Tom", "Question: Mia has 7"]
    eos = SpecialIds.of(tokenizer).eos

    def logits_of(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits

    batched = greedy_decode(cached_step(model), *left_padded(tokenizer, prompts), 8, eos_id=eos)
    alone = [greedy_decode(cached_step(model), *left_padded(tokenizer, [p]), 8, eos_id=eos)[0] for p in prompts]
    recomputed = greedy_decode(recomputing(logits_of), *left_padded(tokenizer, prompts), 8, eos_id=eos)
    assert batched == alone == recomputed
    text_model = CausalTextModel(model, tokenizer)
    requests = [(p, " 15") for p in prompts]
    together = text_model.loglikelihoods(requests)
    single = [text_model.loglikelihoods([request])[0] for request in requests]
    assert together == pytest.approx(single, abs=1e-4)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hidden": self.linear(hidden)}  # a dict: no tensor the hooks can read


class _DictBlocks(torch.nn.Module):
    """A causal LM whose blocks sit in a ModuleList but return dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids)
        for block in self.blocks:
            hidden = block(hidden)["hidden"]
        return hidden


class _LooseBlocks(torch.nn.Module):
    """A causal LM whose blocks are plain attributes, not an nn.ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(input_ids.float()[..., None].expand(*input_ids.shape, 8)))


@pytest.mark.parametrize(("model", "why"), [
    (_LooseBlocks(), "it keeps no decoder blocks in an nn.ModuleList"),
    (_DictBlocks(), "block 'blocks.0' returns dict, not a tensor the hooks can read"),
])
def test_a_class_the_kernel_cannot_hook_is_a_clear_error(model: torch.nn.Module, why: str) -> None:
    with pytest.raises(UnsupportedTeacherError) as caught:
        decoder_blocks(model, "acme-7b")
    message = str(caught.value)
    assert isinstance(caught.value, NexusError)
    assert message.startswith(f"teacher 'acme-7b': the kernel cannot hook {type(model).__name__}: {why}")
    assert all(name in message for name in SUPPORTED_CAUSAL_LMS)


def test_a_supported_class_with_its_blocks_moved_is_a_clear_error(zoo: Path) -> None:
    model = load_teacher_folder("gpt2", zoo / "models" / "GPT2LMHeadModel", "fp32").model
    model.transformer.h = torch.nn.Sequential(*model.transformer.h)
    with pytest.raises(UnsupportedTeacherError, match=r"cannot hook GPT2LMHeadModel: no nn.ModuleList of blocks "
                       r"at 'transformer.h'\. Supported causal-LM classes: LlamaForCausalLM, "):
        decoder_blocks(model, "gpt2")


def test_an_unknown_architecture_names_the_supported_classes(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    shutil.copytree(zoo / "models" / "LlamaForCausalLM", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["AcmeForCausalLM"]}))
    with pytest.raises(NexusError, match=r"names architectures \['AcmeForCausalLM'\].*supported causal-LM "
                       r"classes: LlamaForCausalLM, Qwen2ForCausalLM, .*GPTNeoXForCausalLM\)"):
        load_teacher_folder("acme", folder, "fp32")


# stages 0-6 per class ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(zoo: Path) -> Path:
    """One project for every class's run: the default configs plus a config and a one-row
    CSV per class (the class's folder as the math teacher)."""
    root = zoo
    shutil.copytree(REPO / "configs", root / "configs")
    for spec in SPECS:
        name = spec.architecture
        with (root / "configs" / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Model Name", "Parameters", "Category", "Best Feature"])
            writer.writerow([name, "60K", "Math", f"a random-init {name}"])
        (root / "configs" / f"{name}.toml").write_text(TINY_RUN.format(csv=f"{name}.csv", name=name))
    return root


_TIMES: dict[str, dict[str, float]] = {}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", IDS)
def test_each_class_runs_stages_0_to_6(project: Path, architecture: str) -> None:
    spec = _spec(architecture)
    result = nexus("run", "--config", f"configs/{architecture}.toml", "--run-dir", f"runs/{architecture}",
                   "--to", "package", cwd=project)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Loading weights" not in result.stderr and "Loading weights" not in result.stdout
    run_dir = project / "runs" / architecture
    state = json.loads((run_dir / "state.json").read_text())
    assert all(state["stages"][stage]["status"] == "passed" for stage in MATRIX_STAGES), state
    record_stage_times(project / "architecture-matrix.json", _TIMES, architecture, state)

    profile = json.loads((run_dir / "niwt_stage2_output/math/profile.json").read_text())
    blocks = [f"{spec.blocks}.{i}" for i in range(3)]
    assert sorted(profile["ablation"]["ranking"]) == blocks
    assert len(profile["key_layers"]) == 2 and set(profile["key_layers"]) <= set(blocks)
    assert profile["load"]["quantization"] == "fp32" or profile["load"]["quantization"] == "bf16"
    assert profile["load"]["chosen"].startswith("cpu: no working 4-bit kernel")
    assert all(layer["dim"] == 32 and layer["vectors"] > 0 for layer in profile["layers"].values())

    pool = json.loads((run_dir / "checkpoints/math/pool.json").read_text())
    assert pool["teacher"] == architecture and pool["key_layers"] == profile["key_layers"]
    assert len(pool["texts"]) == 16 and all(isinstance(text, str) for text in pool["texts"])
    assert any(text.strip() for text in pool["texts"])  # the teacher's own (random) answers
    assert pool["objective"] == "sequence"  # its BPE vocabulary is not the student's

    verify = json.loads((run_dir / "verify_report.json").read_text())
    math = verify["capabilities"]["math"]
    assert math["teacher"]["n"] == math["student"]["n"] == 4
    assert math["teacher"]["value"] <= math["teacher"]["chance"]  # random weights: at chance
    assert math["retention"]["status"] == "not measurable" and math["retention"]["ratio"] is None

    package = json.loads((run_dir / "package_report.json").read_text())
    assert package and (project / "bundles" / architecture / "manifest.json").is_file()
    manifest = json.loads((project / "bundles" / architecture / "manifest.json").read_text())
    assert [t["name"] for t in manifest["provenance"]["teachers"]] == [architecture]

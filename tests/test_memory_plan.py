"""The memory planner: real 7-8B configs on the meta device, the refusal, the batch picker,
and the predictions against real (tiny and SmolLM2) models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nexus_kernel.algorithms import memory_plan
from nexus_kernel.algorithms.memory_plan import GIB, MemoryPlanError, Workload
from nexus_kernel.errors import NexusError

DATA = Path(__file__).parent / "model_configs"  # tests/data/ is git-ignored (.gitignore: data/)
CONFIGS = {"Llama-3-8B-shape": DATA / "llama3-8b-config.json", "Qwen2.5-7B-shape": DATA / "qwen2.5-7b-config.json"}
PUBLISHED = {"Llama-3-8B-shape": 8_030_261_248, "Qwen2.5-7B-shape": 7_615_616_512}
"""The parameter counts the models' cards give (safetensors metadata of the public checkpoints)."""
PROFILING = Workload(tokens=512)
"""The stated profiling batch: 8 rows of 512 tokens, every position's logits, the loss inside the forward."""
BATCH = 8


@pytest.fixture(scope="module")
def shapes() -> dict[str, memory_plan.ModelShape]:
    return {name: memory_plan.describe(path, name) for name, path in CONFIGS.items()}


def _tiny_config(**overrides: object) -> dict[str, object]:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "tie_word_embeddings": False, **overrides}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_7b_configs_count_their_published_parameters(shapes: dict[str, memory_plan.ModelShape], name: str) -> None:
    shape = shapes[name]
    assert shape.counts.total == PUBLISHED[name]
    assert shape.checkpoint_dtype == "bfloat16" and not shape.tied
    # lm_head stays unquantized under bitsandbytes; every block linear is converted.
    assert shape.counts.kept_linear == shape.vocab * shape.hidden
    assert shape.counts.quantizable == shape.counts.dynamic_linear - shape.counts.kept_linear


@pytest.mark.parametrize("name", list(CONFIGS))
def test_nf4_fits_16_gb_for_profiling_and_fp32_does_not(shapes: dict[str, memory_plan.ModelShape], name: str) -> None:
    shape = shapes[name]
    nf4 = memory_plan.inference_plan(shape, "nf4", BATCH, PROFILING, device="cuda", key_layers=3)
    assert nf4.fits(16.0), nf4.to_json()
    assert 5 * GIB < nf4.weights < 6 * GIB  # 0.5625 bytes a quantized weight, embeddings and lm_head in bf16
    for option in ("bf16", "fp32"):
        assert not memory_plan.inference_plan(shape, option, BATCH, PROFILING, device="cuda", key_layers=3).fits(16.0)
    assert not memory_plan.inference_plan(shape, "fp32", 1, PROFILING, device="cuda", key_layers=3).fits(16.0)


def test_the_refusal_names_the_teacher_the_option_and_the_figures(shapes: dict[str, memory_plan.ModelShape]) -> None:
    plan = memory_plan.inference_plan(shapes["Llama-3-8B-shape"], "fp32", BATCH, PROFILING, device="cuda")
    with pytest.raises(MemoryPlanError) as raised:
        memory_plan.check_fits(plan, 16.0)
    message = str(raised.value)
    assert "teacher 'Llama-3-8B-shape'" in message and "at fp32" in message
    assert f"needs {plan.total / GIB:.2f} GB" in message and "weights 29.92 GB" in message
    assert "hardware.memory_budget_gb = 16 GB" in message
    assert isinstance(raised.value, NexusError) and raised.value.exit_code != 0


def test_auto_walks_to_the_first_fitting_option(shapes: dict[str, memory_plan.ModelShape]) -> None:
    shape = shapes["Qwen2.5-7B-shape"]

    def plan_at(option: str) -> memory_plan.StagePlan:
        return memory_plan.inference_plan(shape, option, 1, PROFILING, device="cuda")

    option, plan = memory_plan.fitting_option(shape, ("fp32", "bf16", "int8", "nf4"), plan_at, 16.0)
    assert option == "bf16" and plan.fits(16.0)  # 15.2 GB of bf16 weights leave room for one row
    option, plan = memory_plan.fitting_option(shape, ("fp32", "bf16", "int8", "nf4"), plan_at, 14.0)
    assert option == "int8" and plan.fits(14.0)
    with pytest.raises(MemoryPlanError, match="at nf4"):
        memory_plan.fitting_option(shape, ("fp32", "bf16", "int8", "nf4"), plan_at, 4.0)


def test_the_batch_picker_takes_the_largest_fitting_batch(shapes: dict[str, memory_plan.ModelShape]) -> None:
    shape = shapes["Llama-3-8B-shape"]

    def plan_at(batch: int) -> memory_plan.StagePlan:
        return memory_plan.inference_plan(shape, "nf4", batch, PROFILING, device="cuda", key_layers=3)

    batch = memory_plan.largest_fitting_batch(plan_at, 16.0, 256)
    assert batch >= BATCH
    assert plan_at(batch).fits(16.0) and not plan_at(batch + 1).fits(16.0)
    assert memory_plan.largest_fitting_batch(plan_at, 5.0, 256) == 0  # not even the weights fit
    assert memory_plan.largest_fitting_batch(plan_at, 1e5, 256) == 256


def test_a_real_model_weighs_what_the_plan_says(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in _tiny_config().items() if k != "architectures"}))
    model.save_pretrained(tmp_path)
    shape = memory_plan.describe(tmp_path, "tiny")
    parameters = sum(p.numel() for p in model.parameters())
    assert shape.counts.total == parameters and shape.counts.kept_linear == 96 * 32
    assert memory_plan.weight_plan(shape, "fp32").steady == parameters * 4
    assert memory_plan.weight_plan(shape, "bf16").steady == parameters * 2
    # Dynamic INT8 quantizes every linear (lm_head too) and keeps embeddings and norms in float32.
    linears = sum(m.weight.numel() for m in model.modules() if type(m) is torch.nn.Linear)
    assert memory_plan.weight_plan(shape, "dynamic-int8").steady == linears + 4 * (parameters - linears)


def test_the_kv_cache_is_what_a_forward_keeps() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = _tiny_config()
    shape = memory_plan.describe(config, "tiny")
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"})).eval()
    ids = torch.randint(0, 96, (3, 10))
    with torch.inference_mode():
        cache = model(input_ids=ids).past_key_values
    kept = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert memory_plan.kv_cache_bytes(shape, 3, 10, 4) == kept


def test_the_workload_is_read_from_the_forward() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in _tiny_config().items() if k != "architectures"})).eval()
    ids = torch.randint(0, 96, (8, 12))

    def choice_like(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch, logits_to_keep=5).logits.logsumexp(-1).mean()

    def with_labels(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch, labels=batch, use_cache=False).loss

    seen = memory_plan.observe_workload(model, choice_like, ids, samples=2)
    assert seen == Workload(tokens=12, rows_per_sample=4.0, logit_positions=5, loss_in_forward=False)
    inside = memory_plan.observe_workload(model, with_labels, ids, samples=8)
    assert inside.loss_in_forward and inside.use_cache is False and inside.logit_positions == 12


def test_the_loaded_option_is_read_from_the_modules() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in _tiny_config().items() if k != "architectures"}))
    assert memory_plan.loaded_option(model) == "fp32"
    assert memory_plan.loaded_option(model.to(torch.bfloat16)) == "bf16"


def test_a_config_transformers_lacks_is_a_plan_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model", "architectures": ["Nope"]}))
    with pytest.raises(MemoryPlanError, match="no-such-model"):
        memory_plan.describe(tmp_path, "odd")


def test_the_doctor_report_lists_every_stage_and_says_what_is_missing(tmp_path: Path) -> None:
    student = {"backbone": "config", "hidden_size": 128, "layers": 4, "heads": 4, "intermediate_size": 384,
               "max_positions": 512, "keep_layers": 0}
    report = memory_plan.plan_report({"Llama-3-8B-shape": DATA / "llama3-8b-config.json",
                                      "nexus-demo-math": "not built yet"}, student,
                                     {"key_layers": 3, "batch_size": 0}, {"batch_size": 32}, 16.0, "cuda")
    stages = {(row["model"], row["stage"], row["option"]): row for row in report["rows"]}
    assert stages[("Llama-3-8B-shape", "profiling", "nf4")]["fits"]
    assert not stages[("Llama-3-8B-shape", "profiling", "fp32")]["fits"]
    assert stages[("student", "student training", "fp32")]["fits"]
    assert ("Llama-3-8B-shape", "profiling", "dynamic-int8") not in stages  # CPU only
    assert report["notes"]["nexus-demo-math"] == "not built yet"
    text = memory_plan.format_report(report)
    assert "Llama-3-8B-shape" in text and "NO" in text and "yes" in text


def test_the_default_students_training_plan_counts_what_trains() -> None:
    shape = memory_plan.describe(_tiny_config(), "student")
    full = memory_plan.training_plan(shape, 4, Workload(tokens=16), extra_trainable=100)
    frozen = memory_plan.training_plan(shape, 4, Workload(tokens=16), trainable=0, extra_trainable=100)
    assert full.optimizer == 12 * (shape.counts.total + 100) and frozen.optimizer == 12 * 100
    assert full.weights == frozen.weights == 4 * (shape.counts.total + 100)
    assert memory_plan.training_plan(shape, 8, Workload(tokens=16)).activations > full.activations


def test_smollm2_weights_and_logits_match_the_loaded_model() -> None:
    from real_models import smollm2_folder

    from nexus_kernel.teachers.loading import load_teacher_folder

    folder, why = smollm2_folder()
    if folder is None:
        pytest.skip(why)
    shape = memory_plan.describe(folder, "SmolLM2-135M-Instruct")
    assert shape.counts.total == 134_515_008 and shape.tied
    teacher = load_teacher_folder("SmolLM2-135M-Instruct", folder, "bf16")
    model = teacher.model
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    assert memory_plan.weight_plan(shape, "bf16").steady == stored
    assert memory_plan.loaded_option(model) == "bf16"
    ids = torch.randint(0, shape.vocab, (2, 6))
    with torch.inference_mode():
        output = model(input_ids=ids)
    cache = sum(t.numel() * t.element_size() for layer in output.past_key_values.layers for t in (layer.keys, layer.values))
    assert memory_plan.kv_cache_bytes(shape, 2, 6, 2) == cache
    assert output.logits.numel() * output.logits.element_size() == 2 * 6 * shape.vocab * 2


def _entry(folder: Path, name: str = "Llama-3-8B-shape") -> object:
    from nexus_kernel.teachers.registry import TeacherEntry

    return TeacherEntry(name=name, parameters=8_000_000_000, category="Knowledge", best_feature="", capability="knowledge",
                        plugin="nexus-cap-knowledge", benchmarks=("Knowledge",), path=str(folder), row=2)


def test_stage_2_refuses_before_loading_and_walks_auto_down(tmp_path: Path) -> None:
    from nexus_kernel.stages.profile import _planned_option

    (tmp_path / "config.json").write_text((DATA / "llama3-8b-config.json").read_text())
    settings = {"batch_size": 0, "key_layers": 3}
    with pytest.raises(MemoryPlanError, match="teacher 'Llama-3-8B-shape': profiling at fp32"):
        _planned_option(_entry(tmp_path), "fp32", "cuda", 16.0, settings, walk=False)  # type: ignore[arg-type]
    # auto walks from its choice towards NF4: bf16 (15.0 GB of weights) still fits one row of 16 GB, at 8 GB only NF4.
    assert _planned_option(_entry(tmp_path), "fp32", "cuda", 16.0, settings, walk=True) == "bf16"  # type: ignore[arg-type]
    assert _planned_option(_entry(tmp_path), "fp32", "cuda", 8.0, settings, walk=True) == "nf4"  # type: ignore[arg-type]
    assert _planned_option(_entry(tmp_path / "absent"), "fp32", "cuda", 16.0, settings, walk=False) == "fp32"  # type: ignore[arg-type]


def test_stage_2_chooses_the_batch_from_the_plan() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.contracts import ProbePlan
    from nexus_kernel.stages.profile import choose_batch_size

    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in _tiny_config().items() if k != "architectures"})).eval()

    def loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch, labels=batch).loss

    def stream(samples: int, batch_size: int):  # type: ignore[no-untyped-def]
        for start in range(0, samples, batch_size):
            yield torch.randint(0, 96, (min(batch_size, samples - start), 12))

    plan = ProbePlan(batches=[torch.randint(0, 96, (4, 12))], candidate_layers=["model.layers.0"], loss=loss,
                     stream=stream)
    chosen = choose_batch_size(model, plan, 0.5, 0, key_layers=1)
    assert chosen["chosen"] == "planner" and chosen["batch_size"] == 256  # a tiny model: the ceiling
    assert chosen["workload"]["tokens"] == 12 and chosen["plan"]["fits"]
    assert choose_batch_size(model, plan, 0.5, 8, key_layers=1)["chosen"] == "config"
    tight = memory_plan.inference_plan(memory_plan.describe(_tiny_config(), "t"), "fp32", 1, Workload(tokens=12))
    with pytest.raises(MemoryPlanError, match="batch 100000"):
        choose_batch_size(model, plan, tight.total * 1000 / GIB, 100_000, key_layers=1)
    plain = ProbePlan(batches=[torch.randn(4, 3)], candidate_layers=[], loss=lambda m, b: m(b).sum(),
                      stream=lambda samples, size: iter([torch.randn(size, 3)]))
    measured = choose_batch_size(torch.nn.Linear(3, 3), plain, 0.5, 0)  # no config to plan from
    assert measured["chosen"] == "measured" and "not planned" in measured["planner"]


def test_stage_4_plans_the_pool_never_below_profiling_and_the_student(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.student.model import NexusStudent

    (tmp_path / "config.json").write_text((DATA / "qwen2.5-7b-config.json").read_text())
    assert memory_plan.pool_option("q", tmp_path, "fp32", "nf4", 16.0, "cuda") == "bf16"
    assert memory_plan.pool_option("q", tmp_path, "fp32", "nf4", 8.0, "cuda") == "nf4"
    with pytest.raises(MemoryPlanError, match="teacher 'q': distillation pool at int8"):
        memory_plan.pool_option("q", tmp_path, "fp32", "int8", 8.0, "cuda")  # profiled at int8: never below it
    backbone = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in _tiny_config().items() if k != "architectures"}))
    student = NexusStudent(backbone, None)
    plan = memory_plan.student_plan(student, 32, tasks=2)
    assert plan.tokens == 64 and plan.optimizer == 12 * sum(p.numel() for p in backbone.parameters())
    weights = 4 * sum(p.numel() for p in backbone.parameters())
    assert weights <= memory_plan.module_bytes(student) < weights + 1024  # and the rotary buffer
    with pytest.raises(MemoryPlanError, match="student 'student': student training"):
        memory_plan.check_fits(plan, plan.total / GIB / 2, "student")

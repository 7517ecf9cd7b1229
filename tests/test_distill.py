"""Stage 4's machinery: gradient health, rollback with escalation, exact resume after a kill."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from nexus_kernel.algorithms.recovery import (
    Journal,
    RecoveringTrainer,
    RecoverySettings,
)
from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.errors import StageError
from nexus_kernel.stages.distill import gradient_health
from nexus_kernel.student.model import (
    AdapterError,
    CapabilityAdapter,
    NexusStudent,
    StudentBatch,
    default_targets,
    linear_targets,
)


def tiny_student(rank: int = 2) -> NexusStudent:
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.student.decoding import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(["apple", "pear"])
    backbone = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64))
    student = NexusStudent(backbone, tokenizer)
    targets = linear_targets(backbone, default_targets(backbone))
    for name in ("first", "second"):
        spec = AdapterSpec(capability=name, rank=rank, hidden_size=16, targets=targets, anchored_layers=(0, 1))
        student.add_adapter(name, CapabilityAdapter(spec))
    return student


def text_loss(student: NexusStudent, name: str) -> torch.Tensor:
    from nexus_kernel.student.decoding import IGNORE_INDEX, completion_batch

    input_ids, mask, labels = completion_batch(student.tokenizer, [("apple is", " pear"), ("pear", " apple 12")])
    output = student(name, StudentBatch(input_ids=input_ids, attention_mask=mask, labels=labels))
    adapter = student.adapters[name]
    loss = nn.functional.cross_entropy(output.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                       ignore_index=IGNORE_INDEX)
    for index, layer in enumerate(adapter.spec.anchored_layers):
        loss = loss + nn.functional.mse_loss(adapter.anchors[str(index)](output.pooled[layer]), torch.ones(2, 2))
    return loss


def test_gradients_reach_every_adapter_and_never_a_frozen_backbone() -> None:
    student = tiny_student()
    student.freeze_backbone()
    norms = gradient_health(student, {"first": student.adapters["first"]}, text_loss(student, "first"), True)
    assert norms["first"] > 0
    assert all(p.grad is None for p in student.parameters())  # the check leaves no gradient behind

    # A loss that never went through the adapter is caught, naming it.
    with pytest.raises(StageError, match="no gradient reaches the adapter of 'second'"):
        gradient_health(student, {"second": student.adapters["second"]}, text_loss(student, "first"), True)

    # A backbone that should be frozen but is not is caught too.
    student.freeze_backbone(False)
    with pytest.raises(StageError, match="the frozen backbone gets gradients"):
        gradient_health(student, {"first": student.adapters["first"]}, text_loss(student, "first"), True)
    norms = gradient_health(student, {"first": student.adapters["first"]}, text_loss(student, "first"), False)
    assert norms["backbone"] > 0


def test_one_adapter_per_capability_and_a_new_adapter_changes_nothing() -> None:
    student = tiny_student()
    with pytest.raises(AdapterError, match="already has an adapter"):
        student.add_adapter("first", student.adapters["first"])  # type: ignore[arg-type]
    ids = torch.tensor([[1, 5, 6, 7]])
    plain = student.backbone(input_ids=ids).logits
    with torch.no_grad():
        adapted = student.text_logits("first", ids, torch.ones_like(ids))
        assert torch.allclose(plain, adapted, atol=1e-6)  # deltas start at zero
        student.adapters["first"].deltas["model__layers__0__self_attn__q_proj"].up.weight.fill_(0.5)
        assert not torch.allclose(plain, student.text_logits("first", ids, torch.ones_like(ids)), atol=1e-3)
        assert torch.allclose(plain, student.text_logits("second", ids, torch.ones_like(ids)), atol=1e-6)


# --- recovery on a small regression problem: the batch depends only on the step ------------------

TRUE_WEIGHTS = torch.tensor([[1.5, -2.0, 0.5, 3.0]])


def regression(poison_at: int | None = None) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)

    def step_loss(step: int, alpha: float, extra: dict) -> tuple[torch.Tensor, dict[str, float]]:
        extra["batches"] = extra.get("batches", 0) + 1  # state the loop must save and restore
        generator = torch.Generator().manual_seed(step)
        inputs = torch.randn(32, 4, generator=generator)
        if step == poison_at:
            inputs[3, 1] = float("nan")  # a poisoned batch
        targets = inputs @ TRUE_WEIGHTS.T
        output = nn.functional.mse_loss(model(inputs), targets)
        anchor = model.weight.pow(2).mean() * 1e-3
        return output + alpha * anchor, {"output": float(output.detach())}

    return model, step_loss


def trainer(tmp_path: Path, model: nn.Module, step_loss: object, steps: int = 200, **kwargs: object) -> RecoveringTrainer:
    settings = RecoverySettings(checkpoint_every=10, check_every=10, spike_factor=3.0, drift_threshold=0.3)
    return RecoveringTrainer(model, dict(model.named_parameters()), step_loss, steps, 0.1, tmp_path / "ckpt",  # type: ignore[arg-type]
                             Journal(tmp_path / "training.jsonl", "test"), settings, alpha=0.1, **kwargs)  # type: ignore[arg-type]


def final_loss(model: nn.Module) -> float:
    inputs = torch.randn(256, 4, generator=torch.Generator().manual_seed(10_000))
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(inputs), inputs @ TRUE_WEIGHTS.T))


def journal(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "training.jsonl").read_text().splitlines()]


def test_a_poisoned_batch_rolls_back_escalates_and_training_ends_healthy(tmp_path: Path) -> None:
    model, step_loss = regression(poison_at=25)
    state = trainer(tmp_path, model, step_loss).run()
    assert state.events == {"nan": 1, "rollback": 1}
    assert state.skipped == [25]
    assert state.alpha == pytest.approx(0.2) and state.lr_scale == pytest.approx(0.5)
    rollback = next(e for e in journal(tmp_path) if e["kind"] == "rollback")
    assert rollback["reason"] == "nan" and rollback["at_step"] == 25 and rollback["to_step"] == 20
    assert all(math.isfinite(p) for p in model.weight.flatten().tolist())
    assert final_loss(model) < 1e-2


def test_step_and_rollback_lines_show_each_effective_alpha(tmp_path: Path) -> None:
    model, step_loss = regression(poison_at=25)
    trainer(tmp_path, model, step_loss, steps=30, alpha_scales={"voice": 0.01, "math": 1.0}).run()
    lines = journal(tmp_path)
    steps = {e["step"]: e for e in lines if e["kind"] == "step"}
    assert steps[0]["alpha"] == 0.1
    assert steps[0]["alpha_effective"] == {"math": pytest.approx(0.1), "voice": pytest.approx(0.001)}
    rollback = next(e for e in lines if e["kind"] == "rollback")  # alpha doubled by the rollback
    assert rollback["alpha_effective"] == {"math": pytest.approx(0.2), "voice": pytest.approx(0.002)}
    assert steps[29]["alpha_effective"] == {"math": pytest.approx(0.2), "voice": pytest.approx(0.002)}


def test_without_alpha_scales_a_step_line_shows_the_one_alpha(tmp_path: Path) -> None:
    model, step_loss = regression()
    trainer(tmp_path, model, step_loss, steps=2).run()
    step = next(e for e in journal(tmp_path) if e["kind"] == "step")
    assert step["alpha"] == 0.1 and "alpha_effective" not in step


def test_a_learning_rate_blow_up_is_caught_as_a_spike_and_recovered(tmp_path: Path) -> None:
    model, step_loss = regression()
    blown = []

    def blow_up(step: int, run: RecoveringTrainer) -> None:
        if step == 40 and not blown:
            blown.append(step)
            for group in run.optimiser.param_groups:
                group["lr"] *= 1e4

    state = trainer(tmp_path, model, step_loss, on_step=blow_up).run()
    assert state.events.get("rollback", 0) >= 1
    assert set(state.events) <= {"spike", "nan", "rollback", "drift"} and state.events.get("spike", 0) + state.events.get("nan", 0) >= 1
    assert state.lr_scale < 1 and state.alpha > 0.1
    first = next(e for e in journal(tmp_path) if e["kind"] == "rollback")
    assert first["to_step"] == 40  # the checkpoint before the blow-up
    assert final_loss(model) < 1e-2


def test_a_falling_reconstruction_is_drift_and_rolls_back(tmp_path: Path) -> None:
    model, step_loss = regression()
    readings = iter([0.9, 0.95, 0.5] + [0.96] * 100)
    state = trainer(tmp_path, model, step_loss, check=lambda: next(readings)).run()
    assert state.events == {"drift": 1, "rollback": 1}
    drift = next(e for e in journal(tmp_path) if e["kind"] == "rollback")
    assert drift["at_step"] == 30 and drift["to_step"] == 20 and drift["value"] == 0.5


def _train_until_killed(folder: str, kill_at: int) -> None:
    model, step_loss = regression(poison_at=25)

    def kill(step: int, _run: RecoveringTrainer) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer(Path(folder), model, step_loss, on_step=kill).run()


def test_kill_and_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    straight, step_loss = regression(poison_at=25)
    uninterrupted = trainer(tmp_path / "straight", straight, step_loss).run()

    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_train_until_killed, args=(str(tmp_path / "killed"), 57))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert json.loads((tmp_path / "killed/ckpt/latest.json").read_text())["step"] == 50

    resumed, step_loss = regression(poison_at=25)
    state = trainer(tmp_path / "killed", resumed, step_loss).run()
    assert state.step == 200 and state.extra == uninterrupted.extra
    assert any(e["kind"] == "resume" and e["step"] == 50 for e in journal(tmp_path / "killed"))
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)


def test_a_step_that_adds_a_part_is_compared_with_steps_like_it(tmp_path: Path) -> None:
    """The joint phase trains a converged capability on every `REVISIT_EVERY`th step only: the
    total loss then jumps on those steps, which is not a spike."""
    model, regression_loss = regression()

    def step_loss(step: int, alpha: float, extra: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = regression_loss(step, alpha, extra)
        if step % 4 == 0:
            return loss + 50.0, {**parts, "revisited": 50.0}
        return loss, parts

    state = trainer(tmp_path, model, step_loss).run()
    assert state.events == {}
    assert set(state.running_loss) == {"output", "output,revisited"}


def test_event_counts_start_over_when_a_phase_restarts(tmp_path: Path) -> None:
    from nexus_kernel.algorithms.recovery import summarise

    journal = Journal(tmp_path / "training.jsonl", "joint")
    journal.write("start")
    journal.write("rollback", reason="spike")
    journal.write("start")  # a fresh start of the phase (another config): old events do not count
    journal.write("rollback", reason="nan")
    journal.write("resume", step=3)
    Journal(tmp_path / "training.jsonl", "adapter-math").write("rollback", reason="drift")
    assert summarise(tmp_path / "training.jsonl") == {"joint": {"nan": 1, "resume": 1}, "adapter-math": {"drift": 1}}


def test_a_backbone_folder_that_is_not_a_model_is_named(tmp_path: Path) -> None:
    from nexus_kernel.student.build import build_backbone

    (tmp_path / "empty").mkdir()
    settings = {"backbone": "empty"}
    with pytest.raises(StageError, match=r"student.backbone: .*empty is not a Hugging Face model folder"):
        build_backbone(settings, tmp_path, tmp_path / "run", None, 42)


def test_the_layer_map_keeps_relative_depth() -> None:
    from nexus_kernel.student.build import map_layer

    blocks = [f"model.layers.{i}" for i in range(2)]
    assert [map_layer(name, blocks, 4) for name in blocks] == [1, 3]
    mixed = ["encoder.layers.0", "encoder.layers.1", "encoder.layers.2", "decoder.h.0", "decoder.h.1"]
    assert [map_layer(name, mixed, 4) for name in mixed] == [0, 2, 3, 1, 3]
    assert map_layer("pooler", mixed, 4) == 3  # not a numbered block: the last student block


def test_converged_capabilities_rest_with_hysteresis_but_a_step_always_trains_something() -> None:
    from nexus_kernel.stages.distill import (
        CONVERGED_LOSS,
        WAKE_FACTOR,
        resting_capabilities,
    )

    objectives = {"math": "kl", "voice": "cosine", "reasoning": "kl"}
    running = {"math": 0.5, "voice": 0.01, "reasoning": 0.001}
    assert resting_capabilities(objectives, running) == {"voice", "reasoning"}
    assert resting_capabilities({"voice": "cosine", "reasoning": "kl"}, running) == set()  # all converged
    assert resting_capabilities({"voice": "cosine"}, running) == set()
    between = CONVERGED_LOSS["kl"] * (1 + WAKE_FACTOR) / 2  # above the rest line, below the wake line
    running = {"math": 0.5, "reasoning": between}
    assert resting_capabilities(objectives, running) == set()  # not resting yet: must get below the rest line
    assert resting_capabilities(objectives, running, rested={"reasoning"}) == {"reasoning"}  # stays resting
    running["reasoning"] = CONVERGED_LOSS["kl"] * WAKE_FACTOR * 1.01
    assert resting_capabilities(objectives, running, rested={"reasoning"}) == set()  # woken


def test_a_cut_students_token_anchors_start_on_the_teachers_basis(tmp_path: Path) -> None:
    """The started projection gives what the pool's per-token targets are, for a key layer of
    the teacher the backbone was cut from; a sequence-mean anchor and another teacher's
    capability are left as they were."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from nexus_kernel.run.layout import PROFILE_DIR
    from nexus_kernel.stages.distill import start_anchors_on_the_basis
    from nexus_kernel.stages.distill_pool import project, token_scale

    torch.manual_seed(0)
    width, rank = 6, 3
    components = torch.linalg.qr(torch.randn(width, width))[0][:rank].contiguous()
    tensors = {}
    for layer in ("blocks.1", "blocks.4"):
        tensors |= {f"{layer}.mean": torch.randn(width), f"{layer}.components": components.clone(),
                    f"{layer}.eigenvalues": torch.tensor([4.0, 1.0, 0.25])}
    (tmp_path / PROFILE_DIR / "cap").mkdir(parents=True)
    save_file(tensors, str(tmp_path / PROFILE_DIR / "cap" / "basis.safetensors"))
    anchors = {"0": nn.Linear(width, rank), "1": nn.Linear(width, rank)}
    untouched = anchors["1"].weight.detach().clone()
    student = SimpleNamespace(adapters={"cap": SimpleNamespace(anchors=anchors)})
    task = SimpleNamespace(name="cap", pool=SimpleNamespace(tokens={0: []}))  # anchor 1 is a sequence mean
    layer_map = [{"teacher": "blocks.1", "student": 0}, {"teacher": "blocks.4", "student": 1}]
    architecture = {"backbone": {"cut": {"teacher": "t"}},
                    "capabilities": {"cap": {"teacher": "t", "layer_map": layer_map, "rank": rank}}}

    assert start_anchors_on_the_basis(tmp_path, student, task, architecture) == [0]  # type: ignore[arg-type]
    rows = torch.randn(5, width)
    expected = project(rows, tensors["blocks.1.mean"], components) / token_scale(tensors["blocks.1.eigenvalues"])
    with torch.no_grad():
        assert torch.allclose(anchors["0"](rows), expected, atol=1e-5)
    assert torch.equal(anchors["1"].weight, untouched)
    other = {**architecture, "backbone": {"cut": {"teacher": "another"}}}
    assert start_anchors_on_the_basis(tmp_path, student, task, other) == []  # type: ignore[arg-type]


def test_a_plans_augment_draws_per_step_and_leaves_targets_and_other_batches_alone() -> None:
    """`DistillPlan.augment` sees a training step's items and a generator seeded by the step:
    the same step draws the same, another step draws anew, the teacher's targets are the pool's,
    and `collate` without a generator (the reconstruction check) reads the items as they are."""
    from nexus_kernel.contracts import DistillPlan
    from nexus_kernel.stages.distill import CapabilityTask
    from nexus_kernel.stages.distill_pool import Pool

    seen: list[list[float]] = []

    def augment(items: list[float], generator: torch.Generator) -> list[float]:
        noise = torch.rand(len(items), generator=generator).tolist()
        seen.append(noise)
        return [item + shift for item, shift in zip(items, noise, strict=True)]

    def student_batch(items: list[float], outputs: list[torch.Tensor]) -> StudentBatch:
        return StudentBatch(prefix=torch.tensor(items)[:, None], target=torch.stack(outputs))

    plan = DistillPlan(items=lambda: iter([]), teacher_batch=lambda *_: None, teacher_forward=lambda *_: None,
                       teacher_outputs=lambda _: [], student_batch=student_batch, objective="cosine", augment=augment)
    items = [float(i) for i in range(8)]
    pool = Pool(items, [torch.full((2,), float(i)) for i in range(8)], torch.zeros(8, 1, 2), torch.ones(1, 2), {},
                "cosine")
    task = CapabilityTask("audio", None, plan, pool, 3, 1.0)
    first, again, _ = task.batch(5, 4), task.batch(5, 4), task.batch(6, 4)
    assert torch.equal(first.prefix, again.prefix) and seen[0] == seen[1] != seen[2]
    assert not torch.equal(first.prefix.round(), first.prefix)  # the items were shifted
    assert torch.equal(first.target[:, 0], first.prefix[:, 0].floor())  # targets: the pool's, unshifted
    assert torch.equal(task.collate([0, 1]).prefix[:, 0], torch.tensor([0.0, 1.0])) and len(seen) == 3

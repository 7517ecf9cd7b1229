"""A text capability's distillation plan: KL on the teacher's top-k distribution where the
student's vocabulary covers the teacher's (cross-entropy for items tokenized differently),
ULD (cross-entropy plus the sorted-probability distance) where it does not, sequence-level
cross-entropy when asked; through the kernel's pool and stage-4 loss."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from nexus_kernel.contracts import TOP_K, AdapterSpec
from nexus_kernel.student.model import (
    CapabilityAdapter,
    NexusStudent,
    default_targets,
    linear_targets,
)
from nexus_modalities.text_distill import text_distill_plan


def _text_task(tmp_path: Path, student_words: list[str], text_loss: str = "auto") -> tuple[NexusStudent, object]:
    """A tiny text teacher (words apple, pear) and a student whose tokenizer knows
    `student_words`; returns the student and the stage-4 task built on the teacher's answers
    (the plan after `text_loss`, as stage 4 applies it)."""
    import itertools

    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.kit.testing import tiny_causal_teacher
    from nexus_kernel.stages.distill import CapabilityTask
    from nexus_kernel.stages.distill_pool import SOFT_OBJECTIVES, Pool, chosen_plan, pack_distributions
    from nexus_kernel.student.decoding import build_tokenizer
    from nexus_kernel.teachers.loading import load_teacher_folder

    teacher = load_teacher_folder("tiny", tiny_causal_teacher(tmp_path / "teacher", ["apple", "pear"]), "fp32")
    tokenizer = build_tokenizer(student_words)
    torch.manual_seed(1)
    backbone = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64))
    student = NexusStudent(backbone, tokenizer)
    spec = AdapterSpec("fruit", 2, 16, linear_targets(backbone, default_targets(backbone)))
    student.add_adapter("fruit", CapabilityAdapter(spec))
    questions = (f"apple {n} pear" if n % 2 else f"banana {n}" for n in itertools.count())
    plan = chosen_plan("fruit", text_distill_plan(teacher, student, lambda: questions, lambda q: (q, " apple"),
                                                  lambda model, prompts: model.generate(prompts, 3)), text_loss)
    items = [next(questions) for _ in range(4)]
    outputs = plan.teacher_outputs(items)
    soft = pack_distributions(plan.teacher_distributions(items, outputs)) if plan.objective in SOFT_OBJECTIVES else None
    pool = Pool(items, outputs, torch.zeros(4, 0, 2), torch.ones(0, 2), {}, plan.objective, soft, reason=plan.reason)
    return student, CapabilityTask("fruit", None, plan, pool, 0, 1.0)


def test_a_student_vocabulary_covering_the_teachers_distils_its_distribution(tmp_path: Path) -> None:
    from nexus_kernel.stages.distill import task_loss

    # The student knows every teacher piece plus "banana": KL on the teacher's distribution for
    # items both tokenize alike; "banana ..." items (one student token, six teacher ones) fall
    # back to cross-entropy on the teacher's completion.
    student, task = _text_task(tmp_path, ["apple", "pear", "banana"])
    assert task.plan.objective == "kl"
    assert task.pool.reason.startswith("kl: every teacher token is a student token (teacher WordPiece vocabulary")
    ids, _, offsets = task.pool.soft
    lengths = (offsets[1:] - offsets[:-1]).tolist()
    assert [length > 0 for length in lengths] == [False, True, False, True]  # items 0, 2 say "banana"
    batch = task.collate([0, 1, 2, 3])
    wanted = (batch.labels != -100)
    wanted[:, 0] = False
    assert batch.soft_ids.shape == (*batch.labels.shape, TOP_K)
    # A KL item carries the teacher's top tokens, most likely first, in the student's ids.
    assert bool((batch.soft_logprobs[1][wanted[1]][:, 0] >= batch.soft_logprobs[1][wanted[1]][:, 1]).all())
    assert int(ids.max()) < len(student.tokenizer)
    # A cross-entropy item puts all its mass on its label.
    assert torch.equal(batch.soft_ids[0][wanted[0]][:, 0], batch.labels[0][wanted[0]])
    assert bool((batch.soft_logprobs[0][wanted[0]][:, 0] == 0).all())
    loss, parts = task_loss(student, task, batch, 0.1)
    assert math.isfinite(parts["fruit.output"]) and parts["fruit.output"] > 0
    loss.backward()
    assert student.adapters["fruit"].deltas["model__layers__1__mlp__down_proj"].up.weight.grad.abs().sum() > 0



def test_a_student_with_another_vocabulary_gets_cross_entropy_or_asked_uld(tmp_path: Path) -> None:
    from nexus_kernel.stages.distill import task_loss

    # The student misses teacher pieces ("apple", "pear" are spelt out): no teacher logit can be
    # read in its vocabulary. By default, cross-entropy on the teacher's text (what the
    # cross-tokenizer benchmark measured best); asked, ULD with the teacher's own top-k at its
    # own positions.
    _, sequence_task = _text_task(tmp_path / "sequence", ["banana"])
    assert sequence_task.plan.objective == "sequence" and sequence_task.pool.soft is None
    assert sequence_task.pool.reason.startswith("sequence: teacher and student tokenizers differ: cross-entropy")
    assert "teacher WordPiece vocabulary" in sequence_task.pool.reason
    student, task = _text_task(tmp_path, ["banana"], text_loss="uld")
    assert task.plan.objective == "uld"
    assert task.pool.reason.startswith("uld: text_loss = 'uld' (teacher WordPiece vocabulary")
    assert "teacher tokens are not student tokens" in task.pool.reason
    _, logprobs, offsets = task.pool.soft
    teacher_lengths = (offsets[1:] - offsets[:-1]).tolist()
    # Every item has the teacher's distribution over its own completion (its answer and </s>).
    teacher_tokens = task.plan.teacher_batch(task.pool.items, task.pool.outputs)[2]
    assert teacher_lengths == (teacher_tokens != -100).sum(dim=1).tolist()
    assert bool((logprobs[:, :-1] >= logprobs[:, 1:]).all())  # most likely first
    batch = task.collate([0, 1, 2, 3])
    assert batch.soft_lengths.tolist() == teacher_lengths and batch.soft_ids is None
    assert batch.soft_logprobs.shape == (4, max(teacher_lengths), TOP_K)
    loss, parts = task_loss(student, task, batch, 0.1)
    assert math.isfinite(parts["fruit.output"]) and parts["fruit.output"] > 0
    loss.backward()
    assert student.adapters["fruit"].deltas["model__layers__1__mlp__down_proj"].up.weight.grad.abs().sum() > 0

    # ULD adds to the cross-entropy of the sequence objective on the same batch.
    _, sequence_parts = task_loss(student, sequence_task, sequence_task.collate([0, 1, 2, 3]), 0.1)
    assert parts["fruit.output"] > sequence_parts["fruit.output"]


def test_text_loss_can_ask_for_uld_or_sequence_where_kl_applies(tmp_path: Path) -> None:
    # A shared vocabulary stays kl by default (the demo run's choice); text_loss overrides it.
    _, uld = _text_task(tmp_path / "uld", ["apple", "pear", "banana"], text_loss="uld")
    assert uld.plan.objective == "uld" and uld.pool.reason.startswith("uld: text_loss = 'uld'")
    assert bool(((uld.pool.soft[2][1:] - uld.pool.soft[2][:-1]) > 0).all())  # every item, even "banana" ones
    _, sequence = _text_task(tmp_path / "sequence", ["apple", "pear", "banana"], text_loss="sequence")
    assert sequence.plan.objective == "sequence" and sequence.pool.soft is None

"""Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the
Universal Logit Distillation Loss"): a logit-level loss that needs no shared vocabulary.

At each aligned completion position the teacher's and the student's next-token probability
vectors are each sorted in decreasing order and compared with the L1 distance, which is the
closed form of the Wasserstein-1 distance between them when a token's identity is ignored.
Both are truncated to a common top-k (the teacher's stored `k`): the pool keeps only the
teacher's `k` most likely probabilities. Positions are aligned by index within the completion
(the i-th completion token of the student's tokenization with the i-th of the teacher's),
truncated to the shorter of the two. Stage 4's `uld` objective is the student's cross-entropy on
the teacher's text plus `ULD_WEIGHT` times this distance.
"""

from __future__ import annotations

import torch

ULD_WEIGHT = 1.0
"""Weight of the sorted-probability distance next to the cross-entropy (the paper's lambda)."""


def sorted_probability_distance(student_logits: torch.Tensor, teacher_sorted: torch.Tensor) -> torch.Tensor:
    """Per row, `sum_i |p_s(i) - p_t(i)|` over the `k` largest probabilities of each, where
    `student_logits` is `(n, student vocabulary)` and `teacher_sorted` `(n, k)` holds the
    teacher's probabilities in decreasing order (`k` beyond the student's vocabulary is cut to
    it). Returns `(n,)`; differentiable in `student_logits`. Invariant to any permutation of
    either vocabulary, so 0 exactly when the two sorted top-k vectors agree."""
    k = min(teacher_sorted.shape[-1], student_logits.shape[-1])
    student_sorted = torch.softmax(student_logits.float(), dim=-1).topk(k, dim=-1).values
    return (student_sorted - teacher_sorted[..., :k].float()).abs().sum(dim=-1)


def aligned_by_index(wanted: torch.Tensor, teacher_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which student positions meet a teacher position, and which: `wanted` `(batch, seq)`
    marks the student's completion positions (in order), `teacher_lengths` `(batch,)` the
    teacher's completion lengths. Returns `(keep, index)`: `keep` `(batch, seq)` is the first
    `min(student, teacher)` completion positions of each row, `index` `(positions kept,)` the
    teacher position each of them meets (0, 1, ... within its row)."""
    order = wanted.long().cumsum(dim=1) - 1
    keep = wanted & (order < teacher_lengths.to(order.device)[:, None])
    return keep, order[keep]


def uld_distance(student_logits: torch.Tensor, wanted: torch.Tensor, teacher_sorted: torch.Tensor,
                 teacher_lengths: torch.Tensor) -> torch.Tensor:
    """The mean `sorted_probability_distance` over the positions `aligned_by_index` keeps:
    `student_logits` `(batch, seq, vocabulary)` predict the tokens `wanted` marks,
    `teacher_sorted` `(batch, teacher positions, k)` are the teacher's sorted probabilities at
    its own completion positions and `teacher_lengths` `(batch,)` how many of them are real.
    A batch with no aligned position gives 0 (still attached to the graph)."""
    keep, index = aligned_by_index(wanted, teacher_lengths)
    if not bool(keep.any()):
        return student_logits.sum() * 0.0
    rows = keep.nonzero(as_tuple=True)[0]
    return sorted_probability_distance(student_logits[keep], teacher_sorted[rows, index]).mean()

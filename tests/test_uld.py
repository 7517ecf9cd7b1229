"""The ULD loss (`nexus_kernel.algorithms.uld`): sorted-probability distance and alignment by index."""

from __future__ import annotations

import torch

from nexus_kernel.algorithms.uld import aligned_by_index, sorted_probability_distance, uld_distance


def _sorted_top(probabilities: torch.Tensor, k: int) -> torch.Tensor:
    return probabilities.sort(dim=-1, descending=True).values[..., :k]


def test_the_distance_is_zero_for_one_distribution_up_to_a_permutation_and_positive_otherwise() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.softmax(torch.randn(5, 40, generator=generator) * 3, dim=-1)
    # The student's vocabulary is another one: the same probabilities on a shuffled vocabulary
    # (here even a larger one, padded with tokens of probability 0).
    shuffled = teacher[:, torch.randperm(40, generator=generator)]
    student_logits = torch.cat([shuffled.log(), torch.full((5, 60), -1e4)], dim=-1)
    same = sorted_probability_distance(student_logits, _sorted_top(teacher, 16))
    assert same.shape == (5,)
    assert float(same.abs().max()) < 1e-5

    other = torch.softmax(torch.randn(5, 100, generator=generator), dim=-1)
    different = sorted_probability_distance(other.log(), _sorted_top(teacher, 16))
    assert bool((different > 0.05).all())
    # A flatter student is farther from a peaked teacher than a slightly sharpened copy of it.
    sharper = sorted_probability_distance(student_logits * 1.1, _sorted_top(teacher, 16))
    assert bool((sharper < different).all())


def test_k_beyond_the_student_vocabulary_is_cut_to_it() -> None:
    teacher = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05]])
    student = torch.tensor([[0.3, 0.5, 0.2]]).log()
    # Sorted: student (0.5, 0.3, 0.2), teacher cut to (0.5, 0.3, 0.1).
    assert torch.allclose(sorted_probability_distance(student, teacher), torch.tensor([0.1]), atol=1e-6)


def test_gradients_flow_to_the_student_logits() -> None:
    logits = torch.randn(3, 50, requires_grad=True)
    teacher = _sorted_top(torch.softmax(torch.randn(3, 30) * 4, dim=-1), 16)
    sorted_probability_distance(logits, teacher).sum().backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all()) and float(logits.grad.abs().sum()) > 0


def test_positions_align_by_index_within_the_completion_truncated_to_the_shorter() -> None:
    wanted = torch.tensor([[False, True, True, True, False],
                           [True, True, False, False, False],
                           [False, False, False, True, True]])
    keep, index = aligned_by_index(wanted, torch.tensor([2, 3, 0]))
    # Row 0: three student positions, two teacher ones: the first two meet teacher 0 and 1;
    # row 1: two student positions, three teacher ones; row 2: no teacher position.
    assert keep.tolist() == [[False, True, True, False, False],
                             [True, True, False, False, False],
                             [False, False, False, False, False]]
    assert index.tolist() == [0, 1, 0, 1]


def test_the_batch_distance_compares_aligned_positions_only() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 30, generator=generator, requires_grad=True)
    wanted = torch.tensor([[False, True, True, True], [False, False, True, False]])
    teacher = _sorted_top(torch.softmax(torch.randn(2, 3, 30, generator=generator), dim=-1), 8)
    lengths = torch.tensor([2, 3])
    loss = uld_distance(logits, wanted, teacher, lengths)
    pairs = [(logits[0, 1], teacher[0, 0]), (logits[0, 2], teacher[0, 1]), (logits[1, 2], teacher[1, 0])]
    expected = torch.stack([sorted_probability_distance(s[None], t[None])[0] for s, t in pairs]).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad is not None
    assert float(logits.grad[0, 3].abs().sum()) == 0.0  # its teacher position does not exist
    assert float(logits.grad[0, 0].abs().sum()) == 0.0  # a prompt position
    assert float(logits.grad[1, 2].abs().sum()) > 0.0
    empty = uld_distance(logits, torch.zeros_like(wanted), teacher, lengths)
    assert float(empty.detach()) == 0.0 and empty.requires_grad

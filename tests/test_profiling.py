"""Ablation ranking and streaming layer profiles on small planted models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nexus_kernel.algorithms.pca import StreamingPCA
from nexus_kernel.algorithms.profiling import (
    UnhookableLayerError,
    profile_layers,
    rank_layers_by_ablation,
    rank_layers_by_removal,
)


class Blocks(nn.Module):
    """Residual blocks; block `planted` carries almost all of the mapping, the rest are faint."""

    def __init__(self, planted: int, width: int = 16, count: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(count))
        with torch.no_grad():
            for index, block in enumerate(self.blocks):
                block[0].weight.mul_(3.0 if index == planted else 0.02)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            inputs = inputs + block(inputs)
        return inputs


def _task(model: Blocks, count: int = 20) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], callable]:
    torch.manual_seed(1)
    inputs = [torch.randn(8, 5, 16) for _ in range(count)]
    with torch.no_grad():
        batches = [(x, model(x)) for x in inputs]

    def loss_of(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, target = batch
        return nn.functional.mse_loss(model(x), target)

    return batches, loss_of


@pytest.mark.parametrize("planted", [0, 2, 3])
def test_the_planted_block_ranks_first(planted: int) -> None:
    model = Blocks(planted)
    batches, loss_of = _task(model)
    result = rank_layers_by_ablation(model, [f"blocks.{i}" for i in range(4)], batches, loss_of)
    assert result.ranking()[0] == f"blocks.{planted}"
    assert result.baseline == pytest.approx(0.0, abs=1e-10)
    increases = result.increases()
    assert increases[f"blocks.{planted}"] > 10 * max(v for k, v in increases.items() if k != f"blocks.{planted}")
    # Ablation hooks are removed: the model answers as before.
    assert float(loss_of(model, batches[0]).detach()) == pytest.approx(0.0, abs=1e-10)


class Residual(nn.Module):
    """A pre-norm-style block: its output is its input plus what it adds (`x + f(x)`)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.inner(hidden_states)


class ResidualBlocks(Blocks):
    """`Blocks` whose blocks carry the residual stream themselves, as decoder layers do."""

    def __init__(self, planted: int) -> None:
        super().__init__(planted)
        self.blocks = nn.ModuleList(Residual(block) for block in self.blocks)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            inputs = block(inputs)
        return inputs


@pytest.mark.parametrize("planted", [0, 3])
def test_removal_ranks_the_block_that_adds_most_where_mean_ablation_cannot_tell(planted: int) -> None:
    model = ResidualBlocks(planted)
    batches, loss_of = _task(model)
    names = [f"blocks.{i}" for i in range(4)]
    removal = rank_layers_by_removal(model, names, batches, loss_of)
    assert removal.ranking()[0] == f"blocks.{planted}"
    increases = removal.first.increases()
    assert increases[f"blocks.{planted}"] > 10 * max(v for k, v in increases.items() if k != f"blocks.{planted}")
    # Mean-ablating a block that carries the residual stream wipes the input for every block alike.
    ablated = rank_layers_by_ablation(model, names, batches, loss_of).increases()
    assert min(ablated.values()) > 0.5 * max(ablated.values())
    assert float(loss_of(model, batches[0]).detach()) == pytest.approx(0.0, abs=1e-10)  # hooks removed


class Adds(nn.Module):
    """Adds a fixed vector: `x + delta`."""

    def __init__(self, delta: list[float]) -> None:
        super().__init__()
        self.delta = torch.tensor(delta)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.delta


class FillsUp(nn.Module):
    """Tops the first coordinate up to 2: a backup of `Adds([2, 0])`, idle while that one runs."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        top_up = torch.relu(2 - hidden_states[..., :1])
        return hidden_states + torch.cat([top_up, torch.zeros_like(hidden_states[..., 1:])], dim=-1)


def test_greedy_removal_keeps_one_of_two_redundant_blocks_that_single_removal_would_both_drop() -> None:
    # Target (2, 1): block 0 writes the 2, block 1 writes it only when block 0 is gone, block 2
    # writes the 1. Alone, blocks 0 and 1 cost nothing to remove; together they cost 4.
    model = nn.Sequential(Adds([2.0, 0.0]), FillsUp(), Adds([0.0, 1.0]))
    batches = [torch.zeros(3, 2)]

    def loss_of(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return ((model(batch) - torch.tensor([2.0, 1.0])) ** 2).sum(-1).mean()

    single = rank_layers_by_removal(model, ["0", "1", "2"], batches, loss_of)
    assert single.ranking()[0] == "2" and single.removed == ()
    assert single.first.increases() == {"0": 0.0, "1": 0.0, "2": 1.0}
    greedy = rank_layers_by_removal(model, ["0", "1", "2"], batches, loss_of, rounds=2)
    assert greedy.removed == ("0", "2") and greedy.losses == (0.0, 1.0)
    assert greedy.ranking() == ["1", "2", "0"]  # a 1-block cut keeps block 1: loss 1, where single's keeps 2: loss 4
    assert greedy.first == single.first
    assert float(loss_of(model, batches[0])) == 0.0  # every bypass removed
    with pytest.raises(ValueError, match="rounds must be within 1..3"):
        rank_layers_by_removal(model, ["0", "1", "2"], batches, loss_of, rounds=4)


def test_a_block_whose_input_is_not_its_output_shape_cannot_be_removed() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    batches = [torch.randn(2, 4)]
    with pytest.raises(UnhookableLayerError, match="layer '0' cannot be bypassed"):
        rank_layers_by_removal(model, ["0"], batches, lambda m, b: m(b).sum())


def test_streamed_profile_equals_pca_of_the_stacked_activations() -> None:
    model = Blocks(1)
    batches, loss_of = _task(model, count=6)
    masks = [torch.rand(8, 5) > 0.3 for _ in batches]
    masked = dict(zip(map(id, batches), masks))
    states = profile_layers(model, ["blocks.1", "blocks.3"], batches, loss_of,
                            mask_of=lambda batch: masked[id(batch)])
    captured: list[torch.Tensor] = []
    handle = model.blocks[1].register_forward_hook(lambda m, i, out: captured.append(out.detach()))
    with torch.no_grad():
        for (x, _), mask in zip(batches, masks):
            model(x)
            captured[-1] = captured[-1][mask]
    handle.remove()
    reference = StreamingPCA(16).update(torch.cat(captured).double())
    assert states["blocks.1"].count == reference.count == int(sum(m.sum() for m in masks))
    torch.testing.assert_close(states["blocks.1"].covariance(), reference.covariance(), rtol=1e-5, atol=1e-7)
    assert states["blocks.3"].count == reference.count


def test_a_missing_layer_is_named_with_real_choices() -> None:
    model = Blocks(0)
    batches, loss_of = _task(model, count=2)
    with pytest.raises(UnhookableLayerError, match=r"acme-7b: no module named 'layers.9' to hook; modules include blocks"):
        rank_layers_by_ablation(model, ["blocks.0", "layers.9"], batches, loss_of, teacher="acme-7b")

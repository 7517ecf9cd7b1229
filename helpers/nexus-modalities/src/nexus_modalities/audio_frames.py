"""Audio input for the student: stacked feature frames as tokens in the backbone's hidden size."""

from __future__ import annotations

import torch
from torch import nn


class FrameProjector(nn.Module):
    """Audio features `(batch, frames, features)` into `(batch, frames // stack, hidden)`:
    `stack` consecutive frames per token, one linear map, a learned position per token.
    `input_shape` is one input's shape, as the kernel's stage-3 forward check feeds it."""

    def __init__(self, features: int, stack: int, frames: int, hidden_size: int) -> None:
        super().__init__()
        self.stack = stack
        self.input_shape = (frames, features)
        self.linear = nn.Linear(features * stack, hidden_size)
        self.position = nn.Parameter(torch.zeros(frames // stack, hidden_size))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, length, width = frames.shape
        tokens = length // self.stack
        stacked = frames[:, : tokens * self.stack].reshape(batch, tokens, width * self.stack)
        return self.linear(stacked) + self.position[:tokens]

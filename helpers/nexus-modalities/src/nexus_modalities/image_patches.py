"""Image input for the student: square patches as tokens in the backbone's hidden size."""

from __future__ import annotations

import torch
from torch import nn


class PatchProjector(nn.Module):
    """Image `(batch, channels, H, W)` into `(batch, patches, hidden)`: square patches, one
    linear map, a learned position per patch. `input_shape` is one image's shape, as the
    kernel's stage-3 forward check feeds it."""

    def __init__(self, channels: int, patch: int, image_size: int, hidden_size: int) -> None:
        super().__init__()
        self.patch = patch
        self.input_shape = (channels, image_size, image_size)
        self.linear = nn.Linear(channels * patch * patch, hidden_size)
        self.position = nn.Parameter(torch.zeros((image_size // patch) ** 2, hidden_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.unfold(images, self.patch, stride=self.patch).transpose(1, 2)
        return self.linear(patches) + self.position

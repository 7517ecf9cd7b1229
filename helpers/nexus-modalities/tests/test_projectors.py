"""The image and audio projectors turn raw input into tokens of the backbone's hidden size,
one learned position per token, and declare the input shape stage 3's forward check feeds."""

from __future__ import annotations

import torch

from nexus_modalities.audio_frames import FrameProjector
from nexus_modalities.image_patches import PatchProjector


def test_an_image_becomes_one_token_per_square_patch() -> None:
    projector = PatchProjector(channels=3, patch=4, image_size=8, hidden_size=5)
    assert projector.input_shape == (3, 8, 8)
    images = torch.randn(2, *projector.input_shape)
    tokens = projector(images)
    assert tokens.shape == (2, 4, 5)
    with torch.no_grad():
        projector.position[1] += 1.0
    moved = projector(images)
    assert torch.allclose(moved[:, 1], tokens[:, 1] + 1.0) and torch.equal(moved[:, 0], tokens[:, 0])
    # The top-left patch alone decides the first token.
    changed = images.clone()
    changed[:, :, 4:, :] = 0
    changed[:, :, :, 4:] = 0
    assert torch.allclose(projector(changed)[:, 0], moved[:, 0])


def test_audio_frames_are_stacked_into_tokens_and_a_ragged_tail_is_dropped() -> None:
    projector = FrameProjector(features=6, stack=2, frames=8, hidden_size=5)
    assert projector.input_shape == (8, 6)
    frames = torch.randn(3, 8, 6)
    assert projector(frames).shape == (3, 4, 5)
    # Seven frames: three whole tokens, the same first three as from all eight.
    assert torch.allclose(projector(frames[:, :7]), projector(frames)[:, :3])

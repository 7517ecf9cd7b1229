"""Image-encoder teachers of the common transformers classes behind one interface.

`ImageEncoder.of(model, folder)` reads a loaded teacher with the image processor saved in its
folder (`AutoImageProcessor`), which resizes, crops and normalises each image to the model's
own input size. The image embedding the student matches (`describe()` records it):

- `vit` (`ViTModel`, `ViTForImageClassification`, ...) and `dinov2` (`Dinov2Model`, ...): the
  base model's CLS token of the last hidden state (after the final layer norm, which is what
  DINOv2's pooled output is);
- `clip`, `clip_vision_model` (`CLIPModel`, `CLIPVisionModel`) and `siglip`,
  `siglip_vision_model`: the image tower's pooled output (CLIP: the layer-normed CLS token;
  SigLIP: its attention-pooling head, or the mean of the last hidden state without one).

An image-to-text teacher (`vision-encoder-decoder`) answers questions instead (`teacher.
VisionAnswerer`). Any other class is a `VisionTeacherError` naming it and the supported ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nexus_kernel.errors import NexusError

CLS_FAMILIES = ("vit", "dinov2")
TOWER_FAMILIES = ("clip", "clip_vision_model", "siglip", "siglip_vision_model")
ENCODER_FAMILIES = (*CLS_FAMILIES, *TOWER_FAMILIES)
IMAGE_TO_TEXT = ("vision-encoder-decoder",)
"""model types answered with `VisionAnswerer` (VQA accuracy)."""


class VisionTeacherError(NexusError):
    """A teacher the vision plugin cannot read (its class, or its folder's image processor)."""


def unsupported(class_name: str, model_type: str, folder: str | Path) -> VisionTeacherError:
    return VisionTeacherError(
        f"vision: teacher class {class_name} (model_type {model_type!r}) in {folder} is not an image model the "
        f"vision plugin reads; supported model types: image encoders {', '.join(ENCODER_FAMILIES)} (embedding, "
        f"scored by centroid accuracy), image-to-text {', '.join(IMAGE_TO_TEXT)} (VQA accuracy)")


def folder_kind(folder: str | Path, demo_input: tuple[int, int] | None = None) -> str | None:
    """`"encoder"`, `"image-to-text"`, or None when `folder` has no `config.json` yet (a demo
    teacher still to be built); any other model type is a `VisionTeacherError`, and so is an
    image-to-text model whose encoder does not read `demo_input` (channels, size): that path
    feeds the demo's own pixels, not an image processor's."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VisionTeacherError(f"vision: cannot read {path} as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise VisionTeacherError(f"vision: {path} holds {type(config).__name__}, not a config object")
    model_type = str(config.get("model_type", ""))
    if model_type in ENCODER_FAMILIES:
        return "encoder"
    named = config.get("architectures")
    class_name = ", ".join(named) if isinstance(named, list) else str(named or "(none named)")
    if model_type in IMAGE_TO_TEXT:
        encoder = config.get("encoder") or {}
        found = (encoder.get("num_channels"), encoder.get("image_size"))
        if demo_input is not None and found != demo_input:
            raise VisionTeacherError(
                f"vision: teacher {class_name} in {folder} is image-to-text with an encoder reading (channels, size) "
                f"{found}; the VQA path reads only the demo's {demo_input} pixels (RGB and coordinate planes), not "
                f"an image processor's; image encoders are read with theirs: {', '.join(ENCODER_FAMILIES)}")
        return "image-to-text"
    raise unsupported(class_name, model_type, folder)


@dataclass
class ImageBatch:
    """Model inputs for a batch of images; every output position is a real one (no mask)."""

    inputs: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.inputs["pixel_values"].shape[0])

    def mask(self) -> None:
        return None


@dataclass
class ImageEncoder:
    """An image-encoder teacher (in eval mode) behind `embed(images) -> (n, hidden) array`."""

    model: Any
    family: str
    encoder_name: str
    processor: Any
    batch_size: int = 32

    @classmethod
    def of(cls, model: Any, folder: str | Path) -> ImageEncoder:
        """The encoder for a loaded teacher; `folder` holds its image processor."""
        family = str(getattr(model.config, "model_type", type(model).__name__))
        if family not in ENCODER_FAMILIES:
            raise unsupported(type(model).__name__, family, folder)
        target = getattr(model, "vision_model", model) if family in TOWER_FAMILIES else getattr(model, "base_model", model)
        encoder_name = next(name for name, module in model.named_modules() if module is target)
        return cls(model, family, encoder_name, _processor(Path(folder), type(model).__name__))

    @property
    def encoder(self) -> Any:
        return self.model.get_submodule(self.encoder_name) if self.encoder_name else self.model

    @property
    def width(self) -> int:
        config = self.encoder.config
        return int(getattr(config, "hidden_size", 0) or config.vision_config.hidden_size)

    def candidate_layers(self) -> list[str]:
        """The encoder's blocks, as module names of the whole model (stage 2's candidates)."""
        from nexus_kernel.algorithms.profiling import repeated_blocks

        return repeated_blocks(self.encoder, self.encoder_name)

    def describe(self) -> dict[str, Any]:
        """What the teacher's embedding is, for the logs and reports."""
        pooled = "CLS token" if self.family in CLS_FAMILIES else "the image tower's pooled output"
        size = getattr(self.processor, "crop_size", None) or getattr(self.processor, "size", None)
        return {"class": type(self.model).__name__, "layer": f"{self.encoder_name or 'model'} last hidden state",
                "pooling": pooled, "processor": type(self.processor).__name__, "input": dict(size or {})}

    def batch(self, images: Sequence[np.ndarray]) -> ImageBatch:
        """The processor's pixel values of RGB uint8 images (any size)."""
        pixels = self.processor(images=[np.asarray(image) for image in images], return_tensors="pt").pixel_values
        return ImageBatch({"pixel_values": pixels})

    def forward(self, batch: ImageBatch) -> Any:
        """The encoder's output on `batch` (its blocks are what stage 2 and the anchors hook)."""
        import torch

        dtype = getattr(self.encoder, "dtype", torch.float32)
        return self.encoder(pixel_values=batch.inputs["pixel_values"].to(dtype))

    def pooled(self, batch: ImageBatch) -> Any:
        """`(batch, hidden)` float32 image embeddings (differentiable through the model)."""
        outputs = self.forward(batch)
        if self.family in CLS_FAMILIES:
            return outputs.last_hidden_state[:, 0].float()
        pooled = getattr(outputs, "pooler_output", None)
        return (pooled if pooled is not None else outputs.last_hidden_state.mean(dim=1)).float()

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """`(n, hidden)` float32 embeddings of RGB uint8 images, with no autograd."""
        from nexus_modalities.embedding_capability import embed_all

        return embed_all(self, images, self.batch_size, self.width)


def _processor(folder: Path, class_name: str) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise VisionTeacherError(f"vision: teacher {class_name} in {folder} has no readable image processor "
                                 f"(preprocessor_config.json, as save_pretrained of its processor writes it): "
                                 f"{str(exc).splitlines()[0]}") from None

"""The demo vision teacher (a small ViT encoder with a GPT-2 decoder that cross-attends to the
image patches, a transformers `VisionEncoderDecoderModel`, trained on synthetic scenes), the
capability each teacher is distilled as (`capability_for`), and stage 2's probe for either kind."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nexus_cap_vision import benchmark
from nexus_cap_vision.data import (
    IMAGE_SIZE,
    TEMPLATE_WORDS,
    LabelledImage,
    LabelledRecipe,
    SyntheticRecipe,
    VisualQuestion,
    load_image_folder,
    load_split,
)
from nexus_kernel import Capability
from nexus_kernel.contracts import DemoBuildResult, DemoTeacher, ProbePlan
from nexus_modalities.training import TrainingPlan

NAME = "nexus-demo-vision"
CHANNELS = 5
ENCODER = {"image_size": IMAGE_SIZE, "patch_size": 8, "num_channels": CHANNELS, "hidden_size": 96,
           "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 192}
DECODER = {"n_embd": 96, "n_layer": 2, "n_head": 4, "n_positions": 64}
PLAN = TrainingPlan(steps=3000, learning_rate=1e-3, batch_size=64, first_round=1000, round_steps=500)


def pixels(images: Sequence[np.ndarray]) -> Any:
    """`(batch, 5, H, W)`: RGB scaled to [-1, 1], then the row and column coordinate in [-1, 1].
    The coordinate planes tell every patch where it is from the first step (a learned position
    embedding starts near zero and takes thousands of steps to matter at this size)."""
    import torch

    rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    batch, _, height, width = rgb.shape
    rows = torch.linspace(-1, 1, height)[:, None].expand(height, width)
    cols = torch.linspace(-1, 1, width)[None, :].expand(height, width)
    return torch.cat([rgb, torch.stack([rows, cols]).expand(batch, 2, height, width)], dim=1)


@dataclass
class VisionAnswerer:
    """A vision-encoder-decoder model (in eval mode) and its tokenizer behind
    `answer(images, prompts, max_new_tokens) -> answers`."""

    model: Any
    tokenizer: Any
    batch_size: int = 64

    @classmethod
    def from_folder(cls, folder: str | Path) -> VisionAnswerer:
        from transformers import AutoTokenizer, VisionEncoderDecoderModel

        return cls(VisionEncoderDecoderModel.from_pretrained(folder).eval(),
                   AutoTokenizer.from_pretrained(folder))

    def answer(self, images: Sequence[np.ndarray], prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        import torch

        from nexus_kernel.student.decoding import complete, recomputing

        answers: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            with torch.inference_mode():
                encoded = self.model.encoder(pixel_values=pixels(images[start : start + self.batch_size]))

            def logits_of(ids: Any, mask: Any, positions: Any, encoded: Any = encoded) -> Any:
                return self.model(encoder_outputs=encoded, decoder_input_ids=ids,
                                  decoder_attention_mask=mask, decoder_position_ids=positions).logits

            answers += complete(recomputing(logits_of), self.tokenizer, prompts[start : start + self.batch_size],
                                max_new_tokens)
        return answers


def demo() -> DemoTeacher:
    return DemoTeacher.of(NAME, "vision", build, benchmark.NAME, PLAN, seconds_per_step=0.078,
                          data=SyntheticRecipe(), encoder=ENCODER, decoder=DECODER)


def _batch(questions: Sequence[VisualQuestion], tokenizer: Any) -> Any:
    """`(pixels, input_ids, mask, labels)`: the image, and the prompt with its answer."""
    from nexus_kernel.student.decoding import completion_batch

    text = completion_batch(tokenizer, [(benchmark.prompt_of(q), f" {q.answer}") for q in questions])
    return pixels([q.image for q in questions]), *text


def _loss(model: Any, batch: Any) -> Any:
    """Cross-entropy of the answer tokens, the decoder reading the prompt and the image."""
    import torch

    from nexus_kernel.student.decoding import IGNORE_INDEX

    images, input_ids, mask, labels = batch
    logits = model(pixel_values=images, decoder_input_ids=input_ids[:, :-1],
                   decoder_attention_mask=mask[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(),
                                             ignore_index=IGNORE_INDEX)


def capability_for(capability: Capability, folder: str) -> Capability | None:
    """The embedding variant (`nexus_cap_vision.EMBEDDING`) for an image encoder's folder, None
    (VQA) for an image-to-text one or a demo teacher not built yet; any other class is a
    `VisionTeacherError` naming it and the supported ones."""
    from nexus_cap_vision import EMBEDDING
    from nexus_cap_vision.images import folder_kind

    return EMBEDDING if folder_kind(folder, (CHANNELS, IMAGE_SIZE)) == "encoder" else None


def labelled_items(datasets: Mapping[str, str], split: str) -> Iterable[LabelledImage]:
    """An image encoder's items of `split`: the synthetic labelled shapes, or the data folder's
    `<split>/<label>/<image>` files."""
    from nexus_kernel.kit.datasets import split_items

    return split_items(datasets, split, LabelledRecipe(), load_image_folder)


def is_image_encoder(model: Any) -> bool:
    """Whether a loaded teacher module is an image encoder (else image-to-text)."""
    from nexus_cap_vision.images import ENCODER_FAMILIES

    return getattr(model.config, "model_type", None) in ENCODER_FAMILIES


def probe_plan(teacher: Any, n_probe: int, datasets: Mapping[str, str]) -> ProbePlan:
    """Probe and profile the teacher on training items (synthetic or a real folder). An image
    encoder's probe is the cosine of its image embedding to the unablated one over its blocks
    (`nexus_modalities.embedding_capability`); an image-to-text teacher's is the loss of its
    answers, over the image encoder's blocks and the text decoder's blocks."""
    from transformers import AutoTokenizer

    from nexus_kernel.algorithms.profiling import plan_from_items, repeated_blocks
    from nexus_kernel.kit.datasets import items_of

    if is_image_encoder(teacher.model):
        from nexus_cap_vision.images import ImageEncoder
        from nexus_modalities.embedding_capability import embedding_probe_plan

        return embedding_probe_plan(ImageEncoder.of(teacher.model, teacher.folder),
                                    lambda: labelled_items(datasets, "train"), lambda item: item.image, n_probe)

    tokenizer = AutoTokenizer.from_pretrained(teacher.folder)
    layers = [*repeated_blocks(teacher.model.encoder, "encoder"),
              *repeated_blocks(teacher.model.decoder, "decoder")]

    def items() -> Iterable[VisualQuestion]:
        return items_of(datasets["train"], "train", lambda _: SyntheticRecipe().train(), load_split)

    return plan_from_items(items, lambda chunk: _batch(chunk, tokenizer), _loss, layers, n_probe,
                           mask_of=lambda batch: batch[2])


def build(folder: Path, recipe: Mapping[str, Any], progress: Callable[[int], None]) -> DemoBuildResult:
    """Train the teacher `recipe` describes until it clears its validation target, save it to
    `folder`, return its held-out scores and training record."""
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    from nexus_kernel.student.decoding import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
    from nexus_modalities.training import fit

    data = SyntheticRecipe(**recipe["data"])
    plan = TrainingPlan(**recipe["plan"])
    tokenizer = build_tokenizer(TEMPLATE_WORDS)
    decoder = GPT2Config(vocab_size=len(tokenizer), add_cross_attention=True, is_decoder=True,
                         bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **recipe["decoder"])
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(**recipe["encoder"]), decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS_ID, PAD_ID, EOS_ID
    model = VisionEncoderDecoderModel(config=config)
    stream = data.train()

    def make_batch(_: int) -> Any:
        return _batch(list(itertools.islice(stream, plan.batch_size)), tokenizer)

    validation = data.validation()
    training = fit(model, plan, make_batch, _loss, progress, target=recipe.get("validation_target"),
                   validate=lambda model: benchmark.evaluate(VisionAnswerer(model, tokenizer),
                                                             validation)[benchmark.NAME].value)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return DemoBuildResult(benchmark.evaluate(VisionAnswerer(model, tokenizer), data.test()), training.to_json())

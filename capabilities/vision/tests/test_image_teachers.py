"""Image teachers of the common transformers classes: tiny random-init encoders with their image
processors saved beside them, read the way stages 1, 2 and 4 read a user's folder; the
image-folder layout and scikit-learn's digits written in it; and the real DINOv2-small on those
digits where `../shared` has it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from encoder_zoo import IMAGE_KINDS, check_embedding_probe, save_encoder
from nexus_cap_vision import CAPABILITY, EMBEDDING, benchmark
from nexus_cap_vision.data import LabelledImage, LabelledRecipe, load_image_folder, write_image_folder
from nexus_cap_vision.images import ENCODER_FAMILIES, ImageEncoder, VisionTeacherError, folder_kind
from nexus_cap_vision.teacher import capability_for, probe_plan

from nexus_kernel.kit.datasets import DatasetError
from nexus_kernel.teachers.loading import load_teacher_folder

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
SYNTHETIC = {"train": "synthetic:shapes-qa-v1", "test": "synthetic:shapes-qa-v1"}


def _saved(folder: Path, kind: str) -> Any:
    return load_teacher_folder(kind, save_encoder(folder, kind), "fp32")


def _images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    sizes = (8, 32, 20)
    return [rng.integers(0, 256, (sizes[i % 3], sizes[i % 3], 3), dtype=np.uint8) for i in range(count)]


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_each_image_encoder_gives_embeddings_and_a_probe_that_feels_its_blocks(tmp_path: Path, kind: str) -> None:
    teacher = _saved(tmp_path / kind, kind)
    assert capability_for(CAPABILITY, str(teacher.folder)) == EMBEDDING
    encoder = ImageEncoder.of(teacher.model, teacher.folder)
    embeddings = encoder.embed(_images(5))  # 8, 32 and 20 px images: the processor brings them to 28
    assert embeddings.shape == (5, 16) and np.isfinite(embeddings).all()
    assert encoder.batch(_images(2)).inputs["pixel_values"].shape == (2, 3, 28, 28)
    np.testing.assert_allclose(encoder.embed(_images(1)), embeddings[:1], atol=1e-5)  # no padding: batch-free
    assert len(encoder.candidate_layers()) == 2 and encoder.describe()["class"] == type(teacher.model).__name__

    plan = probe_plan(teacher, 4, SYNTHETIC)
    check_embedding_probe(teacher.model, plan, 4)
    assert plan.mask_of(next(plan.stream(2, 2))) is None


def test_the_encoder_families_are_the_documented_ones() -> None:
    assert set(ENCODER_FAMILIES) == {"vit", "dinov2", "clip", "clip_vision_model", "siglip", "siglip_vision_model"}
    assert EMBEDDING.output == "embedding" and EMBEDDING.benchmarks[0] == benchmark.CENTROID
    assert (EMBEDDING.name, EMBEDDING.modality, EMBEDDING.categories) == (
        CAPABILITY.name, CAPABILITY.modality, CAPABILITY.categories)


def test_a_model_that_is_not_an_image_model_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
              ).save_pretrained(folder)
    with pytest.raises(VisionTeacherError, match=r"BertModel \(model_type 'bert'\) in .*bert is not an image model.*"
                       r"vit, dinov2, clip.*vision-encoder-decoder"):
        capability_for(CAPABILITY, str(folder))
    assert folder_kind(tmp_path / "not-built-yet") is None  # a demo teacher before stage 1 builds it
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1, 2]")
    with pytest.raises(VisionTeacherError, match=r"config.json holds list, not a config object"):
        capability_for(CAPABILITY, str(tmp_path / "list"))
    captioner = tmp_path / "captioner"
    captioner.mkdir()
    (captioner / "config.json").write_text(json.dumps({
        "model_type": "vision-encoder-decoder", "architectures": ["VisionEncoderDecoderModel"],
        "encoder": {"model_type": "vit", "num_channels": 3, "image_size": 224}}))
    with pytest.raises(VisionTeacherError, match=r"encoder reading \(channels, size\) \(3, 224\); the VQA path "
                                                 r"reads only the demo's \(5, 32\) pixels"):
        capability_for(CAPABILITY, str(captioner))
    teacher = _saved(tmp_path / "vit", "vit")
    (teacher.folder / "preprocessor_config.json").unlink()
    with pytest.raises(VisionTeacherError, match="no readable image processor"):
        ImageEncoder.of(teacher.model, teacher.folder)


def test_the_image_folder_layout_reads_every_label_in_turn_and_names_what_is_wrong(tmp_path: Path) -> None:
    images = [LabelledImage(np.full((6 + i, 6 + i, 3), i * 20, np.uint8), label)
              for i, label in enumerate(["cat", "cat", "cat", "dog", "dog", "emu"])]
    write_image_folder(tmp_path, "train", images)
    read = load_image_folder(tmp_path, "train")
    assert [item.label for item in read] == ["cat", "dog", "emu", "cat", "dog", "cat"]
    assert read[0].image.shape == (6, 6, 3) and read[2].image.shape == (11, 11, 3)  # their own sizes
    with pytest.raises(DatasetError, match=r"no 'test' folder; labelled images are read from test/<label>/<image>"):
        load_image_folder(tmp_path, "test")
    write_image_folder(tmp_path / "one", "train", images[:2])
    with pytest.raises(DatasetError, match="found images under 1 label folders"):
        load_image_folder(tmp_path / "one", "train")
    (tmp_path / "train" / "dog" / "00003.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"00003.png: not a readable image"):
        load_image_folder(tmp_path, "train")


def test_synthetic_labelled_shapes_repeat_and_have_twelve_labels() -> None:
    recipe = LabelledRecipe()
    first, again = recipe.test(), recipe.test()
    assert all(np.array_equal(a.image, b.image) and a.label == b.label for a, b in zip(first, again, strict=True))
    assert len({item.label for item in first}) == 12


def test_the_digits_are_written_as_an_image_folder_dark_ink_on_white(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (the digits extra) is not installed")
    from nexus_cap_vision.digits import main

    assert main([str(tmp_path)]) == 0
    train, test = load_image_folder(tmp_path, "train"), load_image_folder(tmp_path, "test")
    assert (len(train), len(test)) == (1343, 454)
    assert sorted({item.label for item in test}) == [str(d) for d in range(10)]
    assert [item.label for item in test[:10]] == [str(d) for d in range(10)]  # every prefix holds each digit
    assert train[0].image.shape == (12, 12, 3) and (train[0].image[:2] == 255).all()  # a white margin


@pytest.mark.skipif(not (SHARED / "models/dinov2-small").is_dir(),
                    reason="../shared/models/dinov2-small is absent (real weights)")
def test_real_dinov2_small_separates_the_digits(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (the digits extra) is not installed")
    from nexus_cap_vision.digits import main

    from nexus_modalities.embedding_scores import centroid_score

    folder = SHARED / "models/dinov2-small"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "dinov2"
    main([str(tmp_path)])
    teacher = load_teacher_folder("dinov2-small", folder, "fp32")
    test = load_image_folder(tmp_path, "test")[:200]
    embeddings = ImageEncoder.of(teacher.model, teacher.folder).embed([item.image for item in test])
    score = centroid_score(benchmark.CENTROID, embeddings, [item.label for item in test])
    assert embeddings.shape == (200, 384) and score.value >= 0.5  # chance 0.1

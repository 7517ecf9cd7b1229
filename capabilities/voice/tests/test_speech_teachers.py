"""Speech teachers of the common transformers classes: tiny random-init models with their
feature extractors saved beside them, read the way stage 2 and stage 4 read a user's folder;
and the real whisper-tiny.en on the real FSDD recordings where `../shared` has them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from encoder_zoo import SPEECH_KINDS, check_embedding_probe, save_encoder
from nexus_cap_voice import benchmark
from nexus_cap_voice.data import SAMPLE_RATE, load_folder
from nexus_cap_voice.speech import SpeechEncoder, SpeechTeacherError
from nexus_cap_voice.teacher import embedding_probe_plan

from nexus_kernel.teachers.loading import load_teacher_folder

SHARED = Path(__file__).resolve().parents[3].parent / "shared"


def _saved(folder: Path, kind: str) -> Any:
    return load_teacher_folder(kind, save_encoder(folder, kind), "fp32")


def _waveforms(count: int, seconds: tuple[float, ...] = (0.4, 0.9, 0.6)) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal(int(SAMPLE_RATE * seconds[i % len(seconds)])).astype(np.float32) * 0.1
            for i in range(count)]


@pytest.mark.parametrize("kind", SPEECH_KINDS)
def test_each_speech_class_gives_utterance_embeddings_and_a_probe_that_feels_its_blocks(
        tmp_path: Path, kind: str) -> None:
    teacher = _saved(tmp_path / kind, kind)
    speech = SpeechEncoder.of(teacher.model, teacher.folder)
    waves = _waveforms(5)
    embeddings = speech.embed(waves)
    assert embeddings.shape == (5, 16) and np.isfinite(embeddings).all()
    batch = speech.batch(waves[:3])
    if kind == "ast":
        assert batch.mask() is None
    else:  # padded frames are left out of the mean
        assert batch.mask().sum(dim=1).tolist() == batch.frames.tolist() and len(set(batch.frames.tolist())) == 3
    if "attention_mask" in batch.inputs and kind == "wavlm":  # masked, layer-normed convolutions: batch-free
        np.testing.assert_allclose(speech.embed(waves[:1]), embeddings[:1], atol=1e-4)
    assert speech.describe()["sample_rate"] == 16000 and len(speech.candidate_layers()) == 2
    assert all(".layers." in name or ".layer." in name for name in speech.candidate_layers())  # not conv layers

    plan = embedding_probe_plan(speech, 4, {"train": "synthetic:spoken-digits-v1"})
    check_embedding_probe(teacher.model, plan, 4)


def test_whisper_reads_a_window_cut_to_the_utterance_and_restores_its_30_seconds(tmp_path: Path) -> None:
    teacher = _saved(tmp_path / "whisper", "whisper")
    trimmed = SpeechEncoder.of(teacher.model, teacher.folder)
    full = SpeechEncoder.of(teacher.model, teacher.folder, window="full")
    waves = _waveforms(2)
    batch = trimmed.batch(waves)
    assert batch.inputs["input_features"].shape[-1] == 2 * batch.length == 90  # 0.9 s at 100 frames a second
    assert full.batch(waves).inputs["input_features"].shape[-1] == 3000
    assert trimmed.embed(waves).shape == full.embed(waves).shape == (2, 16)
    encoder = teacher.model.get_encoder()
    assert encoder.embed_positions.num_embeddings == encoder.config.max_source_positions == 1500


def test_a_model_that_is_not_a_speech_encoder_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(SpeechTeacherError, match="BertModel \\(model_type 'bert'\\).*whisper, wav2vec2, hubert"):
        SpeechEncoder.of(model, tmp_path)
    teacher = _saved(tmp_path / "whisper", "whisper")
    (teacher.folder / "preprocessor_config.json").unlink()
    with pytest.raises(SpeechTeacherError, match="no readable feature extractor"):
        SpeechEncoder.of(teacher.model, teacher.folder)


@pytest.mark.skipif(not (SHARED / "models/whisper-tiny.en").is_dir() or not (SHARED / "data/fsdd").is_dir(),
                    reason="../shared/models/whisper-tiny.en or ../shared/data/fsdd is absent (real weights and data)")
def test_real_whisper_tiny_tells_the_fsdd_digits_apart_from_its_trimmed_window() -> None:
    teacher = load_teacher_folder("whisper-tiny.en", SHARED / "models/whisper-tiny.en", "fp32")
    speech = SpeechEncoder.of(teacher.model, teacher.folder)
    test = load_folder(SHARED / "data/fsdd/recordings", "test")
    score = benchmark.centroid_score(speech.embed([u.samples for u in test]), [u.label for u in test])
    assert score.n == 150 and score.value >= 0.95  # measured 0.993; chance 0.1

"""Voice data and scoring: WAV reading, the spoken-digit folder layout, synthesis, features,
and the cosine / nearest-centroid scorer."""

from __future__ import annotations

import random
import wave
from pathlib import Path

import numpy as np
import pytest
from nexus_cap_voice import benchmark, data
from nexus_cap_voice.data import (
    SAMPLE_RATE,
    Speaker,
    SyntheticRecipe,
    load_folder,
    synthesize,
)
from nexus_cap_voice.features import LogMel

from nexus_kernel.errors import DatasetError
from nexus_kernel.kit.testing import shared_data


def _write(path: Path, samples: np.ndarray, rate: int, width: int) -> None:
    scale = {1: 127, 2: 32767, 4: 2**31 - 1}[width]
    values = np.round(samples * scale).astype({1: np.int16, 2: "<i2", 4: "<i4"}[width])
    raw = (values + 128).astype(np.uint8).tobytes() if width == 1 else values.tobytes()
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(raw)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_wav_sample_widths_read_back(tmp_path: Path, width: int) -> None:
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(800) / SAMPLE_RATE)
    _write(tmp_path / "3_ann_0.wav", tone, SAMPLE_RATE, width)
    [utterance] = load_folder(tmp_path)
    assert (utterance.label, utterance.speaker, utterance.take) == ("3", "ann", 0)
    assert np.abs(utterance.samples - tone).max() < 2 / 127


def test_resampling_keeps_duration_and_pitch(tmp_path: Path) -> None:
    tone = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    _write(tmp_path / "1_bo_2.wav", tone, 16000, 2)
    samples = load_folder(tmp_path)[0].samples
    assert len(samples) == SAMPLE_RATE
    peak = np.argmax(np.abs(np.fft.rfft(samples))) * SAMPLE_RATE / len(samples)
    assert abs(peak - 300) <= 1


def test_bad_names_and_formats_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hello.wav").write_bytes(b"RIFF")
    with pytest.raises(DatasetError, match=r"hello.wav: name is not \{label\}_\{speaker\}_\{take\}"):
        load_folder(tmp_path)
    (tmp_path / "hello.wav").unlink()
    (tmp_path / "1_a_0.wav").write_bytes(b"not a wav")
    with pytest.raises(DatasetError, match=r"1_a_0.wav: not a PCM WAV file"):
        load_folder(tmp_path)
    (tmp_path / "1_a_0.wav").unlink()
    (tmp_path / "1_a_0.mp3").write_bytes(b"ID3")
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(DatasetError, match=r"1_a_0.mp3: reading .mp3 files needs ffmpeg"):
        load_folder(tmp_path)


def test_truncated_and_empty_wavs_are_errors(tmp_path: Path) -> None:
    whole = data.wav_bytes(np.zeros(1000, np.float32))
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[:60])  # a 44-byte header promising 2000 bytes, then 16 of them
    with pytest.raises(DatasetError) as caught:
        data.read_wav(cut)
    assert str(caught.value) == f"{cut}: truncated WAV: the header promises 2000 bytes of samples, the file holds 16"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(data.wav_bytes(np.zeros(0, np.float32)))
    with pytest.raises(DatasetError) as caught:
        data.read_audio(empty)
    assert str(caught.value) == f"{empty}: the WAV file holds no samples"


@pytest.mark.parametrize("name", ["folder", "folder.wav", "folder.mp3"])
def test_a_directory_or_a_missing_path_is_named_as_such(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    with pytest.raises(DatasetError) as caught:
        data.read_audio(tmp_path / name)
    assert str(caught.value) == f"{tmp_path / name}: is a directory, not an audio file"
    missing = tmp_path / f"missing-{name}"
    with pytest.raises(DatasetError) as caught:
        data.read_audio(missing)
    assert str(caught.value) == f"{missing}: audio file does not exist"


def test_ffmpeg_output_with_no_samples_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    silent = tmp_path / "silent.ogg"
    silent.write_bytes(b"OggS")
    monkeypatch.setattr(data.shutil, "which", lambda name: "/usr/bin/ffmpeg")
    monkeypatch.setattr(data.subprocess, "run",
                        lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, b"", b""))
    with pytest.raises(DatasetError) as caught:
        data.read_audio(silent)
    assert str(caught.value) == f"{silent}: ffmpeg decoded no samples from it"


def test_answer_names_a_bad_audio_path_before_touching_the_model(tmp_path: Path) -> None:
    import torch
    from nexus_cap_voice import student

    cut = tmp_path / "cut.wav"
    cut.write_bytes(data.wav_bytes(np.zeros(1000, np.float32))[:60])
    from nexus_modalities.embedding_capability import CENTROID_PREFIX

    centroids = {f"{CENTROID_PREFIX}one": torch.ones(4)}
    with pytest.raises(DatasetError, match=r"cut.wav: truncated WAV: the header promises 2000 bytes"):
        student.answer(None, [str(cut)], centroids)
    with pytest.raises(DatasetError, match=r": is a directory, not an audio file$"):
        student.answer(None, [str(tmp_path)], centroids)


def test_synthetic_words_are_deterministic_and_round_trip(tmp_path: Path) -> None:
    recipe = SyntheticRecipe(test_speakers=2, takes=1)
    test = recipe.test()
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(test, recipe.test()))
    assert {u.label for u in test} == set(data.LABELS)
    data.write_folder(tmp_path, test)
    loaded = load_folder(tmp_path)
    assert sorted(u.file_name for u in loaded) == sorted(u.file_name for u in test)
    by_name = {u.file_name: u.samples for u in test}
    assert all(np.abs(u.samples - by_name[u.file_name]).max() < 1e-4 for u in loaded)
    speaker = Speaker(pitch=120, tract=1.0, rate=1.0, breath=0.02)
    one, other = synthesize("one", speaker, random.Random(0)), synthesize("one", speaker, random.Random(1))
    assert not np.array_equal(one, other), "takes should differ"


def test_log_mel_shape_and_padding() -> None:
    features = LogMel()
    batch = features([np.zeros(100, np.float32), np.random.default_rng(0).standard_normal(20000).astype(np.float32)])
    assert tuple(batch.shape) == (2, features.frames, features.n_mels)
    assert float(batch[0].max()) == pytest.approx(np.log(1e-6), abs=1e-3)
    assert np.isfinite(batch.numpy()).all()


def test_scores_teacher_is_one_and_centroids_separate_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16)) * 5
    labels = [str(i % 3) for i in range(60)]
    embeddings = np.stack([centres[int(label)] + rng.standard_normal(16) for label in labels])
    scores = benchmark.score(embeddings, labels)
    assert scores[benchmark.COSINE].value == pytest.approx(1.0, abs=1e-12)
    assert scores[benchmark.CENTROID].value == 1.0
    assert scores[benchmark.CENTROID].chance == pytest.approx(1 / 3)
    noisy = benchmark.score(rng.standard_normal((60, 16)), labels, reference=embeddings)
    assert abs(noisy[benchmark.COSINE].value) < 0.3
    assert noisy[benchmark.CENTROID].value < 0.7
    with pytest.raises(ValueError, match="differ in shape"):
        benchmark.cosine_score(embeddings[:, :8], embeddings)


def test_real_spoken_digits_all_300_files_load() -> None:
    folder = shared_data("fsdd", __file__)
    utterances = load_folder(folder)
    assert len(utterances) == 300
    assert {u.label for u in utterances} == {str(d) for d in range(10)}
    assert {u.speaker for u in utterances} == {"george", "jackson", "lucas"}
    assert all(len(u.samples) > 0 and np.abs(u.samples).max() <= 1.0 for u in utterances)
    assert len(load_folder(folder, "test")) == 150 == len(load_folder(folder, "train"))


def test_training_augmentation_shifts_scales_and_stretches_within_its_bounds() -> None:
    import torch
    from nexus_cap_voice import student
    from nexus_cap_voice.data import SAMPLE_RATE

    utterances = SyntheticRecipe(test_speakers=2, takes=1).test()[:6]
    heard = student.augment(utterances, torch.Generator().manual_seed(1))
    again = student.augment(utterances, torch.Generator().manual_seed(1))
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(heard, again, strict=True))
    for before, after in zip(utterances, heard, strict=True):
        assert (after.label, after.speaker, after.take) == (before.label, before.speaker, before.take)
        stretch = len(before.samples) * student.MAX_SPEED_CHANGE + 2
        lead = SAMPLE_RATE * student.MAX_LEAD_SECONDS
        assert len(before.samples) - stretch <= len(after.samples) <= len(before.samples) + stretch + lead
        peak = np.abs(after.samples).max() / np.abs(before.samples).max()
        assert 10 ** (-student.MAX_GAIN_DB / 20) - 0.1 <= peak <= 10 ** (student.MAX_GAIN_DB / 20) + 0.1
    assert not all(np.array_equal(a.samples, b.samples) for a, b in zip(heard, utterances, strict=True))

"""How the voice teacher is distilled and how either model is scored.

Cosine distillation: the student hears the same utterance (as its own log-mel frames, four
frames per token; a real folder's, in training, a little louder or softer, later and faster or
slower: `augment`) and its embedding head learns the teacher's utterance embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nexus_cap_voice import benchmark
from nexus_cap_voice.data import SyntheticRecipe, load_folder
from nexus_cap_voice.features import LogMel
from nexus_kernel import Score
from nexus_kernel.contracts import AdapterSpec, DistillPlan

FEATURES = LogMel()
FRAMES_PER_TOKEN = 4
_BATCH = 64


def _items(datasets: Mapping[str, str], split: str) -> Any:
    from nexus_kernel.kit.datasets import split_items

    return split_items(datasets, split, SyntheticRecipe(), load_folder)


def projector(spec: AdapterSpec) -> Any:
    """Log-mel frames into the backbone: four frames per token."""
    from nexus_modalities.audio_frames import FrameProjector

    return FrameProjector(FEATURES.n_mels, FRAMES_PER_TOKEN, FEATURES.frames, spec.hidden_size)


def speech_of(teacher: Any) -> Any:
    """The `SpeechEncoder` of a loaded teacher (its folder's extractor read once)."""
    from nexus_cap_voice.speech import SpeechEncoder

    return SpeechEncoder.of(teacher.model, teacher.folder)


def embeddings(model: Any, waveforms: Sequence[np.ndarray]) -> np.ndarray:
    """Utterance embeddings `(n, dim)` of a loaded teacher or a `StudentCapability`."""
    from nexus_kernel.student.model import StudentCapability
    from nexus_modalities.embedding_capability import student_embeddings

    if not isinstance(model, StudentCapability):
        return speech_of(model).embed(waveforms)  # type: ignore[no-any-return]
    return student_embeddings(model, waveforms, FEATURES, _BATCH)


def distill_plan(teacher: Any, student: Any, datasets: Mapping[str, str]) -> DistillPlan:
    """Train on training utterances (synthetic or a real folder) against the teacher's
    utterance embeddings (`nexus_modalities.embedding_capability.embedding_distill_plan`). A
    real folder's recordings are augmented in training (`augment`): a folder is a fixed, often
    small set, while the synthetic recipe draws a fresh utterance for every pool item (the demo
    student is at its teacher's accuracy without it, and the demo run stays as measured)."""
    from dataclasses import replace

    from nexus_kernel.kit.datasets import SYNTHETIC_PREFIX
    from nexus_modalities.embedding_capability import embedding_distill_plan

    plan = embedding_distill_plan(speech_of(teacher) if teacher is not None else None,
                                  lambda: iter(_items(datasets, "train")), lambda utterance: utterance.samples,
                                  FEATURES, "utterance embedding")
    return plan if datasets["train"].startswith(SYNTHETIC_PREFIX) else replace(plan, augment=augment)


MAX_GAIN_DB = 6.0
MAX_LEAD_SECONDS = 0.1
MAX_SPEED_CHANGE = 0.05


def augment(utterances: list[Any], generator: Any) -> list[Any]:
    """Each training utterance as the student hears it in one step (the teacher's embedding
    stays that of the recording): its level scaled by up to +-6 dB, up to 0.1 s of silence
    before it and its speed changed by up to 5 % (resampled), drawn with `generator`. Why: on
    the 150 FSDD training recordings the student without it matched whisper-tiny.en's
    embeddings to cosine 0.998 on them and 0.927 on the held-out ones."""
    from dataclasses import replace

    import torch

    from nexus_cap_voice.data import SAMPLE_RATE, resample

    draws = torch.rand(len(utterances), 3, generator=generator, dtype=torch.float64).numpy() * 2 - 1
    heard = []
    for utterance, (gain, lead, speed) in zip(utterances, draws, strict=True):
        samples = resample(utterance.samples, SAMPLE_RATE, round(SAMPLE_RATE * (1 + MAX_SPEED_CHANGE * speed)))
        silence = np.zeros(round(SAMPLE_RATE * MAX_LEAD_SECONDS * (lead + 1) / 2), np.float32)
        level = np.float32(10 ** (MAX_GAIN_DB * gain / 20))
        heard.append(replace(utterance, samples=np.concatenate([silence, samples * level])))
    return heard


def score(model: Any, split: str, datasets: Mapping[str, str], limit: int | None = None,
          reference: Mapping[str, Any] | None = None) -> dict[str, Score]:
    """Nearest-centroid accuracy of the model's embeddings on `split` (reference-free, so
    teacher and student are scored alike) and, given the teacher's embeddings of the same
    utterances (`reference`, see `reference` below), the mean cosine similarity to them."""
    from nexus_modalities.embedding_capability import scores

    utterances = list(_items(datasets, split))[:limit]
    return scores(embeddings(model, [u.samples for u in utterances]), [u.label for u in utterances], reference,
                  benchmark.CENTROID, benchmark.COSINE, "voice")


def reference(teacher: Any, split: str, datasets: Mapping[str, str], limit: int | None = None) -> dict[str, Any]:
    """The teacher's utterance embeddings of the items `score` reads, for its cosine figure."""
    from nexus_modalities.embedding_capability import reference_of

    utterances = list(_items(datasets, split))[:limit]
    return reference_of(embeddings(teacher, [u.samples for u in utterances]))


_CENTROID_ITEMS = 500


def assets(model: Any, datasets: Mapping[str, str]) -> dict[str, Any]:
    """One unit-length centroid per word: the packaged student's mean embedding of the first
    training utterances of that word (what `answer` compares a new utterance with)."""
    import itertools

    from nexus_modalities.embedding_capability import centroid_assets

    utterances = list(itertools.islice(_items(datasets, "train"), _CENTROID_ITEMS))
    return centroid_assets(embeddings(model, [u.samples for u in utterances]), [u.label for u in utterances])


def answer(model: Any, inputs: list[str], assets: Mapping[str, Any]) -> str:
    """The word spoken in one audio file (`inputs[0]`, WAV or anything ffmpeg reads): the
    label of the nearest packaged centroid, with its cosine similarity."""
    from pathlib import Path

    from nexus_cap_voice.data import read_audio
    from nexus_kernel.errors import NexusError
    from nexus_modalities.embedding_capability import nearest_centroid

    if len(inputs) != 1:
        raise NexusError("voice: give one audio file path, e.g. nexus infer BUNDLE --capability voice seven.wav")
    return nearest_centroid(embeddings(model, [read_audio(Path(inputs[0]))])[0], assets, "voice")

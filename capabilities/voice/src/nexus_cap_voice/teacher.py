"""The demo voice teacher: a small Audio Spectrogram Transformer trained to tell ten spoken
digits apart; its utterance embedding (the pooled output) is what the student must match."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nexus_kernel import Score
from nexus_kernel.contracts import DemoTeacher
from nexus_kernel.training import TrainingPlan

from nexus_cap_voice import benchmark
from nexus_cap_voice.data import LABELS, SyntheticRecipe
from nexus_cap_voice.features import LogMel

NAME = "nexus-demo-voice"
FEATURES_KEY = "nexus_log_mel"
MODEL = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 192, "patch_size": 8, "frequency_stride": 8, "time_stride": 8}
PLAN = TrainingPlan(steps=600, learning_rate=2e-3, batch_size=32)


@dataclass
class VoiceEncoder:
    """An AST audio model (in eval mode) behind `embed(waveforms) -> (n, hidden) array`."""

    model: Any
    features: LogMel
    batch_size: int = 64

    @classmethod
    def from_folder(cls, folder: str | Path) -> VoiceEncoder:
        """Load a teacher folder; its log-mel settings travel in its config."""
        from transformers import ASTForAudioClassification

        model = ASTForAudioClassification.from_pretrained(folder).eval()
        return cls(model, LogMel.from_json(getattr(model.config, FEATURES_KEY)))

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        rows = []
        with torch.inference_mode():
            for start in range(0, len(waveforms), self.batch_size):
                inputs = self.features(waveforms[start : start + self.batch_size])
                rows.append(self.model.audio_spectrogram_transformer(inputs).pooler_output.numpy())
        return np.concatenate(rows)


def demo() -> DemoTeacher:
    return DemoTeacher.of(NAME, "voice", build, benchmark.CENTROID, PLAN,
                          data=SyntheticRecipe(), features=LogMel(), model=MODEL)


def build(folder: Path, recipe: Mapping[str, Any], progress: Callable[[int], None]) -> dict[str, Score]:
    """Train the teacher `recipe` describes, save it to `folder`, return its held-out scores."""
    import torch
    from transformers import ASTConfig, ASTForAudioClassification

    from nexus_kernel.training import fit

    data = SyntheticRecipe(**recipe["data"])
    features = LogMel.from_json(recipe["features"])
    plan = TrainingPlan(**recipe["plan"])
    config = ASTConfig(num_mel_bins=features.n_mels, max_length=features.frames,
                       num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                       label2id={label: i for i, label in enumerate(LABELS)}, **recipe["model"])
    setattr(config, FEATURES_KEY, features.to_json())
    model = ASTForAudioClassification(config)
    stream = data.train()

    def make_batch(_: int) -> Any:
        utterances = list(itertools.islice(stream, plan.batch_size))
        labels = torch.tensor([LABELS.index(u.label) for u in utterances])
        return features([u.samples for u in utterances]), labels

    def loss_of(model: Any, batch: Any) -> Any:
        inputs, labels = batch
        return model(input_values=inputs, labels=labels).loss

    fit(model, plan, make_batch, loss_of, progress)
    model.save_pretrained(folder)
    test = data.test()
    embeddings = VoiceEncoder(model.eval(), features).embed([u.samples for u in test])
    return benchmark.score(embeddings, [u.label for u in test])

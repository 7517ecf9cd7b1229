"""The demo voice teacher (a small Audio Spectrogram Transformer trained to tell ten spoken
digits apart; its utterance embedding, the pooled output, is what the student must match) and
stage 2's probe for any speech teacher (`nexus_cap_voice.speech`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nexus_cap_voice import benchmark
from nexus_cap_voice.data import LABELS, SyntheticRecipe, Utterance, load_folder
from nexus_cap_voice.features import LogMel
from nexus_cap_voice.speech import FEATURES_KEY, SpeechEncoder
from nexus_kernel.contracts import DemoBuildResult, DemoTeacher, ProbePlan
from nexus_kernel.kit.datasets import DatasetError
from nexus_modalities.training import TrainingPlan

NAME = "nexus-demo-voice"
MODEL = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 192, "patch_size": 8, "frequency_stride": 8, "time_stride": 8}
PLAN = TrainingPlan(steps=1500, learning_rate=2e-3, batch_size=32, first_round=600, round_steps=300)


def demo() -> DemoTeacher:
    return DemoTeacher.of(NAME, "voice", build, benchmark.CENTROID, PLAN, seconds_per_step=0.077,
                          data=SyntheticRecipe(), features=LogMel(), model=MODEL)


def _batch(utterances: Sequence[Utterance], features: LogMel, label_ids: Mapping[str, int]) -> Any:
    """`(log-mel features, label ids)` of utterances whose labels the teacher knows."""
    import torch

    unknown = sorted({u.label for u in utterances} - set(label_ids))
    if unknown:
        raise DatasetError(f"labels {unknown} are not among the teacher's labels {sorted(label_ids)}")
    return features([u.samples for u in utterances]), torch.tensor([label_ids[u.label] for u in utterances])


def _loss(model: Any, batch: Any) -> Any:
    inputs, labels = batch
    return model(input_values=inputs, labels=labels).loss


def _training_items(datasets: Mapping[str, str]) -> Iterable[Utterance]:
    from nexus_kernel.kit.datasets import items_of

    return items_of(datasets["train"], "train", lambda _: SyntheticRecipe().train(), load_folder)


def probe_plan(teacher: Any, n_probe: int, datasets: Mapping[str, str]) -> ProbePlan:
    """Probe and profile the teacher on training utterances (synthetic or a real folder). The
    demo teacher's probe loss is its digit classification; any other speech teacher's is the
    cosine distance of its utterance embedding to the unablated one (`embedding_probe_plan`)."""
    from nexus_kernel.algorithms.profiling import plan_from_items, repeated_blocks

    config = teacher.model.config
    if getattr(config, FEATURES_KEY, None) is None:
        return embedding_probe_plan(SpeechEncoder.of(teacher.model, teacher.folder), n_probe, datasets)
    features = LogMel.from_json(getattr(config, FEATURES_KEY))
    return plan_from_items(lambda: _training_items(datasets), lambda chunk: _batch(chunk, features, config.label2id),
                           _loss, repeated_blocks(teacher.model), n_probe)


def embedding_probe_plan(speech: SpeechEncoder, n_probe: int, datasets: Mapping[str, str]) -> ProbePlan:
    """The shared probe for a teacher without a task head (cosine to its unablated utterance
    embeddings, `nexus_modalities.embedding_capability`) on training utterances."""
    from nexus_modalities.embedding_capability import embedding_probe_plan as probe

    return probe(speech, lambda: _training_items(datasets), lambda utterance: utterance.samples, n_probe)


def build(folder: Path, recipe: Mapping[str, Any], progress: Callable[[int], None]) -> DemoBuildResult:
    """Train the teacher `recipe` describes until it clears its validation target, save it to
    `folder`, return its held-out scores and training record."""
    from transformers import ASTConfig, ASTForAudioClassification

    from nexus_modalities.training import fit

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
        return _batch(list(itertools.islice(stream, plan.batch_size)), features, config.label2id)

    def scores(model: Any, utterances: Sequence[Utterance]) -> dict[str, Any]:
        embeddings = SpeechEncoder.of(model, None).embed([u.samples for u in utterances])
        return benchmark.score(embeddings, [u.label for u in utterances])

    validation = data.validation()
    training = fit(model, plan, make_batch, _loss, progress, target=recipe.get("validation_target"),
                   validate=lambda model: scores(model, validation)[benchmark.CENTROID].value)
    model.save_pretrained(folder)
    return DemoBuildResult(scores(model, data.test()), training.to_json())

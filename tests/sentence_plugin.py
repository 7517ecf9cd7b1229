"""A third-party text-in, embedding-out capability, written as a plugin author would: module-level
`@hookimpl` functions, its teacher a user's local BERT-family sentence encoder (registered
through the CSV's `Path` column), its data a folder of JSONL sentences.

`tests/test_sentence_plugin.py` installs this file as the distribution `sentences-plugin` and
runs every stage on it. The data folder (`[capabilities.sentences] data_dir`) holds
`train.jsonl` and `test.jsonl`, one `{"text": ..., "label": ...}` per line.

Both benchmarks are reference-free (scored the same on teacher and student): leave-one-out
nearest-centroid accuracy, the headline, and nearest-neighbour accuracy, whose name sorts
first, so a headline taken in stored (sorted) order instead of the declared one shows.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nexus_kernel import Capability, hookimpl

CENTROID = "sentence centroid accuracy"
NEIGHBOUR = "nearest neighbour accuracy"

CAPABILITY = Capability(
    name="sentences", modality="text", categories=("Sentences",), benchmarks=(CENTROID, NEIGHBOUR),
    output="embedding", description="sentence embeddings, scored by how well they separate topics",
)

TOPICS = {
    "fruit": ("apple", "pear", "plum", "mango"),
    "tools": ("hammer", "saw", "drill", "wrench"),
    "weather": ("rain", "snow", "storm", "wind"),
    "music": ("violin", "drum", "flute", "piano"),
}


def make_sentences(count: int, seed: int) -> list[dict[str, str]]:
    """`count` labelled sentences, the topics in turn, each three distinct words of its topic
    in random order: the topics differ in vocabulary, so even a random encoder separates them
    (chance is 0.25), and a few hundred sentences cover most orders, so a tiny student trained
    for a few hundred steps keeps up with its teacher."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    rows = []
    for index in range(count):
        label = topics[index % len(topics)]
        rows.append({"text": " ".join(rng.sample(TOPICS[label], 3)), "label": label})
    return rows


# data ------------------------------------------------------------------------------------------


def _rows(datasets: Mapping[str, str], split: str) -> list[dict[str, Any]]:
    from nexus_kernel.kit.datasets import files_for_split, read_jsonl_rows

    folder = Path(datasets[split])
    return [row for path in files_for_split(folder, split, ".jsonl")
            for _, row in read_jsonl_rows(path, ("text", "label"))]


@hookimpl
def register_capabilities() -> list[Capability]:
    return [CAPABILITY]


@hookimpl
def resolve_datasets(capability: Capability, settings: Mapping[str, Any]) -> dict[str, str]:
    from nexus_kernel.errors import DatasetError
    from nexus_kernel.kit.datasets import resolve_source

    if not settings.get("data_dir"):
        raise DatasetError("sentences: set [capabilities.sentences] data_dir to a folder of train.jsonl and test.jsonl")
    source = resolve_source(settings, "unused")
    return {"train": source, "test": source}


# the teacher -----------------------------------------------------------------------------------


def _teacher_tokens(teacher: Any, texts: list[str]) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher.folder)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _mean_pooled(model: Any, batch: Mapping[str, Any]) -> Any:
    """The encoder's sentence embedding: its last hidden state averaged over real tokens."""
    from nexus_kernel.student.model import masked_mean

    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return masked_mean(hidden.float(), batch["attention_mask"])


def _teacher_embeddings(teacher: Any, texts: list[str], datasets: Mapping[str, str]) -> Any:
    """The teacher's sentence embeddings, centred on its mean embedding of the training
    sentences: what is distilled and scored. Mean-pooled encoder states share one large
    direction; without it, the cosine objective teaches what tells sentences apart."""
    import torch

    with torch.inference_mode():
        train = [row["text"] for row in _rows(datasets, "train")]
        centre = _mean_pooled(teacher.model, _teacher_tokens(teacher, train)).mean(dim=0)
        return _mean_pooled(teacher.model, _teacher_tokens(teacher, texts)) - centre


def _topic_loss(model: Any, batch: Mapping[str, Any]) -> Any:
    """Cross-entropy of each sentence against the batch's topic centroids (cosine / 0.1): low
    when the embeddings separate the topics, what ablating an important layer spoils."""
    import torch

    unit = torch.nn.functional.normalize(_mean_pooled(model, batch), dim=-1)
    labels = batch["labels"]
    present = sorted(set(labels.tolist()))
    centroids = torch.nn.functional.normalize(torch.stack([unit[labels == c].mean(dim=0) for c in present]), dim=-1)
    target = torch.tensor([present.index(int(label)) for label in labels])
    return torch.nn.functional.cross_entropy(unit @ centroids.T / 0.1, target)


@hookimpl
def profile_capability(capability: Capability, teacher: Any, n_probe: int, datasets: Mapping[str, str]) -> Any:
    import torch

    from nexus_kernel.algorithms.profiling import plan_from_items, repeated_blocks

    topics = sorted(TOPICS)

    def make_batch(chunk: list[dict[str, Any]]) -> dict[str, Any]:
        batch = _teacher_tokens(teacher, [row["text"] for row in chunk])
        return {**batch, "labels": torch.tensor([topics.index(row["label"]) for row in chunk])}

    return plan_from_items(lambda: iter(_rows(datasets, "train")), make_batch, _topic_loss,
                           repeated_blocks(teacher.model), n_probe, mask_of=lambda batch: batch["attention_mask"])


@hookimpl
def distill_capability(capability: Capability, teacher: Any, student: Any, datasets: Mapping[str, str]) -> Any:
    import torch

    from nexus_kernel.contracts import DistillPlan
    from nexus_kernel.student.decoding import left_padded
    from nexus_kernel.student.model import StudentBatch

    def items() -> Iterator[dict[str, Any]]:
        return iter(_rows(datasets, "train"))

    def teacher_batch(chunk: list[dict[str, Any]], _outputs: list[Any]) -> dict[str, Any]:
        return _teacher_tokens(teacher, [row["text"] for row in chunk])

    def teacher_forward(model: Any, batch: Mapping[str, Any]) -> Any:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def teacher_outputs(chunk: list[dict[str, Any]]) -> list[Any]:
        return list(_teacher_embeddings(teacher, [row["text"] for row in chunk], datasets))

    def student_batch(chunk: list[dict[str, Any]], outputs: list[Any]) -> StudentBatch:
        input_ids, mask = left_padded(student.tokenizer, [row["text"] for row in chunk])
        return StudentBatch(input_ids=input_ids, attention_mask=mask, target=torch.stack(outputs).float())

    return DistillPlan(items=items, teacher_batch=teacher_batch, teacher_forward=teacher_forward,
                       teacher_outputs=teacher_outputs, student_batch=student_batch, objective="cosine",
                       mask_of=lambda batch: batch["attention_mask"])


# scoring ---------------------------------------------------------------------------------------


def embeddings(model: Any, texts: list[str], datasets: Mapping[str, str]) -> Any:
    """Sentence embeddings `(n, dim)` as numpy: a `StudentCapability` through the kernel's
    `embed_texts`, a loaded teacher as `_teacher_embeddings`."""
    from nexus_kernel.student.decoding import embed_texts
    from nexus_kernel.student.model import StudentCapability

    if isinstance(model, StudentCapability):
        return embed_texts(model.student, model.capability, texts).numpy()
    return _teacher_embeddings(model, texts, datasets).numpy()


def neighbour_score(found: Any, labels: list[str]) -> Any:
    """Leave-one-out nearest-neighbour accuracy (cosine) of the embeddings against `labels`."""
    import numpy as np
    from nexus_cap_voice.benchmark import unit_rows

    from nexus_kernel import Score

    unit = unit_rows(found.astype(np.float64))
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    correct = [float(labels[int(other)] == own) for own, other in zip(labels, nearest, strict=True)]
    return Score.from_items(NEIGHBOUR, correct, 1 / len(set(labels)))


@hookimpl
def retention_metric(capability: Capability, model: Any, split: str, datasets: Mapping[str, str],
                     limit: int | None) -> dict[str, Any]:
    from nexus_cap_voice.benchmark import centroid_score

    rows = _rows(datasets, split)[:limit]
    found = embeddings(model, [row["text"] for row in rows], datasets)
    labels = [row["label"] for row in rows]
    # The voice plugin's nearest-centroid scorer is generic; only its benchmark name is the voice one.
    return {CENTROID: dataclasses.replace(centroid_score(found, labels), benchmark=CENTROID),
            NEIGHBOUR: neighbour_score(found, labels)}

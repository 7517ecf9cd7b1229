"""Nexus capability plugin `voice`: spoken-word audio embeddings, scored by cosine similarity to the teacher."""

from __future__ import annotations

from nexus_kernel import Capability, hookimpl

CAPABILITY = Capability(
    name="voice",
    modality="audio",
    categories=("Voice",),
    benchmarks=("voice cosine",),
    description="spoken-word audio embeddings, scored by cosine similarity to the teacher",
)


@hookimpl
def register_capabilities() -> list[Capability]:
    return [CAPABILITY]

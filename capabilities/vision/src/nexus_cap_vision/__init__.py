"""Nexus capability plugin `vision`: question answering about images, scored by accuracy."""

from __future__ import annotations

from nexus_kernel import Capability, hookimpl

CAPABILITY = Capability(
    name="vision",
    modality="image",
    categories=("Vision",),
    benchmarks=("vision QA",),
    description="question answering about images, scored by accuracy",
)


@hookimpl
def register_capabilities() -> list[Capability]:
    return [CAPABILITY]

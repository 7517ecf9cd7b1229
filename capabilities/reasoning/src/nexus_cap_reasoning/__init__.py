"""Nexus capability plugin `reasoning`: multiple-choice reasoning distilled from a language-model teacher, scored like MMLU."""

from __future__ import annotations

from nexus_kernel import Capability, hookimpl

CAPABILITY = Capability(
    name="reasoning",
    modality="text",
    categories=("Reasoning",),
    benchmarks=("MMLU",),
    description="multiple-choice reasoning distilled from a language-model teacher, scored like MMLU",
)


@hookimpl
def register_capabilities() -> list[Capability]:
    return [CAPABILITY]

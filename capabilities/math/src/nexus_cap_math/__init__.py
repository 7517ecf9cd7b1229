"""Nexus capability plugin `math`: grade-school arithmetic word problems, scored like GSM8K."""

from __future__ import annotations

from nexus_kernel import Capability, hookimpl

CAPABILITY = Capability(
    name="math",
    modality="text",
    categories=("Math",),
    benchmarks=("GSM8K",),
    description="grade-school arithmetic word problems, scored like GSM8K",
)


@hookimpl
def register_capabilities() -> list[Capability]:
    return [CAPABILITY]

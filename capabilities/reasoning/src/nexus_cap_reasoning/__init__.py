"""Nexus capability plugin `reasoning`: multiple-choice reasoning distilled from a language-model teacher, scored like MMLU.

Modules: `student` (distillation plan and scoring), `data` (MMLU CSV folders and the synthetic one-step questions), `benchmark` (the MMLU scorer: log-likelihood of ` A`..` D` with k-shot prompts), `teacher` (the demo teacher).
Only the declaration lives here; torch and transformers are imported inside the hooks.
"""

from __future__ import annotations

from nexus_kernel import Capability, CapabilityPlugin

CAPABILITY = Capability(
    name="reasoning",
    modality="text",
    categories=("Reasoning",),
    benchmarks=("MMLU",),
    description="multiple-choice reasoning distilled from a language-model teacher, scored like MMLU",
)

plugin = CapabilityPlugin(CAPABILITY, teacher="nexus_cap_reasoning.teacher", student="nexus_cap_reasoning.student",
                          synthetic="mmlu-steps-v1")
"""The object the `nexus` entry point names; its methods are the hooks."""

"""Nexus capability plugin `reasoning`: multiple-choice reasoning distilled from a language-model teacher, scored like MMLU.

Modules: `student` (distillation plan and scoring), `data` (MMLU CSV folders and the synthetic one-step questions), `benchmark` (the MMLU scorer: log-likelihood of ` A`..` D` with k-shot prompts), `teacher` (the demo teacher).
Only the declaration lives here; torch and transformers are imported inside the hooks.
"""

from __future__ import annotations

from nexus_kernel import Capability
from nexus_kernel.kit.plugin_kit import standard_hooks

CAPABILITY = Capability(
    name="reasoning",
    modality="text",
    categories=("Reasoning",),
    benchmarks=("MMLU",),
    description="multiple-choice reasoning distilled from a language-model teacher, scored like MMLU",
)

(register_capabilities, resolve_datasets, demo_teacher, profile_capability, build_adapter,
 distill_capability, retention_metric, package_assets, answer) = standard_hooks(
    CAPABILITY, synthetic="mmlu-steps-v1", teacher="nexus_cap_reasoning.teacher", student="nexus_cap_reasoning.student",
)

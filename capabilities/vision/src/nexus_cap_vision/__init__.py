"""Nexus capability plugin `vision`: question answering about images, scored by accuracy.

Modules: `student` (distillation plan and scoring), `data` (image folders with question JSONL and the numpy scene painter), `benchmark` (exact-match VQA accuracy), `teacher` (the demo teacher).
Only the declaration lives here; torch and transformers are imported inside the hooks.
"""

from __future__ import annotations

from nexus_kernel import Capability
from nexus_kernel.kit.plugin_kit import standard_hooks

CAPABILITY = Capability(
    name="vision",
    modality="image",
    categories=("Vision",),
    benchmarks=("vision QA",),
    description="question answering about images, scored by accuracy",
)

(register_capabilities, resolve_datasets, demo_teacher, profile_capability, build_adapter,
 distill_capability, retention_metric, package_assets, answer) = standard_hooks(
    CAPABILITY, synthetic="shapes-qa-v1", teacher="nexus_cap_vision.teacher", student="nexus_cap_vision.student",
)

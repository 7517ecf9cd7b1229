"""Nexus capability plugin `vision`: question answering about images, scored by accuracy.

Modules: `student` (distillation plan and scoring), `data` (image folders with question JSONL and the numpy scene painter), `benchmark` (exact-match VQA accuracy), `teacher` (the demo teacher).
Only the declaration lives here; torch and transformers are imported inside the hooks.
"""

from __future__ import annotations

from nexus_kernel import Capability, CapabilityPlugin

CAPABILITY = Capability(
    name="vision",
    modality="image",
    categories=("Vision",),
    benchmarks=("vision QA",),
    description="question answering about images, scored by accuracy",
)

plugin = CapabilityPlugin(CAPABILITY, teacher="nexus_cap_vision.teacher", student="nexus_cap_vision.student",
                          synthetic="shapes-qa-v1")
"""The object the `nexus` entry point names; its methods are the hooks."""

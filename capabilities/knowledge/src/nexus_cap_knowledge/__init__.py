"""Nexus capability plugin `knowledge`: short factual questions as four-way multiple choice, scored by the log-likelihood of each option.

Modules: `student` (distillation plan, scoring, `nexus infer`), `data` (MMLU CSV folders and the synthetic questions about the built-in facts, split by fact), `facts` (the built-in facts), `benchmark` (the scorer: log-likelihood of each option's text after `Question: ...\\nAnswer:`), `teacher` (no demo teacher: a teacher that has not read about the world cannot know held-out facts, so users bring a pretrained causal LM).
Only the declaration lives here; torch and transformers are imported inside the hooks.
"""

from __future__ import annotations

from nexus_kernel import Capability, CapabilityPlugin

CAPABILITY = Capability(
    name="knowledge",
    modality="text",
    categories=("Knowledge",),
    benchmarks=("Knowledge",),
    description="short factual questions as four-way multiple choice, scored by the log-likelihood of each option",
)

plugin = CapabilityPlugin(CAPABILITY, teacher="nexus_cap_knowledge.teacher", student="nexus_cap_knowledge.student",
                          synthetic="facts-v1")
"""The object the `nexus` entry point names; its methods are the hooks."""

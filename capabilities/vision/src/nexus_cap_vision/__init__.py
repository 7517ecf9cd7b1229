"""Nexus capability plugin `vision`: question answering about images (an image-to-text teacher,
scored by accuracy) or image embeddings (an image-encoder teacher: ViT, DINOv2, CLIP, SigLIP,
scored by centroid accuracy and cosine to the teacher).

Modules: `student` (distillation plan and scoring), `data` (question JSONL and image-folder
layouts, the numpy scene painter), `digits` (scikit-learn's digits as an image folder),
`images` (the image-encoder teachers), `benchmark` (VQA accuracy; the embedding scores' names),
`teacher` (the demo teacher, each teacher's kind, stage 2's probe).
Only the declaration lives here; torch and transformers are imported inside the hooks.
"""

from __future__ import annotations

from dataclasses import replace

from nexus_kernel import Capability, CapabilityPlugin

CAPABILITY = Capability(
    name="vision",
    modality="image",
    categories=("Vision",),
    benchmarks=("vision QA",),
    description="question answering about images (VQA accuracy), or image embeddings of an image encoder "
                "(centroid accuracy, cosine)",
)

EMBEDDING = replace(CAPABILITY, output="embedding", benchmarks=("vision centroid accuracy", "vision cosine"))
"""The capability as distilled from an image encoder (`teacher.capability_for`)."""

plugin = CapabilityPlugin(CAPABILITY, teacher="nexus_cap_vision.teacher", student="nexus_cap_vision.student",
                          synthetic="shapes-qa-v1")
"""The object the `nexus` entry point names; its methods are the hooks."""

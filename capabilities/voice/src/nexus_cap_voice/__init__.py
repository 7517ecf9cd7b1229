"""Nexus capability plugin `voice`: spoken-word audio embeddings, scored by cosine similarity to the teacher.

Modules: `student` (distillation plan and scoring), `data` (spoken-digit WAV folders and the numpy speech synthesizer; `features`: log-mel), `benchmark` (cosine to the teacher and nearest-centroid accuracy), `teacher` (the demo teacher).
Only the declaration lives here; torch and transformers are imported inside the hooks.
"""

from __future__ import annotations

from nexus_kernel import Capability, CapabilityPlugin

CAPABILITY = Capability(
    name="voice",
    modality="audio",
    categories=("Voice",),
    benchmarks=("voice centroid accuracy", "voice cosine"),
    output="embedding",
    # Its anchors are sequence means (the teacher's audio patches do not line up with the
    # student's frames) and its cosine loss is small in scale: a light anchor weight.
    alpha_scale=0.01,
    description="spoken-word audio embeddings, scored by cosine similarity to the teacher",
)

plugin = CapabilityPlugin(CAPABILITY, teacher="nexus_cap_voice.teacher", student="nexus_cap_voice.student",
                          synthetic="spoken-digits-v1")
"""The object the `nexus` entry point names; its methods are the hooks."""

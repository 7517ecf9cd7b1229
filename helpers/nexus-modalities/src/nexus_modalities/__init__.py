"""Domain helpers capability plugins share, kept out of the kernel.

- `training`: the demo teachers' training loop (`TrainingPlan`, `fit`, `TrainingRecord`).
- `text_model`: `CausalTextModel` and `text_model_of`, what text benchmarks score.
- `text_teacher`: building and profiling a causal-LM text teacher (`train_causal_teacher`,
  `text_probe_plan`).
- `text_distill`: the whole `DistillPlan` of a text capability (`text_distill_plan`: `kl` where
  the vocabularies allow, `sequence` or, asked, `uld` where the tokenizers differ).
- `multiple_choice`: four-way questions in the MMLU CSV format, their prompts (letters or
  cloze) and accuracy by log-likelihood (the reasoning and knowledge plugins).
- `image_patches`: `PatchProjector`, images into the student's hidden size.
- `audio_frames`: `FrameProjector`, audio features into the student's hidden size.
- `embedding_scores`: nearest-centroid accuracy and cosine to the teacher, for embedding outputs.
- `embedding_capability`: what embedding capabilities share: the cosine probe for a teacher
  without a task head, scores with the teacher's reference, packaged centroids, the nearest one.

The dependency points one way: plugins import this package, this package imports the kernel,
the kernel never imports it. Importing the package, `training`, `text_*` or `multiple_choice` never
imports torch.
"""

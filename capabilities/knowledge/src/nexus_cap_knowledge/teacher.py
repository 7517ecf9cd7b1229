"""Knowledge teachers: no demo teacher, and the probe plan for the user's causal LM.

A teacher Nexus could train here would have read only the training facts, so it could not
know a held-out one (it would sit at chance, and retention would be "not measurable"); a
knowledge teacher must have read about the world. Users register a pretrained causal LM
(`configs/smollm2-knowledge.csv` names SmolLM2-135M-Instruct) through the CSV's `Path` column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus_cap_knowledge.benchmark import choice_of
from nexus_cap_knowledge.data import SyntheticRecipe, load_split
from nexus_kernel.contracts import DemoTeacher, ProbePlan


def demo() -> DemoTeacher | None:
    return None


def probe_plan(teacher: Any, n_probe: int, datasets: Mapping[str, str]) -> ProbePlan:
    """Probe and profile the teacher on the training facts' questions, or the `dev` split of a
    real MMLU folder, each with its four options: the loss is the gold option's cross-entropy
    among them (`choice_loss`), so layers rank by what the teacher's answers lose. Measured on
    SmolLM2-135M-Instruct (238 held-out questions, teacher 0.790): a 28-block cut by this
    ranking scores 0.786 untrained, by the gold completion's loss 0.697."""
    from nexus_modalities.text_teacher import text_choice_probe_plan

    return text_choice_probe_plan(teacher, n_probe, datasets["train"], "dev", lambda: SyntheticRecipe().train(),
                                  load_split, choice_of)

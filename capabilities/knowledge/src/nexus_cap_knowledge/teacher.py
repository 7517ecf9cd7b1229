"""Knowledge teachers: no demo teacher, and the probe plan for the user's causal LM.

A teacher Nexus could train here would have read only the training facts, so it could not
know a held-out one (it would sit at chance, and retention would be "not measurable"); a
knowledge teacher must have read about the world. Users register a pretrained causal LM
(`configs/smollm2-knowledge.csv` names SmolLM2-135M-Instruct) through the CSV's `Path` column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus_cap_knowledge.benchmark import pair_of
from nexus_cap_knowledge.data import SyntheticRecipe, load_split
from nexus_kernel.contracts import DemoTeacher, ProbePlan


def demo() -> DemoTeacher | None:
    return None


def probe_plan(teacher: Any, n_probe: int, datasets: Mapping[str, str]) -> ProbePlan:
    """Probe and profile the teacher on the training facts' questions with their right answers,
    or the `dev` split of a real MMLU folder."""
    from nexus_modalities.text_teacher import text_probe_plan

    return text_probe_plan(teacher, n_probe, datasets["train"], "dev", lambda: SyntheticRecipe().train(),
                           load_split, pair_of)

"""Knowledge data and scoring: the built-in facts, the split by fact, the cloze scorer, the
teacher's choice in distillation, real MMLU files."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from nexus_cap_knowledge import benchmark, student
from nexus_cap_knowledge.data import Fact, SyntheticRecipe, facts_of, load_split, write_csv
from nexus_cap_knowledge.facts import ALL_RELATIONS, MEASURED, PLURALS, RELATIONS

from nexus_kernel.errors import NexusError
from nexus_kernel.kit.testing import shared_data
from nexus_modalities.multiple_choice import LETTERS, Question

SYNTHETIC = {"train": "synthetic:facts-v1", "test": "synthetic:facts-v1"}


class OptionModel:
    """Log-likelihood 0 for the continuation `pick(prompt, continuation)` approves, -5 else."""

    def __init__(self, pick) -> None:
        self.pick = pick
        self.requests: list[tuple[str, str]] = []

    def loglikelihoods(self, requests: list[tuple[str, str]]) -> list[float]:
        self.requests += requests
        return [0.0 if self.pick(prompt, continuation) else -5.0 for prompt, continuation in requests]


def _gold_of(questions: list[Question]) -> dict[tuple[str, str], bool]:
    return {(benchmark.prompt_of(q), f" {choice}"): index == q.gold
            for q in questions for index, choice in enumerate(q.choices)}


def test_every_relation_has_enough_distinct_facts_and_wrong_options() -> None:
    for relation in ALL_RELATIONS:
        subjects = [subject for subject, _ in relation.facts]
        assert len(subjects) == len(set(subjects)) >= 40, relation.name
        assert relation.name in MEASURED
        for subject, answer in relation.facts:
            wrong = (relation.wrong_forms(subject, answer) if relation.wrong_forms
                     else [a for a in relation.answers() if a != answer])
            assert len(wrong) >= 3 and answer not in wrong, (relation.name, subject, wrong)
    assert set(RELATIONS) < set(ALL_RELATIONS)


def test_plural_distractors_are_forms_of_the_same_word() -> None:
    assert PLURALS.wrong_forms is not None
    assert PLURALS.wrong_forms("mouse", "mice")[:3] == ["mouses", "mousees", "mouseen"]
    assert "i" not in PLURALS.wrong_forms("ox", "oxen")  # no stub shorter than three letters


def test_held_out_questions_are_about_facts_never_trained_on() -> None:
    recipe = SyntheticRecipe()
    test = recipe.test()
    assert recipe.test() == test and len(test) >= 200
    held_out = {q.question for q in test}
    trained = {Fact(f.relation, f.subject, f.answer).key for f in recipe.train_facts()}
    assert len(held_out) == len(test)  # one question per fact
    assert held_out.isdisjoint(f.relation.question(f.subject) for f in recipe.train_facts())
    assert {f.key for f in facts_of(RELATIONS)} == trained | {
        f.key for f in facts_of(RELATIONS) if f.relation.question(f.subject) in held_out}
    stream = list(itertools.islice(recipe.train(), 3 * len(trained)))
    assert not any(q.question in held_out for q in stream)
    assert {q.question for q in stream} == {f.relation.question(f.subject) for f in recipe.train_facts()}
    assert len({q.choices for q in stream}) > len(trained)  # fresh options on every pass
    # the split follows the fact alone: another share moves facts only one way
    wider = {q.question for q in SyntheticRecipe(test_share=0.8).test()}
    assert held_out < wider


def test_questions_have_four_distinct_options_and_balanced_gold_letters() -> None:
    test = SyntheticRecipe().test()
    for question in [*test, *itertools.islice(SyntheticRecipe().train(), 500)]:
        assert len(set(question.choices)) == 4, question
        relation = next(r for r in RELATIONS if r.name.replace(" ", "_") == question.subject)
        assert (question.question, question.choices[question.gold]) in {
            (relation.question(s), a) for s, a in relation.facts}
    counts = [sum(q.answer == letter for q in test) for letter in LETTERS]
    assert max(counts) - min(counts) <= 1
    assert benchmark.evaluate(OptionModel(lambda p, c: True), test)[benchmark.NAME].chance == max(counts) / len(test)
    assert max(counts) / len(test) < 0.26


def test_the_scorer_asks_each_option_after_the_cloze_prompt() -> None:
    question = Question("capital", "What is the capital of Kenya?", ("Lagos", "Nairobi", "Cairo", "Accra"), "B")
    model = OptionModel(lambda prompt, continuation: continuation == " Nairobi")
    scores = benchmark.evaluate(model, [question])
    assert model.requests == [("Question: What is the capital of Kenya?\nAnswer:", f" {city}")
                              for city in ("Lagos", "Nairobi", "Cairo", "Accra")]
    assert (scores[benchmark.NAME].value, scores[benchmark.NAME].n) == (1.0, 1)
    test = SyntheticRecipe().test()
    gold = _gold_of(test)
    assert benchmark.evaluate(OptionModel(lambda p, c: gold[(p, c)]), test)[benchmark.NAME].value == 1.0
    assert benchmark.evaluate(OptionModel(lambda p, c: not gold[(p, c)]), test)[benchmark.NAME].value == 0.0


def test_the_teacher_writes_the_option_it_ranks_highest() -> None:
    """What distillation trains on: each question's most likely option, as the completion."""
    questions = list(itertools.islice(SyntheticRecipe().train(), 12))
    plan = student.distill_plan(None, None, SYNTHETIC)
    assert list(itertools.islice(plan.items(), 12)) == questions
    last = {q.question: q.choices[-1] for q in questions}
    prefer_last = OptionModel(lambda prompt, continuation: continuation == f" {last[prompt[10:-8]]}")
    assert student._choose(prefer_last, questions) == [f" {q.choices[3]}" for q in questions]
    assert benchmark.pair_of(questions[0]) == (benchmark.prompt_of(questions[0]),
                                               f" {questions[0].choices[questions[0].gold]}")


def test_an_mmlu_folder_of_the_facts_scores_like_the_synthetic_split(tmp_path: Path) -> None:
    test = SyntheticRecipe().test()
    for subject in sorted({q.subject for q in test}):
        write_csv(tmp_path / "test" / f"{subject}_test.csv", [q for q in test if q.subject == subject])
    write_csv(tmp_path / "dev" / "capital_dev.csv", test[:2])
    assert sorted(load_split(tmp_path, "test"), key=test.index) == test
    gold = _gold_of(test)
    folder = {"train": str(tmp_path), "test": str(tmp_path)}
    assert [q.row() for q in student._items(folder, "train")] == [q.row() for q in test[:2]]  # dev: no train split
    fake = OptionModel(lambda p, c: gold[(p, c)])
    scores = benchmark.evaluate(fake, list(student._items(folder, "test")))[benchmark.NAME]
    assert (scores.value, scores.n) == (1.0, len(test))


def test_real_mmlu_samples_score_as_cloze() -> None:
    folder = shared_data("mmlu", __file__)
    questions = load_split(folder, "test")
    gold = _gold_of(questions)
    model = OptionModel(lambda p, c: gold.get((p, c), False))
    score = benchmark.evaluate(model, questions)[benchmark.NAME]
    assert score.n == len(questions) and score.value > 0.9  # a few items repeat an option's text
    assert all(prompt.startswith("Question: ") and prompt.endswith("\nAnswer:") for prompt, _ in model.requests)


@pytest.mark.parametrize("inputs", [[], ["What is the capital of Kenya?", "Lagos", "Nairobi"],
                                    ["What is the capital of Kenya?", "Lagos", "", "Cairo", "Accra"]])
def test_answer_names_a_bad_input(inputs: list[str]) -> None:
    with pytest.raises(NexusError, match="knowledge: give the question and its 4 options"):
        student.answer(object(), inputs, {})


def test_the_interval_is_wilsons() -> None:
    from nexus_kernel import Score

    low, high = benchmark.interval(Score.from_items("k", [1.0] * 188 + [0.0] * 50, 0.25))
    assert (round(low, 3), round(high, 3)) == (0.734, 0.837)
    assert benchmark.interval(Score.from_items("k", [1.0] * 40, 0.25)) == pytest.approx((0.912, 1.0), abs=5e-4)

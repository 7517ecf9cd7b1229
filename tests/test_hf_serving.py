"""The demo bundle served without Nexus: `nexus export --format hf`, then
`examples/hf_serving.py` (the README's recipe) in a process that imports transformers, PEFT and
torch only, answering what `nexus infer` answers: 20 math problems and 20 reasoning questions,
and 20 pictures and 20 recordings through the exported projectors, head and centroids; and
scoring continuations (lm-evaluation-harness' `loglikelihood`) as the bundle scores them."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from kernel_helpers import REPO, nexus, require_plugins
from safetensors.torch import save_file

from nexus_kernel.kit.testing import plugin_set_of
from nexus_kernel.student.packaging import Bundle, load_bundle

pytestmark = pytest.mark.slow

COUNT = 20


@pytest.fixture(scope="module")
def exported(finished_tiny_run: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Bundle]:
    """The tiny run's bundle exported by the CLI, and the bundle as `nexus infer` loads it."""
    found = require_plugins("nexus_cap_math", "nexus_cap_reasoning", "nexus_cap_vision", "nexus_cap_voice",
                            "nexus_quant_bnb")  # a skip, with its reason, before anything is asserted
    project, result = finished_tiny_run
    assert result.returncode == 0, result.stderr
    bundle = project / "bundles/nexus_bundle_v1"
    out = tmp_path_factory.mktemp("hf") / "demo"
    exporting = nexus("export", str(bundle), "--format", "hf", str(out), cwd=project)
    assert exporting.returncode == 0, exporting.stderr
    assert f"exported to {out}" in exporting.stdout and "backbone bitsandbytes int8" in exporting.stdout
    capabilities = ("math", "reasoning", "vision", "voice")
    plugins = plugin_set_of(*[(name, found[f"nexus_cap_{name}"].plugin) for name in capabilities],
                            ("quant-bnb", found["nexus_quant_bnb"]))
    return out, load_bundle(bundle, plugins)


def _serve(out: Path, requests: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`examples/hf_serving.py` on `requests` in a fresh interpreter; asserts Nexus stayed out."""
    path = folder / "requests.json"
    path.write_text(json.dumps(requests))
    served = subprocess.run([sys.executable, str(REPO / "examples/hf_serving.py"), str(out), str(path)],
                            capture_output=True, text=True, timeout=900, check=False)
    assert served.returncode == 0, served.stderr
    answers = json.loads(served.stdout.splitlines()[-1])
    assert answers.pop("modules") == []  # no nexus_* module was imported to answer
    return answers


def _assert_same_scores(served: list[list[float]], ours: list[float]) -> None:
    """The served log-likelihoods (one list per item) are `ours` (flat, in order), within 1e-4
    (8e-6 apart at most on the CPU this was written on; 4.0 apart when the math scores are
    served through the reasoning adapter), and they differ by item by more than that (the
    tiny student is not blind to its input), so the comparison can fail."""
    flat = [score for scores in served for score in scores]
    assert flat == pytest.approx(ours, rel=1e-5, abs=1e-4)
    width = len(served[0])
    by_item = {tuple(round(score, 3) for score in ours[start : start + width]) for start in range(0, len(ours), width)}
    assert len(by_item) > len(served) // 2


def _own_and_next(answers: list[str]) -> list[list[str]]:
    """Per item, its own answer and the next item's (the last wraps to the first), each after a
    space as the model writes it: two continuations to score after the item's prompt."""
    return [[f" {answer}", f" {answers[(index + 1) % len(answers)]}"] for index, answer in enumerate(answers)]


def _cli_answer(out_project: Path, bundle: Bundle, capability: str, inputs: list[str]) -> str:
    answered = nexus("infer", str(bundle.folder), "--capability", capability, *inputs, cwd=out_project)
    assert answered.returncode == 0, answered.stderr
    return answered.stdout.strip()


def test_math_and_reasoning_answer_through_transformers_and_peft_as_nexus_infer(
        exported: tuple[Path, Bundle], tmp_path: Path) -> None:
    from nexus_cap_math import benchmark as math_benchmark
    from nexus_cap_math.data import Problem
    from nexus_cap_math.data import SyntheticRecipe as Problems
    from nexus_cap_reasoning import benchmark as reasoning_benchmark
    from nexus_cap_reasoning.data import SyntheticRecipe as Questions
    from nexus_modalities.text_model import text_model_of

    out, bundle = exported
    problems = Problems().test()[:COUNT]
    questions = Questions().test()[:COUNT]
    assert len(problems) == len(questions) == COUNT
    math_prompts = [math_benchmark.prompt_of(Problem(question=p.question, answer="")) for p in problems]
    reasoning_prompts = [reasoning_benchmark.prompt_of(q) for q in questions]
    # The session's tiny student (twelve training steps) may give one answer to every prompt
    # (here: twenty empty ones, and C to every question), which a served adapter other than ours
    # could match; the log-likelihoods of each problem's worked answer and the next problem's, and
    # of each option, differ by prompt whatever the student writes.
    continuations = _own_and_next([problem.answer for problem in problems])
    options = list(reasoning_benchmark.CONTINUATIONS)
    requests = {
        "math": {"kind": "generate", "max_new_tokens": math_benchmark.MAX_ANSWER_TOKENS, "items": math_prompts},
        "math-scores": {"capability": "math", "kind": "loglikelihood",
                        "items": [{"prompt": prompt, "continuations": pair}
                                  for prompt, pair in zip(math_prompts, continuations, strict=True)]},
        "reasoning": {"kind": "choose",
                      "items": [{"prompt": prompt, "options": options} for prompt in reasoning_prompts]},
        "reasoning-scores": {"capability": "reasoning", "kind": "loglikelihood",
                             "items": [{"prompt": prompt, "continuations": options} for prompt in reasoning_prompts]}}
    served = _serve(out, requests, tmp_path)
    ours_math = [bundle.answer("math", [p.question]) for p in problems]
    ours_reasoning = [bundle.answer("reasoning", [q.question, *q.choices]) for q in questions]
    assert served["math"] == ours_math
    assert [option.strip() for option in served["reasoning"]] == [answer.split(")")[0] for answer in ours_reasoning]
    _assert_same_scores(served["math-scores"], text_model_of(bundle.model("math")).loglikelihoods(
        [(prompt, continuation) for prompt, pair in zip(math_prompts, continuations, strict=True)
         for continuation in pair]))
    _assert_same_scores(served["reasoning-scores"], text_model_of(bundle.model("reasoning")).loglikelihoods(
        [(prompt, option) for prompt in reasoning_prompts for option in options]))
    # `Bundle.answer` is what `nexus infer` prints.
    assert _cli_answer(tmp_path, bundle, "math", [problems[0].question]) == ours_math[0]


def test_vision_and_voice_answer_through_the_documented_recipe_as_nexus_infer(
        exported: tuple[Path, Bundle], tmp_path: Path) -> None:
    from nexus_cap_vision import benchmark as vision_benchmark
    from nexus_cap_vision.data import SyntheticRecipe as Pictures
    from nexus_cap_vision.data import VisualQuestion, read_image
    from nexus_cap_vision.teacher import pixels
    from nexus_cap_voice.data import SyntheticRecipe as Words
    from nexus_cap_voice.data import read_audio, wav_bytes
    from nexus_cap_voice.student import FEATURES
    from PIL import Image

    from nexus_kernel.student.decoding import continuation_logprobs

    out, bundle = exported
    assert json.loads((out / "adapters/vision/parts.json").read_text())["output"] == "text"
    assert json.loads((out / "adapters/voice/parts.json").read_text())["output"] == "embedding"
    pictures, words = Pictures().test()[:COUNT], Words().test()[:COUNT]
    picture_paths, word_paths = [], []
    for index, (picture, word) in enumerate(zip(pictures, words, strict=True)):
        picture_paths.append(tmp_path / f"picture{index}.png")
        Image.fromarray(picture.image).save(picture_paths[-1])
        word_paths.append(tmp_path / f"word{index}.wav")
        word_paths[-1].write_bytes(wav_bytes(word.samples))
    # The plugins' input features (what their projectors read), as `nexus infer` computes them.
    picture_pixels = [pixels([read_image(path)]) for path in picture_paths]
    save_file({str(i): features for i, features in enumerate(picture_pixels)}, tmp_path / "pixels.st")
    with torch.inference_mode():
        save_file({str(i): FEATURES([read_audio(path)]) for i, path in enumerate(word_paths)}, tmp_path / "mels.st")
    prompts = [vision_benchmark.prompt_of(VisualQuestion(image=p.image, question=p.question, answer=""))
               for p in pictures]
    # As for math: each picture's answer and the next picture's, scored after its image and question.
    continuations = _own_and_next([picture.answer for picture in pictures])
    requests = {"vision": {"kind": "generate_after", "max_new_tokens": vision_benchmark.MAX_ANSWER_TOKENS,
                           "prefixes": str(tmp_path / "pixels.st"), "items": prompts},
                "vision-scores": {"capability": "vision", "kind": "loglikelihood",
                                  "prefixes": str(tmp_path / "pixels.st"),
                                  "items": [{"prompt": prompt, "continuations": pair}
                                            for prompt, pair in zip(prompts, continuations, strict=True)]},
                "voice": {"kind": "embed", "prefixes": str(tmp_path / "mels.st"), "items": [None] * COUNT}}
    served = _serve(out, requests, tmp_path)
    ours_vision = [bundle.answer("vision", [str(path), picture.question])
                   for path, picture in zip(picture_paths, pictures, strict=True)]
    ours_voice = [bundle.answer("voice", [str(path)]) for path in word_paths]
    assert served["vision"] == ours_vision
    vision = bundle.model("vision")
    ours_scores: list[float] = []
    for features, prompt, pair in zip(picture_pixels, prompts, continuations, strict=True):
        logits_of = functools.partial(vision.student.text_logits, vision.capability,
                                      prefix=features.expand(len(pair), -1, -1, -1))
        ours_scores += continuation_logprobs(logits_of, vision.student.tokenizer,
                                             [(prompt, continuation) for continuation in pair])
    _assert_same_scores(served["vision-scores"], ours_scores)
    assert served["voice"] == ours_voice
    assert len(set(ours_voice)) > 1  # labels and cosines differ by recording: the comparison can fail
    assert _cli_answer(tmp_path, bundle, "voice", [str(word_paths[0])]) == ours_voice[0]

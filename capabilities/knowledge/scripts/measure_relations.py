"""Zero-shot accuracy of a causal LM on every built-in relation (both splits), to choose which
relations the synthetic task keeps: `python scripts/measure_relations.py MODEL_FOLDER [--json OUT]`.

Each fact is asked once (the held-out split's wrong options and balanced gold letters), scored
as the plugin scores: the option whose text has the highest log-likelihood after
`Question: ...\\nAnswer:`. Prints per relation: n, accuracy, its 95 % Wilson interval, chance.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


def main() -> int:
    import torch
    from nexus_cap_knowledge.benchmark import interval
    from nexus_cap_knowledge.data import facts_of, question_about
    from nexus_cap_knowledge.facts import ALL_RELATIONS
    from nexus_modalities.multiple_choice import accuracy, cloze_requests
    from nexus_modalities.text_model import CausalTextModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CausalTextModel(AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32),
                            AutoTokenizer.from_pretrained(args.folder), batch_size=32)
    results = {}
    for relation in ALL_RELATIONS:
        started = time.perf_counter()
        facts = facts_of([relation])
        questions = [question_about(fact, random.Random(f"1234:test:{fact.key}"), index % 4)
                     for index, fact in enumerate(facts)]
        requests = cloze_requests(questions)
        likelihoods = model.loglikelihoods(requests)
        raw = accuracy(relation.name, questions, likelihoods)
        normalised = accuracy(relation.name, questions,
                              [value / len(continuation) for value, (_, continuation) in zip(likelihoods, requests)])
        low, high = interval(raw)
        results[relation.name] = {"n": raw.n, "accuracy": raw.value, "interval": [low, high], "chance": raw.chance,
                                  "accuracy_per_char": normalised.value, "seconds": time.perf_counter() - started}
        print(f"{relation.name:15s} n={raw.n:3d} acc={raw.value:.3f} [{low:.3f}, {high:.3f}] chance={raw.chance:.3f} "
              f"per-char={normalised.value:.3f} ({time.perf_counter() - started:.1f}s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

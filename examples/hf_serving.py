"""Serve an exported Nexus student with transformers + PEFT + torch alone (no Nexus import).

`nexus export BUNDLE --format hf OUT` writes `OUT/backbone/` (a transformers folder) and one
PEFT LoRA adapter per capability in `OUT/adapters/<name>/`. This file is the README's recipe
("Serving without Nexus"), and the test of the export runs it as it is:

    python examples/hf_serving.py OUT requests.json   # prints the answers as JSON

Text capabilities: `generate` (greedy, as `nexus infer` decodes), `loglikelihoods` (each
continuation's summed log-probability after a prompt, optionally after a projected prefix) and
`choose` (the most likely option, as multiple-choice capabilities answer). Image and audio
capabilities read a prefix through their projector (`parts.safetensors`): `prefix_embeds`
turns the plugin's input features into the backbone's input embeddings, `generate_after`
answers about them, and `embed` + `nearest_label` give an embedding capability's label.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def load(out: Path) -> tuple[Any, Any, dict[str, dict[str, torch.Tensor]]]:
    """The backbone with every exported adapter (named by capability), its tokenizer, and each
    capability's projector, head and assets (`parts.safetensors`; empty for text)."""
    tokenizer = AutoTokenizer.from_pretrained(out / "backbone")
    backbone = AutoModelForCausalLM.from_pretrained(out / "backbone", dtype=torch.float32)  # as the bundle computes
    names = sorted(path.name for path in (out / "adapters").iterdir())
    model = PeftModel.from_pretrained(backbone, out / "adapters" / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(out / "adapters" / name, adapter_name=name)
    parts = {name: load_file(out / "adapters" / name / "parts.safetensors") for name in names
             if (out / "adapters" / name / "parts.safetensors").is_file()}
    return model.eval(), tokenizer, parts


def prompt_ids(tokenizer: Any, prompt: str) -> torch.Tensor:
    """`(1, n)`: the BOS (else the EOS) and the prompt's tokens, as Nexus starts every sequence."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return torch.tensor([[start, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])


def generate(model: Any, tokenizer: Any, capability: str, prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of `prompt` by `capability`'s adapter, up to the EOS."""
    model.set_adapter(capability)
    ids = prompt_ids(tokenizer, prompt)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return str(tokenizer.decode(new))


def loglikelihoods(model: Any, tokenizer: Any, capability: str, prompt: str, continuations: list[str],
                   projected: torch.Tensor | None = None) -> list[float]:
    """The summed log-probability of each continuation's tokens after `prompt` (one right-padded
    batch, as lm-evaluation-harness' `loglikelihood` requests); after an image's or recording's
    projected tokens `(1, tokens, hidden)` (`prefix_embeds`) when given."""
    model.set_adapter(capability)
    start = prompt_ids(tokenizer, prompt)[0].tolist()
    rows = [start + tokenizer(continuation, add_special_tokens=False)["input_ids"] for continuation in continuations]
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(ids)
        offset = 0
        if projected is not None:
            offset = projected.shape[1]
            embeds = torch.cat([projected.expand(len(rows), -1, -1), embeds], dim=1)
            mask = torch.cat([torch.ones(len(rows), offset, dtype=mask.dtype), mask], dim=1)
        logits = model(inputs_embeds=embeds, attention_mask=mask,
                       position_ids=torch.arange(offset + width).expand(len(rows), -1)).logits[:, offset:]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [sum(float(logprobs[i, t - 1, row[t]]) for t in range(len(start), len(row))) for i, row in enumerate(rows)]


def choose(model: Any, tokenizer: Any, capability: str, prompt: str, options: list[str]) -> str:
    """The option whose tokens, after `prompt`, are most likely (`loglikelihoods`)."""
    totals = loglikelihoods(model, tokenizer, capability, prompt, options)
    return options[max(range(len(options)), key=totals.__getitem__)]


def prefix_embeds(parts: dict[str, torch.Tensor], meta: dict[str, Any], prefix: torch.Tensor) -> torch.Tensor:
    """`(batch, tokens, hidden)`: an image `(batch, C, H, W)` in square patches, or audio
    features `(batch, frames, features)` in stacks of frames, through the projector's linear
    map plus its learned position per token."""
    weight, bias, position = parts["projector.linear.weight"], parts["projector.linear.bias"], parts["projector.position"]
    projector = meta["projector"]
    if "patch" in projector:  # nexus_modalities.image_patches.PatchProjector
        tokens = torch.nn.functional.unfold(prefix, projector["patch"], stride=projector["patch"]).transpose(1, 2)
    else:  # nexus_modalities.audio_frames.FrameProjector
        batch, length, width = prefix.shape
        count = length // projector["stack"]
        tokens = prefix[:, : count * projector["stack"]].reshape(batch, count, width * projector["stack"])
    return torch.nn.functional.linear(tokens, weight, bias) + position[: tokens.shape[1]]


def _hidden(model: Any, embeds: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    positions = torch.arange(embeds.shape[1]).expand(embeds.shape[0], -1)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def generate_after(model: Any, tokenizer: Any, capability: str, parts: dict[str, torch.Tensor], meta: dict[str, Any],
                   prefix: torch.Tensor, prompt: str, max_new_tokens: int) -> str:
    """Greedy answer about one image or recording: its projected tokens, then `prompt`."""
    model.set_adapter(capability)
    ids = prompt_ids(tokenizer, prompt)[0].tolist()
    new: list[int] = []
    with torch.inference_mode():
        projected = prefix_embeds(parts, meta, prefix)
        for _ in range(max_new_tokens):
            text = model.get_input_embeddings()(torch.tensor([ids + new]))
            _, logits = _hidden(model, torch.cat([projected, text], dim=1))
            token = int(logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return str(tokenizer.decode(new))


def embed(model: Any, capability: str, parts: dict[str, torch.Tensor], meta: dict[str, Any],
          prefix: torch.Tensor) -> torch.Tensor:
    """`(batch, dim)`: the mean of the last hidden state over the prefix's tokens, then the head."""
    model.set_adapter(capability)
    with torch.inference_mode():
        hidden, _ = _hidden(model, prefix_embeds(parts, meta, prefix))
        mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype).unsqueeze(-1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return torch.nn.functional.linear(pooled, parts["head.linear.weight"], parts["head.linear.bias"])


def nearest_label(parts: dict[str, torch.Tensor], embedding: torch.Tensor) -> str:
    """`<label> (cosine <similarity>)` of the packaged unit centroid nearest `embedding`."""
    found = embedding.double() / embedding.double().norm().clamp(min=1e-12)
    similarity = {key[len("assets.centroid."):]: float(found @ value.double())
                  for key, value in parts.items() if key.startswith("assets.centroid.")}
    best = max(similarity, key=similarity.__getitem__)
    return f"{best} (cosine {similarity[best]:.3f})"


def main(out: Path, requests_path: Path) -> dict[str, Any]:
    """Answer `requests.json`: `{"<name>": {"kind": "generate" | "choose" | "loglikelihood" |
    "generate_after" | "embed", "max_new_tokens": n, "items": [...]}}`, each by the adapter of
    its `"capability"` (default: its name); prefixes come from a safetensors file."""
    model, tokenizer, parts = load(out)
    requests = json.loads(requests_path.read_text())
    answers: dict[str, Any] = {}
    for name, request in requests.items():
        capability = request.get("capability", name)
        meta_path = out / "adapters" / capability / "parts.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        prefixes = load_file(request["prefixes"]) if "prefixes" in request else {}
        replies = []
        for index, item in enumerate(request["items"]):
            if request["kind"] == "generate":
                replies.append(generate(model, tokenizer, capability, item, request["max_new_tokens"]).strip())
            elif request["kind"] == "choose":
                replies.append(choose(model, tokenizer, capability, item["prompt"], item["options"]))
            elif request["kind"] == "loglikelihood":
                projected = prefix_embeds(parts[capability], meta, prefixes[str(index)]) if prefixes else None
                replies.append(loglikelihoods(model, tokenizer, capability, item["prompt"], item["continuations"],
                                              projected))
            elif request["kind"] == "generate_after":
                replies.append(generate_after(model, tokenizer, capability, parts[capability], meta,
                                              prefixes[str(index)], item, request["max_new_tokens"]).strip())
            else:
                found = embed(model, capability, parts[capability], meta, prefixes[str(index)])[0]
                replies.append(nearest_label(parts[capability], found))
        answers[name] = replies
    answers["modules"] = sorted(name for name in sys.modules if name.split(".")[0].startswith("nexus"))
    return answers


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))

"""A student backbone cut from a teacher: its decoder blocks that stage 2 found to matter.

Depth pruning guided by a removal ranking (as ShortGPT and Minitron do): stage 2 measured, per
decoder block of the teacher, how much the plugin's probe loss rises when that block is skipped
(its input passed on; `rank_layers_by_removal`); the student keeps the `keep` blocks with the
largest rise, in their original
order, with the teacher's embeddings, final norm and LM head, and its tokenizer. The copy is an
ordinary transformers model of the teacher's class (`num_hidden_layers = keep`), so everything
downstream (adapters, packaging, PEFT export) treats it like any causal-LM folder. It is
written beside its final place and renamed in one step.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_kernel.errors import StageError

_BLOCK = re.compile(r"^(?P<stack>.+)\.(?P<index>\d+)$")


@dataclass(frozen=True)
class PrunedBackbone:
    """What `prune_causal_lm` kept: teacher block indices in order, out of how many."""

    stack: str
    kept: tuple[int, ...]
    teacher_layers: int
    parameters: int

    def to_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "kept_layers": list(self.kept), "teacher_layers": self.teacher_layers,
                "parameters": self.parameters}


def blocks_to_keep(ranking: Sequence[str], keep: int, teacher: str) -> tuple[str, list[int]]:
    """The block stack and the indices of the first `keep` blocks of `ranking` (most important
    first, as stage 2 ranks them), in model order. `keep` 0 keeps them all. A ranking whose
    names are not one stack's numbered blocks is a `StageError` naming the teacher."""
    matches = [_BLOCK.match(name) for name in ranking]
    stacks = {match["stack"] for match in matches if match is not None}
    if None in matches or len(stacks) != 1:
        raise StageError(f"teacher {teacher!r}: stage 2 ranked {list(ranking)[:4]}..., not the numbered blocks of "
                         "one decoder stack; a student cut from it needs its decoder blocks as candidate layers")
    if keep > len(ranking):
        raise StageError(f"student.keep_layers = {keep}, but teacher {teacher!r} has {len(ranking)} decoder blocks")
    chosen = ranking if keep == 0 else ranking[:keep]
    return stacks.pop(), sorted(int(match["index"]) for match in matches[: len(chosen)] if match is not None)


def _pruned_config(config: Any, kept: Sequence[int]) -> Any:
    """A copy of `config` with `len(kept)` layers; per-layer lists (e.g. `layer_types`, which
    says which blocks use sliding-window attention) keep the entries of the kept blocks."""
    import copy

    pruned = copy.deepcopy(config)
    layers = int(config.num_hidden_layers)
    for key, value in vars(config).items():
        if isinstance(value, list) and len(value) == layers and key != "architectures":
            setattr(pruned, key, [value[index] for index in kept])
    pruned.num_hidden_layers = len(kept)
    return pruned


def _renamed_state(state: dict[str, Any], stack: str, kept: Sequence[int]) -> dict[str, Any]:
    """The teacher's weights with block `kept[i]` renamed to block `i`; dropped blocks left out."""
    new_index = {old: new for new, old in enumerate(kept)}
    prefix = stack + "."
    renamed = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            if index.isdigit():
                if int(index) in new_index:
                    renamed[f"{prefix}{new_index[int(index)]}.{rest}"] = value
                continue
        renamed[key] = value
    return renamed


def prune_causal_lm(teacher: str, folder: Path, ranking: Sequence[str], keep: int, out: Path) -> PrunedBackbone:
    """Write to `out` the causal LM in `folder` cut to the `keep` most important blocks of
    `ranking` (see the module docstring), float32, with the teacher's tokenizer; returns what
    was kept."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nexus_kernel.algorithms.profiling import repeated_blocks

    stack, kept = blocks_to_keep(ranking, keep, teacher)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    blocks = repeated_blocks(model)
    if not blocks or blocks[0].rsplit(".", 1)[0] != stack:
        raise StageError(f"teacher {teacher!r} ({type(model).__name__}): stage 2 ranked blocks of {stack!r}, but the "
                         f"causal LM's decoder blocks are {blocks[0].rsplit('.', 1)[0] if blocks else 'not found'}")
    pruned = AutoModelForCausalLM.from_config(_pruned_config(model.config, kept), dtype=torch.float32)
    pruned.load_state_dict(_renamed_state(model.state_dict(), stack, kept), strict=True)
    pruned.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pruned.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():  # an older cut: set aside, replaced, then removed
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrunedBackbone(stack, tuple(kept), len(blocks), sum(p.numel() for p in pruned.parameters()))

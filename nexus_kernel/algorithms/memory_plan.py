"""The memory plan: each stage's peak memory predicted from a model's `config.json` alone.

`describe` builds the model on the meta device (no weights read, no memory, nothing
downloaded, never remote code) with the class `config.json` names, as the loader would pick
it, and counts its parameters by kind: the `nn.Linear` weights bitsandbytes converts, the
linear weights transformers keeps unquantized (the output embedding, tied weights, its
`_keep_in_fp32_modules`), embeddings, norms, biases and the rest. From that:

- `weight_plan`: the bytes the weights take at each option of `QUANTIZATION_ORDER`, as
  `teachers.loading._load_as` loads them, and the transient peak of the load itself;
- `inference_plan`: one stage-2 (profiling) or stage-4 (pool) forward pass at a batch: the
  weights, the activations of the largest phase of the forward (a decoder block's MLP or
  attention, or the logits and the loss), the KV cache the forward keeps, the PCA states;
- `training_plan`: a stage-4 training step of the student: weights, gradients and AdamW
  state of what trains, the activations saved for the backward pass, its transients;
- `largest_fitting_batch` and `check_fits`, which raises `MemoryPlanError` naming the
  model, the option and the figures.

The constants are counted from the code paths of torch 2.13 and transformers 5.x (which
tensors are alive at once) and checked against measured peaks on CPU
(`benchmarks/memory_plan.py`: SmolLM2-135M profiling, the default student's training).
Sizes are in bytes; budgets in GB of 2**30 bytes, as `hardware.memory_budget_gb` is read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nexus_kernel.errors import NexusError
from nexus_kernel.teachers.loading import QUANTIZATION_ORDER

GIB = 2**30
NF4_BLOCK = 64
"""bitsandbytes' default 4-bit block: one float32 absmax per 64 weights (no double quantisation)."""
BATCH_SHARE = 0.8
"""The share of the budget a chosen batch may fill: room for rows longer than the probe
batch's and for the allocator's cache (a plan that fills the whole budget is still allowed
when the batch is configured)."""
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}
_MLP_LIVE = 3  # act(gate), up and their product are alive together in a gated MLP
_MLP_LIVE_PLAIN = 2  # the activation and its input in a plain (GELU) MLP
_SAVED_PER_HIDDEN = 13  # per block, hidden-width tensors autograd saves (norms, q/k/v/o inputs, rope)
_SAVED_PER_INTERMEDIATE = 4  # per block, intermediate-width tensors saved (gate, act, up, product)


class MemoryPlanError(NexusError):
    """A stage's predicted peak memory exceeds `hardware.memory_budget_gb` (or the model
    cannot be planned): the message names the model, the option and the figures."""


@dataclass(frozen=True)
class ParameterCounts:
    """A model's parameters by what loading does to them (each shared tensor counted once)."""

    quantizable: int
    """`nn.Linear` weights bitsandbytes replaces (NF4, INT8)."""
    quantizable_rows: int
    """Output rows of those layers (LLM.int8 keeps one float32 scale per row)."""
    kept_linear: int
    """Linear weights transformers keeps unquantized: output embedding, tied, fp32-kept modules."""
    embeddings: int
    norms: int
    biases: int
    other: int
    dynamic_linear: int
    """Weights of every `nn.Linear`, lm_head included: what torch dynamic INT8 quantizes (a
    tied lm_head gets its own INT8 copy beside the float32 embedding)."""
    largest: int
    """The largest single tensor (a load converts tensor by tensor)."""

    @property
    def total(self) -> int:
        return self.quantizable + self.kept_linear + self.embeddings + self.norms + self.biases + self.other


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model: its widths, its parameters and how it computes."""

    name: str
    model_class: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    attention: str
    """The attention implementation transformers picked (`sdpa`, `eager`, ...)."""
    checkpoint_dtype: str
    """The dtype `config.json` records: what the unquantized modules get under NF4/INT8
    (transformers' default `dtype="auto"`) and what the weight files hold."""
    use_cache: bool
    tied: bool
    counts: ParameterCounts

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["parameters"] = self.counts.total
        return data


@dataclass(frozen=True)
class Workload:
    """The shape of one forward pass, per sample of a stage's batch.

    `rows_per_sample`: model rows per sample (a four-option question is four rows);
    `tokens`: sequence length of a row; `logit_positions`: positions the output head computes
    (transformers' `logits_to_keep`; None: every token); `loss_in_forward`: the loss is
    computed inside the forward (`labels` passed), so the KV cache is still alive while it
    runs; `use_cache`: whether the forward keeps a KV cache (None: the config's `use_cache`).
    """

    tokens: int = 512
    rows_per_sample: float = 1.0
    logit_positions: int | None = None
    loss_in_forward: bool = True
    use_cache: bool | None = None

    def rows(self, batch: int) -> int:
        return max(1, math.ceil(batch * self.rows_per_sample))


@dataclass(frozen=True)
class WeightPlan:
    """The weights at one option: `steady` once loaded, `load_peak` during the load."""

    option: str
    steady: int
    load_peak: int
    activation_bytes: int
    """Bytes per element of the hidden states the forward computes in."""


@dataclass(frozen=True)
class StagePlan:
    """One stage's predicted peak for one model, option and batch.

    `total` is the larger of the load's peak and the running peak (`weights + activations +
    kv_cache + pca + optimizer`); `activations` is the rest of the largest phase beside the
    KV cache; `optimizer` holds gradients and AdamW state for training."""

    stage: str
    model: str
    option: str
    batch: int
    tokens: int
    weights: int
    load_peak: int
    activations: int
    kv_cache: int
    pca: int = 0
    optimizer: int = 0

    @property
    def running(self) -> int:
        return self.weights + self.activations + self.kv_cache + self.pca + self.optimizer

    @property
    def total(self) -> int:
        return max(self.load_peak, self.running)

    def fits(self, budget_gb: float) -> bool:
        return self.total <= budget_gb * GIB

    def to_json(self, budget_gb: float | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {**asdict(self), "running": self.running, "total": self.total}
        if budget_gb is not None:
            data["fits"] = self.fits(budget_gb)
        return data


# reading a config ------------------------------------------------------------------------------


def read_config(source: Mapping[str, Any] | Path) -> dict[str, Any]:
    """`config.json` as a dict: `source` itself, a folder holding it, or the file."""
    if isinstance(source, Mapping):
        return dict(source)
    path = source / "config.json" if source.is_dir() else source
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MemoryPlanError(f"cannot read {path} for the memory plan ({exc})") from None
    if not isinstance(config, dict):
        raise MemoryPlanError(f"{path} is not a JSON object")
    return config


def _model_class(config: Mapping[str, Any]) -> Any:
    """The class `teachers.loading._architecture` would load: the first of `architectures`
    transformers provides, else `AutoModel` for an encoder family it knows."""
    import transformers
    from transformers.models.auto import modeling_auto

    from nexus_kernel.teachers.loading import _is_encoder

    architectures = config.get("architectures") or []
    for architecture in architectures:
        model_class = getattr(transformers, architecture, None)
        if model_class is not None:
            return model_class
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in modeling_auto.MODEL_MAPPING_NAMES and _is_encoder(model_type):
        return transformers.AutoModel
    raise MemoryPlanError(f"config names architectures {list(architectures)} (model_type {model_type!r}), none of "
                          f"which this transformers {transformers.__version__} provides")


def build_on_meta(config: Mapping[str, Any]) -> Any:
    """The model `config` describes, built on the meta device: shapes without storage."""
    import torch
    from transformers import AutoConfig

    settings = {key: value for key, value in config.items() if key not in ("model_type", "auto_map")}
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise MemoryPlanError("config has no model_type; the memory plan cannot build it")
    try:
        hf_config = AutoConfig.for_model(model_type, **settings)
    except ValueError as exc:
        raise MemoryPlanError(f"config model_type {model_type!r}: {exc}") from None
    model_class = _model_class(config)
    with torch.device("meta"):
        if hasattr(model_class, "from_config"):  # the Auto classes
            return model_class.from_config(hf_config)
        return model_class(hf_config)


def _kept_unquantized(model: Any) -> list[str]:
    """Module names transformers' bitsandbytes path leaves unquantized."""
    from transformers.quantizers.base import get_keys_to_not_convert

    keep = list(get_keys_to_not_convert(model))
    keep += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return keep


def count_parameters(model: Any) -> ParameterCounts:
    """`model`'s parameters by kind (see `ParameterCounts`); shared tensors counted once."""
    from torch import nn
    from transformers.quantizers.quantizers_utils import should_convert_module

    keep = _kept_unquantized(model)
    seen: set[int] = set()
    counts = {"quantizable": 0, "quantizable_rows": 0, "kept_linear": 0, "embeddings": 0, "norms": 0,
              "biases": 0, "other": 0, "dynamic_linear": 0, "largest": 0}
    for name, module in model.named_modules():
        is_linear = type(module) is nn.Linear or type(module).__name__ == "Conv1D"
        for parameter_name, parameter in module.named_parameters(recurse=False):
            size = parameter.numel()
            counts["largest"] = max(counts["largest"], size)
            if is_linear and parameter_name == "weight" and isinstance(module, nn.Linear):
                counts["dynamic_linear"] += size  # a tied lm_head is quantized as its own copy
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if parameter_name == "bias":
                counts["biases"] += size
            elif is_linear and should_convert_module(name, keep):
                counts["quantizable"] += size
                counts["quantizable_rows"] += parameter.shape[0] if type(module) is nn.Linear else parameter.shape[1]
            elif is_linear:
                counts["kept_linear"] += size
            elif isinstance(module, nn.Embedding):
                counts["embeddings"] += size
            elif "norm" in type(module).__name__.lower():
                counts["norms"] += size
            else:
                counts["other"] += size
    return ParameterCounts(**counts)


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def describe(source: Mapping[str, Any] | Path, name: str = "model") -> ModelShape:
    """`source`'s config (dict, folder or file) built on meta and measured as a `ModelShape`."""
    config = read_config(source)
    model = build_on_meta(config)
    hf_config = model.config
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    hidden = int(_first(text, "hidden_size", "d_model", "n_embd", default=0))
    heads = int(_first(text, "num_attention_heads", "n_head", "encoder_attention_heads", default=1))
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    if not hidden:
        raise MemoryPlanError(f"{name}: its config gives no hidden size; the memory plan cannot size it")
    return ModelShape(
        name=name, model_class=type(model).__name__, hidden=hidden,
        layers=int(_first(text, "num_hidden_layers", "n_layer", "num_layers", default=1)),
        heads=heads, kv_heads=int(_first(text, "num_key_value_heads", default=heads)),
        head_dim=int(_first(text, "head_dim", default=hidden // heads)),
        intermediate=int(_first(text, "intermediate_size", "n_inner", "encoder_ffn_dim", default=4 * hidden)),
        vocab=int(_first(text, "vocab_size", default=0)),
        gated_mlp=any(name.endswith(("gate_proj", "gate_up_proj")) for name, _ in model.named_modules()),
        attention=str(getattr(hf_config, "_attn_implementation", None) or "eager"),
        checkpoint_dtype=str(dtype).removeprefix("torch."),
        use_cache=bool(getattr(text, "use_cache", False)),
        tied=bool(getattr(text, "tie_word_embeddings", False)),
        counts=count_parameters(model),
    )


# weights ---------------------------------------------------------------------------------------


def _bytes_of(dtype: str) -> int:
    return _DTYPE_BYTES.get(dtype, 4)


def weight_plan(shape: ModelShape, option: str, device: str = "cpu") -> WeightPlan:
    """The weights of `shape` loaded at `option` as `teachers.loading._load_as` loads them.

    fp32 and bf16 convert every tensor. NF4 stores the converted linears at half a byte plus
    a float32 absmax per `NF4_BLOCK`, INT8 at one byte plus a float32 scale per row; both
    leave the other modules in the checkpoint's dtype (`dtype="auto"`). Dynamic INT8 loads
    fp32, then `quantize_dynamic` deep-copies the model (so its load peaks at twice fp32) and
    stores every linear at one byte, the rest in float32. A load converts tensor by tensor,
    so it peaks at the weights plus one float32 tensor. The weight files a CPU load maps are
    not counted: their pages show in RSS while the load runs (fp32 from bf16 files: RSS peaks
    near fp32 weights plus the files' size) but are page cache the kernel can reclaim."""
    counts, stored = shape.counts, _bytes_of(shape.checkpoint_dtype)
    rest = counts.total - counts.quantizable
    transient = 4 * counts.largest
    if option not in QUANTIZATION_ORDER:
        raise MemoryPlanError(f"unknown quantization {option!r}; use one of {QUANTIZATION_ORDER}")
    if option in ("fp32", "bf16"):
        width = 4 if option == "fp32" else 2
        steady = counts.total * width
        return WeightPlan(option, steady, steady + (transient if width != stored else 0), width)
    if option == "dynamic-int8":
        fp32 = weight_plan(shape, "fp32", device)
        steady = counts.dynamic_linear + 4 * (counts.total - counts.quantizable - counts.kept_linear)
        return WeightPlan(option, steady, max(fp32.load_peak, 2 * fp32.steady), 4)
    if option == "nf4":
        quantized = counts.quantizable // 2 + 4 * math.ceil(counts.quantizable / NF4_BLOCK)
    else:
        quantized = counts.quantizable + 4 * counts.quantizable_rows
    steady = quantized + rest * stored
    return WeightPlan(option, steady, steady + transient, stored)


# one forward pass ------------------------------------------------------------------------------


def kv_cache_bytes(shape: ModelShape, rows: int, tokens: int, width: int) -> int:
    """Keys and values of every layer for `rows` x `tokens`, as transformers' DynamicCache holds them."""
    return 2 * shape.layers * rows * tokens * shape.kv_heads * shape.head_dim * width


def _block_peak(shape: ModelShape, rows: int, tokens: int, width: int) -> int:
    """The largest set of tensors alive at once inside one decoder block of an inference
    forward: the residual stream and the normed input beside the MLP's intermediates, or
    beside the attention's projections and one float32 score matrix per head."""
    positions = rows * tokens
    live = _MLP_LIVE if shape.gated_mlp else _MLP_LIVE_PLAIN
    mlp = (2 * shape.hidden + live * shape.intermediate) * positions * width
    projections = 2 * shape.heads * shape.head_dim + 2 * shape.kv_heads * shape.head_dim
    attention = (2 * shape.hidden + projections) * positions * width + rows * shape.heads * tokens * tokens * 4
    return max(mlp, attention)


def _logits_peak(shape: ModelShape, rows: int, positions: int, width: int) -> int:
    """The logits, their float32 copy when the model computes in half precision, and the
    one full-size float32 temporary a log-softmax or log-sum-exp makes."""
    logits = rows * positions * shape.vocab
    return logits * width + (logits * 4 if width != 4 else 0) + logits * 4


def pca_state_bytes(shape: ModelShape, key_layers: int) -> int:
    """What profiling keeps per key layer: the float64 d x d second moment and mean."""
    return key_layers * (shape.hidden * shape.hidden + shape.hidden) * 8


def _pca_update_peak(shape: ModelShape, rows: int, tokens: int) -> int:
    """One `StreamingPCA.update` inside a hook: the batch's rows in float32, centred, and
    the float32 Gram with its float64 copy."""
    return 2 * rows * tokens * shape.hidden * 4 + shape.hidden * shape.hidden * (4 + 8)


def inference_plan(shape: ModelShape, option: str, batch: int, workload: Workload, *, stage: str = "profiling",
                   device: str = "cpu", key_layers: int = 0, resident: int = 0) -> StagePlan:
    """One forward pass of `batch` samples at `option` (see the module docstring).

    The forward's peak is the larger of its last block (KV cache full, block temporaries, a
    PCA update when `key_layers`) and its output phase (logits and the loss; the KV cache too
    when the loss runs inside the forward). `resident` adds memory held beside the model (the
    student during a pool)."""
    weights = weight_plan(shape, option, device)
    rows, tokens, width = workload.rows(batch), workload.tokens, weights.activation_bytes
    caching = shape.use_cache if workload.use_cache is None else workload.use_cache
    kv = kv_cache_bytes(shape, rows, tokens, width) if caching and shape.vocab else 0
    mask = rows * tokens * tokens  # the boolean causal-and-padding mask, alive for the whole forward
    blocks = _block_peak(shape, rows, tokens, width) + mask
    if key_layers:
        blocks += _pca_update_peak(shape, rows, tokens)
    positions = tokens if workload.logit_positions is None else min(tokens, workload.logit_positions)
    output = _logits_peak(shape, rows, positions, width) + mask + rows * tokens * shape.hidden * width
    output_kv = kv if workload.loss_in_forward else 0
    if blocks + kv >= output + output_kv:
        activations, cache = blocks, kv
    else:
        activations, cache = output, output_kv
    return StagePlan(stage, shape.name, option, batch, tokens, weights.steady + resident,
                     weights.load_peak + resident, activations, cache, pca_state_bytes(shape, key_layers))


# training --------------------------------------------------------------------------------------


def training_plan(shape: ModelShape, batch: int, workload: Workload, *, trainable: int | None = None,
                  extra_trainable: int = 0, tasks: int = 1, stage: str = "student training") -> StagePlan:
    """One float32 training step of `shape` (the student's backbone) on `tasks` capabilities'
    batches of `batch` at once (the joint phase sums their losses before one backward).

    `trainable` backbone parameters train (None: all of them) and `extra_trainable` more
    (the adapters); each trained parameter has a gradient and AdamW's two moments. Saved
    for the backward pass per block and task: `_SAVED_PER_HIDDEN` hidden-width and
    `_SAVED_PER_INTERMEDIATE` intermediate-width tensors, and the per-head attention
    statistics; at the output, the logits and their log-softmax; the backward pass adds the
    logits' gradient twice over (log-softmax and the shifted slice)."""
    total = shape.counts.total + extra_trainable
    trained = (shape.counts.total if trainable is None else trainable) + extra_trainable
    rows, tokens = workload.rows(batch), workload.tokens
    positions = rows * tokens
    per_block = (_SAVED_PER_HIDDEN * shape.hidden + _SAVED_PER_INTERMEDIATE * shape.intermediate) * positions * 4
    per_block += rows * shape.heads * tokens * 4
    logits = positions * shape.vocab * 4
    saved = tasks * (shape.layers * per_block + 2 * logits + positions * shape.hidden * 4)
    backward = 2 * logits + 2 * per_block // _SAVED_PER_HIDDEN
    return StagePlan(stage, shape.name, "fp32", batch, tokens, 4 * total, 4 * total, saved + backward, 0,
                     optimizer=12 * trained)


# fitting ---------------------------------------------------------------------------------------


def largest_fitting_batch(plan_at: Callable[[int], StagePlan], budget_gb: float, ceiling: int) -> int:
    """The largest batch in [1, ceiling] whose plan fits `budget_gb` (plans grow with the
    batch, so a bisection); 0 when even a batch of 1 does not fit."""
    if not plan_at(1).fits(budget_gb):
        return 0
    low, high = 1, ceiling
    while low < high:
        middle = (low + high + 1) // 2
        if plan_at(middle).fits(budget_gb):
            low = middle
        else:
            high = middle - 1
    return low


def gb(size: int) -> str:
    return f"{size / GIB:.2f} GB"


def check_fits(plan: StagePlan, budget_gb: float, role: str = "teacher") -> None:
    """Raise `MemoryPlanError` when `plan` does not fit `budget_gb`, naming the model, the
    option, the batch and the figures."""
    if plan.fits(budget_gb):
        return
    parts = f"weights {gb(plan.weights)}, activations {gb(plan.activations)}, KV cache {gb(plan.kv_cache)}"
    if plan.pca:
        parts += f", PCA states {gb(plan.pca)}"
    if plan.optimizer:
        parts += f", gradients and AdamW state {gb(plan.optimizer)}"
    if plan.load_peak > plan.running:
        parts += f"; the load itself peaks at {gb(plan.load_peak)}"
    raise MemoryPlanError(
        f"{role} {plan.model!r}: {plan.stage} at {plan.option} with batch {plan.batch} x {plan.tokens} tokens "
        f"needs {gb(plan.total)} ({parts}), more than hardware.memory_budget_gb = {budget_gb:g} GB; "
        "lower the batch size, pick a smaller quantization or raise the budget")


def fitting_option(shape: ModelShape, options: tuple[str, ...], plan_at: Callable[[str], StagePlan],
                   budget_gb: float, role: str = "teacher") -> tuple[str, StagePlan]:
    """The first of `options` whose plan fits `budget_gb`, with its plan; none fitting raises
    `MemoryPlanError` with the figures of the last (the smallest) option tried."""
    plan = None
    for option in options:
        plan = plan_at(option)
        if plan.fits(budget_gb):
            return option, plan
    if plan is None:
        raise MemoryPlanError(f"{role} {shape.name!r}: no quantization option to plan")
    check_fits(plan, budget_gb, role)
    raise AssertionError("unreachable")  # pragma: no cover


# the workload of a real forward ----------------------------------------------------------------


def forward_hooked(model: Any, loss: Callable[[Any, Any], Any], batch: Any, handles: list[Any]) -> None:
    """`loss(model, batch)` once under inference mode with the hooks `handles` registered on
    the model's modules, which are removed afterwards whatever happens."""
    import torch

    try:
        with torch.inference_mode():
            loss(model, batch)
    finally:
        for handle in handles:
            handle.remove()


def observe_workload(model: Any, loss: Callable[[Any, Any], Any], batch: Any, samples: int) -> Workload:
    """The `Workload` of `loss(model, batch)` for a batch of `samples` samples, read from one
    forward pass under inference mode: the rows and tokens of `input_ids` (else of the
    output's first 3-D tensor), the positions of the logits, whether `labels` went into the
    forward (the loss runs inside it) and the `use_cache` it was given."""
    import torch

    seen: dict[str, Any] = {}

    def before(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if "kwargs" in seen:
            return
        seen["kwargs"] = kwargs
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            seen["shape"] = tuple(ids.shape)

    def after(_module: Any, _args: Any, output: Any) -> None:
        if "output" in seen:
            return
        logits = getattr(output, "logits", None)
        values = [logits] if isinstance(logits, torch.Tensor) else []
        values += [value for value in (output.values() if hasattr(output, "values") else ())
                   if isinstance(value, torch.Tensor)]
        seen["output"] = [tuple(value.shape) for value in values if value.dim() == 3]
        seen["logits"] = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None

    forward_hooked(model, loss, batch, [model.register_forward_pre_hook(before, with_kwargs=True),
                                         model.register_forward_hook(after)])
    kwargs = seen.get("kwargs", {})
    rows, tokens = seen.get("shape") or (seen.get("output") or [(samples, 1)])[0][:2]
    logits = seen.get("logits")
    return Workload(tokens=int(tokens), rows_per_sample=rows / max(1, samples),
                    logit_positions=int(logits[1]) if logits else None,
                    loss_in_forward=kwargs.get("labels") is not None,
                    use_cache=kwargs.get("use_cache"))


PRELOAD_WORKLOAD = Workload(tokens=256)
"""What a stage assumes of a forward pass before the teacher is loaded and its data are
tokenised (256 tokens a row, full logits, the loss inside the forward): the check made before
loading; the batch is then chosen from the workload of a real batch (`observe_workload`)."""


def loaded_option(model: Any) -> str:
    """The option of `QUANTIZATION_ORDER` a loaded model was loaded at, read from its modules."""
    import torch

    kinds = {type(module).__name__ for module in model.modules()}
    if "Linear4bit" in kinds:
        return "nf4"
    if "Linear8bitLt" in kinds:
        return "int8"
    if any("quantized" in type(module).__module__ for module in model.modules()):
        return "dynamic-int8"
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return "bf16" if floating and floating[0] in (torch.bfloat16, torch.float16) else "fp32"


def plan_loaded(name: str, folder: Path | None, model: Any) -> ModelShape:
    """The `ModelShape` of a teacher: from its folder's `config.json` when it has one, else
    from the loaded model's own config (a plugin's `load_teacher` may load another format).
    Raises `MemoryPlanError` when neither builds on meta."""
    if folder is not None and (folder / "config.json").is_file():
        return describe(folder, name)
    return describe(_config_of(model, name), name)


def _config_of(model: Any, name: str = "model") -> dict[str, Any]:
    """A loaded transformers model's config as `config.json` would hold it, its class named."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise MemoryPlanError(f"{name}: neither a config.json nor a transformers config to plan from")
    data = config.to_dict()
    data.pop("quantization_config", None)
    data["architectures"] = data.get("architectures") or [type(model).__name__]
    return data


def pool_option(name: str, folder: Path, preferred: str, floor: str, budget_gb: float,
                device: str = "cpu", resident: int = 0) -> str:
    """Stage 4's option for a teacher's pool: the first option from `preferred` down to
    `floor` (the one profiling used; never below it) whose plan for one item
    (`PRELOAD_WORKLOAD`, with `resident` bytes of student beside it) fits; none fitting raises
    `MemoryPlanError` with the figures at `floor`. A folder without `config.json` (a plugin's
    own format) is not planned: `preferred` is returned. (The pool's own batch, `POOL_BATCH`
    items, is the caller's; `pool_batch` gives the largest that fits.)"""
    if not (folder / "config.json").is_file():
        return preferred
    try:
        shape = describe(folder, name)
    except MemoryPlanError:
        return preferred  # the loader reports what is wrong with the folder
    high, low = QUANTIZATION_ORDER.index(preferred), QUANTIZATION_ORDER.index(floor)
    order = tuple(QUANTIZATION_ORDER[index] for index in range(high, min(high, low) - 1, -1))
    option, _ = fitting_option(shape, order, lambda each: inference_plan(
        shape, each, 1, PRELOAD_WORKLOAD, stage="distillation pool", device=device, resident=resident), budget_gb)
    return option


def pool_batch(shape: ModelShape, option: str, budget_gb: float, device: str = "cpu", resident: int = 0) -> int:
    """The largest pool batch up to `POOL_BATCH` whose plan fits `BATCH_SHARE` of the budget (at least 1)."""
    def plan_at(batch: int) -> StagePlan:
        return inference_plan(shape, option, batch, PRELOAD_WORKLOAD, stage="distillation pool", device=device,
                              resident=resident)

    return max(1, largest_fitting_batch(plan_at, budget_gb * BATCH_SHARE, POOL_BATCH))


def student_plan(student: Any, batch: int, tokens: int | None = None, tasks: int = 1,
                 backbone_trains: bool = True) -> StagePlan:
    """The training plan of a built `NexusStudent` (its `backbone`, a transformers model, and
    its `adapters`): `tokens` a row (None: the backbone's `max_position_embeddings`, the
    longest a row can be), `tasks` capabilities' batches in one step (the joint phase)."""
    config = student.backbone.config
    shape = describe(_config_of(student.backbone), "student")
    adapters = sum(parameter.numel() for parameter in student.adapters.parameters())
    longest = tokens or int(getattr(config, "max_position_embeddings", 512))
    return training_plan(shape, batch, Workload(tokens=longest), trainable=None if backbone_trains else 0,
                         extra_trainable=adapters, tasks=tasks)


def module_bytes(module: Any) -> int:
    """The bytes of a module's parameters and buffers (what it holds while it waits)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


# the doctor's table ----------------------------------------------------------------------------

PROFILING_CEILING = 256
"""The largest profiling batch stage 2 chooses (`stages.profile._MAX_BATCH`)."""
POOL_BATCH = 64
"""Items a teacher answers at once for stage 4's pool (`stages.distill_pool._TEACHER_BATCH`)."""
STUDENT_VOCAB = 4096
"""The vocabulary assumed for a `backbone = "config"` student before stage 3 builds its tokenizer."""


def _student_shape(student: Mapping[str, Any], teachers: Mapping[str, Path], vocab: int | None
                   ) -> tuple[ModelShape, str]:
    """The student's backbone from `[student]`, and what was assumed to get it."""
    backbone = str(student["backbone"])
    if backbone.startswith("teacher:"):
        folder = next(iter(teachers.values()), None) if backbone[8:] not in teachers else teachers[backbone[8:]]
        if folder is None:
            raise MemoryPlanError(f"student.backbone = {backbone!r}: no teacher folder to cut it from")
        config = read_config(folder)
        keep = int(student.get("keep_layers") or 0)
        if keep:
            config["num_hidden_layers"] = keep
        return describe(config, "student"), f"cut from {folder.name}" + (f", {keep} blocks" if keep else "")
    if backbone != "config":
        return describe(Path(backbone), "student"), f"folder {backbone}"
    size = vocab or STUDENT_VOCAB
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": size,
              "hidden_size": student["hidden_size"], "num_hidden_layers": student["layers"],
              "num_attention_heads": student["heads"], "intermediate_size": student["intermediate_size"],
              "max_position_embeddings": student["max_positions"]}
    assumed = f"vocabulary {size}" + ("" if vocab else " assumed (stage 3 builds the tokenizer)")
    return describe(config, "student"), assumed


def plan_report(teachers: Mapping[str, Path | str], student: Mapping[str, Any], profiling: Mapping[str, Any],
                distill: Mapping[str, Any], budget_gb: float, device: str = "cpu",
                student_vocab: int | None = None, tasks: int = 1) -> dict[str, Any]:
    """What `nexus doctor --plan` prints: per teacher (name to folder, or to a sentence saying
    why there is none yet), its profiling and pool plans at each option with the batch
    chosen, and the student's training step. Sizes in bytes; `fits` against `budget_gb`."""
    rows: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    folders: dict[str, Path] = {}
    for name, folder in teachers.items():
        if isinstance(folder, str):
            notes[name] = folder
            continue
        try:
            shape = describe(folder, name)
        except MemoryPlanError as exc:
            notes[name] = str(exc)
            continue
        folders[name] = folder
        notes[name] = f"{shape.model_class}, {shape.counts.total / 1e6:,.0f}M parameters, {shape.checkpoint_dtype} files"
        for option in QUANTIZATION_ORDER:
            if option == "dynamic-int8" and device != "cpu":
                continue  # torch dynamic INT8 runs on CPU only
            def profile_at(batch: int, option: str = option, shape: ModelShape = shape) -> StagePlan:
                return inference_plan(shape, option, batch, PRELOAD_WORKLOAD, device=device,
                                      key_layers=profiling["key_layers"])
            batch = profiling["batch_size"] or max(1, largest_fitting_batch(profile_at, budget_gb * BATCH_SHARE,
                                                                              PROFILING_CEILING))
            rows.append(profile_at(batch).to_json(budget_gb))
            rows.append(inference_plan(shape, option, pool_batch(shape, option, budget_gb, device), PRELOAD_WORKLOAD,
                                       stage="distillation pool", device=device).to_json(budget_gb))
    try:
        shape, assumed = _student_shape(student, folders, student_vocab)
    except MemoryPlanError as exc:
        notes["student"] = str(exc)
    else:
        training = training_plan(shape, distill["batch_size"], Workload(tokens=int(student["max_positions"])),
                                 tasks=tasks)
        rows.append(training.to_json(budget_gb))
        notes["student"] = (f"{shape.counts.total / 1e6:,.1f}M parameters, {assumed}; rows of max_positions "
                            f"{student['max_positions']} tokens, {tasks} capabilities a step, adapters not counted")
    return {"budget_gb": budget_gb, "device": device, "workload": asdict(PRELOAD_WORKLOAD), "notes": notes,
            "rows": rows}


def format_report(report: Mapping[str, Any]) -> str:
    """`plan_report`'s table as text, sizes in GB."""
    header = (f"{'model':<28} {'stage':<18} {'option':<12} {'batch':>5} {'tokens':>6} {'weights':>8} "
              f"{'activ.':>8} {'KV':>8} {'other':>8} {'total':>8} fits")
    title = (f"memory plan against hardware.memory_budget_gb = {report['budget_gb']:g} GB on {report['device']} "
             f"(teachers: {report['workload']['tokens']} tokens a row, full logits)")
    lines = [title, header]
    for row in report["rows"]:
        other = row["pca"] + row["optimizer"]
        lines.append(f"{row['model'][:28]:<28} {row['stage']:<18} {row['option']:<12} {row['batch']:>5} "
                     f"{row['tokens']:>6} {row['weights'] / GIB:>8.2f} {row['activations'] / GIB:>8.2f} "
                     f"{row['kv_cache'] / GIB:>8.2f} {other / GIB:>8.2f} {row['total'] / GIB:>8.2f} "
                     f"{'yes' if row['fits'] else 'NO'}")
    lines += [f"{name}: {note}" for name, note in report["notes"].items()]
    return "\n".join(lines)

"""The TOML config: schema, validation with helpful errors, and resolution to plain data.

Every key is declared in `SCHEMA`; an unknown key is an error naming its dotted path and the
nearest valid key. Resolution fills defaults and turns relative paths into absolute ones
(relative to the config file's folder), so the result is self-contained and hashable.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the kernel requires 3.11, kept for vendored use on 3.10
    import tomli as tomllib

from nexus_kernel.errors import ConfigError

DEFAULT_CONFIG = Path("configs/nexus.toml")


@dataclass(frozen=True)
class Key:
    """One config key: its kind, default and a line of help for the docs.

    `minimum` and `maximum` bound a number, both inclusive unless `exclusive_minimum`; a
    "float" must also be finite. A "name" is one safe path component (see `NAME_PATTERN`).
    """

    kind: str  # "str", "name", "int", "float", "bool", "path", "list[str]"
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False


NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
"""A "name" key: it becomes a folder or file name (runs/<name>, archive/<name>.tar.gz), so
only these characters, never hidden, `.`/`..`, or starting with `-` (read as an option)."""


TEXT_LOSSES = ("auto", "uld", "sequence")
"""Values of `[capabilities.<name>] text_loss`."""

CAPABILITY_KEYS: dict[str, Key] = {
    "max_rank": Key("int", None, "adapter rank ceiling; default: the plugin's max rank", minimum=1),
    "alpha_scale": Key("float", None, "multiplies distill.alpha for this capability's anchor; "
                       "default: the plugin's", minimum=0.0, maximum=1e4),
    "pool_scale": Key("float", None, "multiplies distill.pool_size for this capability; "
                      "default: the plugin's", minimum=0.01, maximum=100.0),
    "data_dir": Key("path", None, "folder of real benchmark data; default: synthetic data"),
    "text_loss": Key("str", None, "output loss of a text capability: auto (kl when every teacher token is a "
                     "student token, else sequence), uld (cross-entropy plus ULD's sorted-probability distance), or "
                     "sequence (cross-entropy only); default: auto",
                     choices=TEXT_LOSSES),
}
"""Keys of each `[capabilities.<name>]` table; `<name>` must be an installed capability."""

SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "name": Key("name", "demo", "run name: 1-128 letters, digits, '.', '_' or '-', starting with a "
                    "letter, digit or '_'; the run directory defaults to runs/<name>"),
        "seed": Key("int", 42, "seed for every random number generator (numpy's range: 0 to 2**32 - 1)",
                    minimum=0, maximum=2**32 - 1),
    },
    "plugins": {
        "enabled": Key("list[str]", [], "plugins to use (entry-point or distribution names); "
                       "empty: every installed one. --plugins and NEXUS_PLUGINS override it"),
        "always_load": Key("list[str]", ["quant-bnb"], "plugins loaded whatever the selection"),
    },
    "hardware": {
        "memory_budget_gb": Key("float", 16.0, "memory the run may use, in GB", minimum=0.5, maximum=1e5),
        "device": Key("str", "auto", "where to compute", choices=("auto", "cpu", "cuda")),
    },
    "profiling": {
        "probe_samples": Key("int", 20, "samples per capability for the layer ablation", minimum=1),
        "key_layers": Key("int", 3, "layers kept (largest loss increase) and profiled", minimum=1),
        "samples": Key("int", 512, "samples streamed through the key layers' PCA", minimum=1),
        "variance_threshold": Key("float", 0.95, "share of explained variance (in (0, 1]) that defines "
                                  "the intrinsic dimension", minimum=0.0, exclusive_minimum=True, maximum=1.0),
        "quantization": Key("str", "auto", "first quantization tried when loading a teacher (each failure "
                            "is recorded and the next of nf4, int8, dynamic-int8, bf16, fp32 tried); auto: nf4 on "
                            "CUDA, on a CPU (no working 4-bit kernel) the fastest option whose weights fit half "
                            "hardware.memory_budget_gb (bf16 where the CPU has native bf16, else fp32; then "
                            "int8, nf4); a named option is always honoured",
                            choices=("auto", "nf4", "int8", "dynamic-int8", "bf16", "fp32")),
        "removal_rounds": Key("int", 4, "student cut from a teacher: its blocks leave one per round, each the "
                              "cheapest to remove with the earlier ones gone (greedy); past these rounds the rest "
                              "go by the last round's costs", minimum=1),
        "batch_size": Key("int", 0, "profiling batch size (refused before loading when the memory plan "
                          "says it cannot fit); 0: the largest batch whose plan fits 80% of the memory budget (a "
                          "measured trial batch for a model the planner cannot build)", minimum=0),
    },
    "student": {
        "backbone": Key("str", "config", "`config` builds a LLaMA-style backbone from the keys below; "
                        "`teacher:<capability>` cuts it from that capability's teacher (its key layers, see "
                        "keep_layers); otherwise a local Hugging Face causal-LM folder"),
        "keep_layers": Key("int", 0, "backbone = teacher:<capability>: decoder blocks kept, those whose "
                           "removal cost the probe loss most in stage 2, in their order (0: all)", minimum=0),
        "hidden_size": Key("int", 128, "backbone hidden size (backbone = config)", minimum=8),
        "layers": Key("int", 4, "backbone decoder blocks (backbone = config)", minimum=1),
        "heads": Key("int", 4, "attention heads (backbone = config)", minimum=1),
        "intermediate_size": Key("int", 384, "MLP width (backbone = config)", minimum=8),
        "max_positions": Key("int", 512, "longest sequence, prefix included (backbone = config)", minimum=16),
    },
    "distill": {
        "alpha": Key("float", 10.0, "weight of the anchor loss: L = L_output + alpha * L_anchor", minimum=0.0,
                     maximum=1e4),
        "adapter_steps": Key("int", 100, "adapter-first steps per capability (backbone frozen)", minimum=1),
        "joint_steps": Key("int", 1000, "joint steps over every capability with the backbone unfrozen; "
                           "0 skips the joint phase", minimum=0),
        "joint": Key("str", "auto", "whether the joint phase runs: `auto` runs it for a backbone built from "
                     "config (random weights) and skips it for a pretrained one (folder or teacher:), whose "
                     "backbone stays frozen; `on` or `off` decide it", choices=("auto", "on", "off")),
        "batch_size": Key("int", 32, "items per capability per step; under torchrun the whole step's, shared "
                          "among the processes (at least one each)", minimum=1),
        "learning_rate": Key("float", 3e-3, "peak learning rate of the adapter phase", minimum=0.0,
                             exclusive_minimum=True, maximum=1.0),
        "joint_learning_rate": Key("float", 3e-3, "peak learning rate of the joint phase (lower it for a "
                                   "pretrained backbone)", minimum=0.0, exclusive_minimum=True, maximum=1.0),
        "pool_size": Key("int", 2048, "training items per capability answered by its teacher", minimum=8),
        "eval_samples": Key("int", 300, "held-out items scored per capability after training", minimum=1),
        "threads": Key("int", 2, "CPU threads for training (results repeat exactly for the same count)",
                       minimum=1),
        "parallel": Key("str", "ddp", "how the student trains under torchrun: ddp (DistributedDataParallel: a whole "
                        "student on every rank, gradients all-reduced) or fsdp (FSDP2 fully_shard: each decoder block "
                        "and the rest sharded across the ranks, with their gradients and AdamW state)",
                        choices=("ddp", "fsdp")),
        "checkpoint_every": Key("int", 100, "steps between checkpoints", minimum=1),
        "check_every": Key("int", 50, "steps between reconstruction checks", minimum=1),
        "spike_factor": Key("float", 5.0, "a loss above this times its running mean is a spike", minimum=1.0,
                            exclusive_minimum=True, maximum=1000.0),
        "drift_threshold": Key("float", 0.3, "a reconstruction (a share of variance) this far below its best "
                               "rolls back", minimum=0.0, maximum=1.0),
        "alpha_escalation": Key("float", 2.0, "alpha is multiplied by this at each rollback (1: kept)",
                                minimum=1.0, maximum=100.0),
        "lr_backoff": Key("float", 0.5, "the learning rate is multiplied by this at each rollback (1: kept)",
                          minimum=0.0, exclusive_minimum=True, maximum=1.0),
        "max_rollbacks": Key("int", 8, "rollbacks allowed per phase before the stage fails", minimum=0),
    },
    "package": {
        "scheme": Key("str", "int8", "quantization of backbone and adapters in the bundle", choices=("int8", "nf4")),
        "bundle_dir": Key("str", "", "bundle folder (relative to this config file); empty: "
                          "<run dir>/bundles/nexus_bundle_v1"),
        "max_fp32_ratio": Key("float", 0.35, "largest bundle weights size as a share of the fp32 student",
                              minimum=0.0, exclusive_minimum=True, maximum=1.0),
        "max_size_gb": Key("float", 4.0, "largest bundle weights size in GB (the seed's 2-4 GB target for "
                           "real backbones)", minimum=0.0, exclusive_minimum=True, maximum=1e4),
    },
    "cleanup": {
        "delete_teachers": Key("bool", True, "with --yes, stage 7 also deletes the demo teachers' folders "
                               "(the ones Nexus built: inside registry.models_dir, with nexus_demo.json)"),
        "delete_user_teachers": Key("bool", False, "with --yes, stage 7 also deletes your own teacher folders "
                                    "(inside registry.models_dir only); off unless you set it"),
    },
    "registry": {
        "csv": Key("path", "ModelName-Parameters-Category-BestFeature.csv",
                   "teacher inventory CSV (Model Name, Parameters, Category, Best Feature)"),
        "models_dir": Key("path", "models", "folder holding one sub-folder per teacher"),
    },
}

_KIND_NAMES = {
    "str": "a string",
    "name": "a string",
    "path": "a path string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list[str]": "a list of strings",
}


def _kind_matches(kind: str, value: Any) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "str": lambda v: isinstance(v, str),
        "name": lambda v: isinstance(v, str),
        "path": lambda v: isinstance(v, str) and v.strip() != "",
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    }
    return checks[kind](value)


def _range_text(key: Key) -> str:
    """`> 0.0 and <= 1.0` style: the allowed range of a bounded number."""
    parts = []
    if key.minimum is not None:
        parts.append(f"{'>' if key.exclusive_minimum else '>='} {key.minimum}")
    if key.maximum is not None:
        parts.append(f"<= {key.maximum}")
    return " and ".join(parts)


def _in_range(key: Key, value: float) -> bool:
    if key.minimum is not None and (value <= key.minimum if key.exclusive_minimum else value < key.minimum):
        return False
    return key.maximum is None or value <= key.maximum


def _nearest(name: str, candidates: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (valid keys: {', '.join(prefix + c for c in sorted(candidates))})"


def _check_table(
    source: Path, table: Mapping[str, Any], keys: Mapping[str, Key], prefix: str
) -> None:
    for name, value in table.items():
        path = f"{prefix}{name}"
        key = keys.get(name)
        if key is None:
            raise ConfigError(f"{source}: unknown key '{path}'{_nearest(name, list(keys), prefix)}")
        if not _kind_matches(key.kind, value):
            raise ConfigError(
                f"{source}: key '{path}' must be {_KIND_NAMES[key.kind]}, "
                f"got {type(value).__name__} {value!r}"
            )
        if key.choices and value not in key.choices:
            raise ConfigError(
                f"{source}: key '{path}' must be one of {', '.join(key.choices)}; got {value!r}"
            )
        if key.kind == "name" and not NAME_PATTERN.fullmatch(value):
            raise ConfigError(
                f"{source}: key '{path}' must be a name of 1-128 letters, digits, '.', '_' or '-' "
                f"starting with a letter, digit or '_' (it names a folder); got {value!r}"
            )
        # An int is finite (and math.isfinite overflows on one beyond float's range).
        if key.kind == "float" and not isinstance(value, int) and not math.isfinite(value):
            raise ConfigError(f"{source}: key '{path}' must be a finite number; got {value!r}")
        if key.kind in ("int", "float") and not _in_range(key, value):
            raise ConfigError(f"{source}: key '{path}' must be {_range_text(key)}; got {value!r}")


def validate(source: Path, raw: Mapping[str, Any]) -> None:
    """Raise `ConfigError` naming the dotted key path for any unknown or mistyped key."""
    sections = [*SCHEMA, "capabilities"]
    for section, table in raw.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown key '{section}'{_nearest(section, sections, '')}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: key '{section}' must be a table ([{section}])")
        if section != "capabilities":
            _check_table(source, table, SCHEMA[section], f"{section}.")
            continue
        for capability, settings in table.items():
            if not isinstance(settings, dict):
                raise ConfigError(
                    f"{source}: key 'capabilities.{capability}' must be a table "
                    f"([capabilities.{capability}])"
                )
            _check_table(source, settings, CAPABILITY_KEYS, f"capabilities.{capability}.")


def read_toml(source: Path) -> dict[str, Any]:
    """Parse `source`, turning a missing file or bad syntax into a `ConfigError`."""
    try:
        with source.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def _resolve_value(key: Key, value: Any, base: Path) -> Any:
    if key.kind == "path" and value is not None:
        return str((base / Path(value).expanduser()).resolve())
    if key.kind == "float" and value is not None:
        return float(value)
    if isinstance(value, list):
        return list(value)
    return value


@dataclass(frozen=True)
class Config:
    """A validated config: `values` holds every schema key, defaults filled, paths absolute."""

    source: Path
    values: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        return self.values[name]

    def capability_settings(self, name: str) -> dict[str, Any]:
        """The `[capabilities.<name>]` table with every key present (None where unset)."""
        return dict(self.values["capabilities"].get(name, {key: None for key in CAPABILITY_KEYS}))

    def check_capability_names(self, installed: list[str]) -> None:
        """Raise `ConfigError` for a `[capabilities.<name>]` table no installed plugin provides."""
        for name in self.values["capabilities"]:
            if name not in installed:
                raise ConfigError(
                    f"{self.source}: unknown key 'capabilities.{name}': no installed plugin "
                    f"provides capability {name!r}{_nearest(name, installed, 'capabilities.')}"
                )


def load_config(source: Path) -> Config:
    """Read, validate and resolve the TOML config at `source`."""
    source = source.expanduser().resolve()
    raw = read_toml(source)
    validate(source, raw)
    base = source.parent
    values: dict[str, Any] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        values[section] = {
            name: _resolve_value(key, given.get(name, key.default), base)
            for name, key in keys.items()
        }
    values["capabilities"] = {
        capability: {
            name: _resolve_value(key, settings.get(name, key.default), base)
            for name, key in CAPABILITY_KEYS.items()
        }
        for capability, settings in sorted(raw.get("capabilities", {}).items())
    }
    return Config(source=source, values=values)


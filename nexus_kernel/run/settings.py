"""Per-capability settings, resolved once at the config lock and read back by later stages.

A capability's plugin declares its defaults (`Capability.max_rank`, `alpha_scale`,
`pool_scale`; `text_loss` is "auto" for every plugin); a config's `[capabilities.<name>]` table overrides any of them. Stage 0 resolves
the two into one `CapabilitySettings` per capability and records it in its lock
(`LOCK_FILE`, `scope.capabilities.<name>`); every later stage reads it from there with
`locked_settings`, so no stage resolves a setting again or sees a value the lock does not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nexus_kernel.capability import Capability
from nexus_kernel.config import TEXT_LOSSES
from nexus_kernel.errors import LockError
from nexus_kernel.run.layout import LOCK_FILE


@dataclass(frozen=True)
class CapabilitySettings:
    """The effective settings of one capability in a run.

    `max_rank` caps its adapter's rank; `alpha_scale` multiplies `distill.alpha` for its anchor
    loss; `pool_scale` multiplies `distill.pool_size` for its pool; `data_dir` is the configured
    folder of real benchmark data (None: synthetic data); `text_loss` the output loss of a text
    capability ("auto": `kl` when every teacher token is a student token, else `sequence`; or
    "uld", "sequence"), applied by stage 4 (`distill_pool.chosen_plan`).
    """

    max_rank: int
    alpha_scale: float
    pool_scale: float
    data_dir: str | None = None
    text_loss: str = "auto"

    @classmethod
    def resolve(cls, capability: Capability, configured: Mapping[str, Any]) -> CapabilitySettings:
        """The plugin's declaration, overridden by each key `configured` (a validated
        `Config.capability_settings` table) sets to something other than None."""

        def pick(key: str, declared: Any) -> Any:
            value = configured.get(key)
            return declared if value is None else value

        return cls(max_rank=int(pick("max_rank", capability.max_rank)),
                   alpha_scale=float(pick("alpha_scale", capability.alpha_scale)),
                   pool_scale=float(pick("pool_scale", capability.pool_scale)),
                   data_dir=configured.get("data_dir"), text_loss=str(pick("text_loss", "auto")))

    def pool_size(self, base: int) -> int:
        """`distill.pool_size` scaled for this capability (at least one item)."""
        return max(1, round(base * self.pool_scale))

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON; `text_loss` only when it is not "auto", so a lock that sets
        none stays what it was before the key existed."""
        data = asdict(self)
        if self.text_loss == "auto":
            del data["text_loss"]
        return data

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any], source: Path) -> CapabilitySettings:
        """Read back what `to_json` wrote; a missing or mistyped key is a `LockError` naming
        the capability, the key and the lock file."""
        values = {}
        for key, kinds in (("max_rank", (int,)), ("alpha_scale", (int, float)), ("pool_scale", (int, float))):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
                raise LockError(f"{source}: capability {name!r} has no valid {key!r} in its lock "
                                f"(got {value!r}); rerun with --relock to write a new one")
            values[key] = value
        data_dir = data.get("data_dir")
        if data_dir is not None and not isinstance(data_dir, str):
            raise LockError(f"{source}: capability {name!r} has no valid 'data_dir' in its lock "
                            f"(got {data_dir!r}); rerun with --relock to write a new one")
        # No `text_loss` in a lock means "auto" (see `to_json`).
        text_loss = data.get("text_loss", "auto")
        if text_loss not in TEXT_LOSSES:
            raise LockError(f"{source}: capability {name!r} has no valid 'text_loss' in its lock "
                            f"(got {text_loss!r}; one of {', '.join(TEXT_LOSSES)}); rerun with --relock to write a new one")
        return cls(int(values["max_rank"]), float(values["alpha_scale"]), float(values["pool_scale"]), data_dir,
                   text_loss)


def locked_settings(run_dir: Path) -> dict[str, CapabilitySettings]:
    """Each locked capability's settings, as stage 0 recorded them in `run_dir`."""
    path = run_dir / LOCK_FILE
    try:
        capabilities = json.loads(path.read_text(encoding="utf-8"))["scope"]["capabilities"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LockError(f"{path}: unreadable lock ({exc}); rerun stage 0 (`nexus run --from lock`)") from None
    return {name: CapabilitySettings.from_json(name, entry, path) for name, entry in capabilities.items()}

"""Nexus kernel: hookspecs, plugin manager, config, stages and the generic algorithms.

Plugins import `hookimpl` and `Capability` from here. Importing this package never imports
torch.
"""

from __future__ import annotations

import pluggy

from nexus_kernel.capability import Capability
from nexus_kernel.contracts import AdapterSpec, ProbePlan, Score

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("nexus")
"""Marker for plugin hook implementations: `@hookimpl def register_capabilities(): ...`."""



def load_bundle(path: object, plugins: object = None) -> object:
    """Verify and load a bundle (see `nexus_kernel.student.packaging.load_bundle`); imports torch."""
    from pathlib import Path

    from nexus_kernel.student.packaging import load_bundle as load

    return load(Path(str(path)), plugins)  # type: ignore[arg-type]


__all__ = ["AdapterSpec", "Capability", "ProbePlan", "Score", "__version__", "hookimpl", "load_bundle"]

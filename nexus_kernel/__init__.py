"""Nexus kernel: hookspecs, plugin manager, config, stages and the generic algorithms.

Plugins import `hookimpl` and `Capability` from here. Importing this package never imports
torch.
"""

from __future__ import annotations

from nexus_kernel.capability import Capability
from nexus_kernel.contracts import AdapterSpec, ProbePlan, Score
from nexus_kernel.hookspecs import hookimpl
from nexus_kernel.kit.plugin_kit import CapabilityPlugin

__version__ = "0.3.0"


def load_bundle(path: object, plugins: object = None) -> object:
    """Verify and load a bundle (see `nexus_kernel.student.packaging.load_bundle`); imports torch."""
    from pathlib import Path

    from nexus_kernel.student.packaging import load_bundle as load

    return load(Path(str(path)), plugins)  # type: ignore[arg-type]


__all__ = ["AdapterSpec", "Capability", "CapabilityPlugin", "ProbePlan", "Score", "__version__", "hookimpl", "load_bundle"]

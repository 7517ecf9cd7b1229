"""Errors a user can act on. Each carries the exit code the CLI returns for it."""

from __future__ import annotations


class NexusError(Exception):
    """Base of every error Nexus reports to a user as one clear message (no traceback)."""

    exit_code = 2


class ConfigError(NexusError):
    """The TOML config is unreadable, has an unknown key or a value of the wrong type."""


class LockError(NexusError):
    """The config changed after stage 0 locked it, and `--relock` was not given."""


class RegistryError(NexusError):
    """The teacher CSV is malformed: the message names the file, row and column."""


class PluginError(NexusError):
    """A plugin failed to load (with `--strict`) or broke the plugin contract."""


class CapabilityConflict(PluginError):
    """Two distributions claim the same capability."""


class StageError(NexusError):
    """A stage failed, or stages were asked for in an order that cannot run."""

    exit_code = 1


class EnvironmentCheckError(StageError):
    """A required piece of the environment is missing (stage -1)."""


class DatasetError(NexusError):
    """A data file or folder is missing or malformed: the message names the file and row."""


class ExitCodeError(NexusError):
    """An error whose exit code is decided where it happens: another process's failure (a
    rank of a torchrun group) reported here with that process's code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

"""`CapabilityPlugin`: one capability's hooks, made from its declaration and two modules.

A capability package's `__init__.py` declares its `Capability` and one plugin object, and its
entry point (group `nexus`) names that object:

    plugin = CapabilityPlugin(CAPABILITY, teacher="nexus_cap_math.teacher",
                              student="nexus_cap_math.student", synthetic="gsm8k-words-v1")

    # pyproject.toml
    [project.entry-points.nexus]
    math = "nexus_cap_math:plugin"

The arguments are keywords, and the hooks are the object's methods, bound by name by pluggy,
so nothing can be bound to the wrong hook. `teacher` names a module that provides
`TeacherModule` (and optionally `OptionalTeacherParts`), `student` one that provides
`StudentModule` (and optionally the parts of `OptionalStudentParts`); both are imported only
when a hook needs them, so importing the plugin stays light, and each is checked against its
protocol on first import: a missing function or a parameter of the wrong name is a
`PluginError` naming the module and the rule.
A subclass may override any hook method (for example `anchor_loss`); an override is marked
as a hook implementation automatically.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from nexus_kernel.capability import Capability
from nexus_kernel.contracts import DemoTeacher, DistillPlan, ProbePlan, Score
from nexus_kernel.errors import PluginError
from nexus_kernel.hookspecs import hook_names, hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nexus_kernel.contracts import AdapterSpec


class TeacherModule(Protocol):
    """What the module named by `CapabilityPlugin(teacher=...)` provides."""

    def demo(self) -> DemoTeacher | None:
        """The demo teacher the plugin can train locally (`nexus teachers build`), or None
        when users must register their own teacher through the CSV's `Path` column."""

    def probe_plan(self, teacher: Any, n_probe: int, datasets: Mapping[str, str]) -> ProbePlan:
        """Stage 2's plan for a loaded teacher (`LoadedTeacher`: `.model`, `.folder`, `.name`):
        `n_probe` probe samples in batches, a sample stream, candidate layers and a loss; see
        `nexus_kernel.algorithms.profiling.plan_from_items`."""


class OptionalTeacherParts(Protocol):
    """What a teacher module may also provide; checked when present."""

    def capability_for(self, capability: Capability, folder: str) -> Capability | None:
        """The capability as distilled from the teacher in `folder` (the `teacher_capability`
        hook): None for the declared one, or a variant with another `output` and `benchmarks`."""


class StudentModule(Protocol):
    """What the module named by `CapabilityPlugin(student=...)` provides."""

    def distill_plan(self, teacher: Any, student: Any, datasets: Mapping[str, str]) -> DistillPlan:
        """Stage 4's plan. Called twice: with `teacher=None` (only `items` is used) and with
        the loaded teacher. `student` is the `NexusStudent` (its tokenizer: `student.tokenizer`)."""

    def score(self, model: Any, split: str, datasets: Mapping[str, str], limit: int | None,
              reference: Mapping[str, torch.Tensor] | None) -> dict[str, Score]:
        """Benchmark name to `Score` for `model` (a `LoadedTeacher` or a `StudentCapability`) on
        the first `limit` items of `split`; `reference` is what `reference` (optional, below)
        recorded from the teacher, else None. `capability.benchmarks[0]` must be a key."""

    def answer(self, model: Any, inputs: list[str], assets: Mapping[str, torch.Tensor]) -> str:
        """What `nexus infer` prints for the user's `inputs` with the packaged student."""


class OptionalStudentParts(Protocol):
    """What a student module may also provide; each is checked when present."""

    def projector(self, spec: AdapterSpec) -> nn.Module:
        """The input projector of a capability whose modality is not `text`: a module with an
        `input_shape` attribute (one item's shape without the batch) mapping a batch of inputs to
        `(batch, positions, spec.hidden_size)`. Required for those capabilities."""

    def assets(self, model: Any, datasets: Mapping[str, str]) -> dict[str, torch.Tensor]:
        """Inference-time tensors stored in the bundle (e.g. class centroids)."""

    def reference(self, teacher: Any, split: str, datasets: Mapping[str, str], limit: int | None
                  ) -> dict[str, torch.Tensor]:
        """The teacher's outputs on the items `score` reads, handed back to `score` as `reference`."""


def _parameters(function: Any) -> list[str]:
    return [name for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)]


def _rules(protocol: type) -> Iterator[tuple[str, list[str]]]:
    for name, member in vars(protocol).items():
        if inspect.isfunction(member) and not name.startswith("_"):
            yield name, _parameters(member)[1:]  # without `self`


def module_problems(module: ModuleType, protocol: type, required: bool = True) -> list[str]:
    """What `module` lacks of `protocol`: one line per missing function (when `required`) or
    per function whose leading parameters are not named as the protocol names them."""
    problems = []
    for name, wanted in _rules(protocol):
        function = getattr(module, name, None)
        if function is None:
            if required:
                problems.append(f"no function {name}({', '.join(wanted)})")
            continue
        if not callable(function):
            problems.append(f"{name} is not a function")
            continue
        found = _parameters(function)
        if found[: len(wanted)] != wanted:
            problems.append(f"{name}({', '.join(found)}) must take ({', '.join(wanted)})")
    return problems


def check_module(module: ModuleType, role: str, capability: str) -> None:
    """Raise `PluginError` listing how `module` breaks the protocol of its `role` (`teacher`
    or `student`)."""
    if role == "teacher":
        problems = module_problems(module, TeacherModule) + module_problems(module, OptionalTeacherParts, False)
    else:
        problems = module_problems(module, StudentModule) + module_problems(module, OptionalStudentParts, False)
    if problems:
        raise PluginError(f"capability {capability!r}: {role} module {module.__name__} breaks the "
                          f"{role.capitalize()}Module protocol: " + "; ".join(problems))


class CapabilityPlugin:
    """The hooks of one capability (see the module docstring). `synthetic` is the label of the
    plugin's seeded synthetic data, used when the config gives no `data_dir`; without it the
    capability reads only `capabilities.<name>.data_dir`."""

    def __init__(self, capability: Capability, *, teacher: str, student: str, synthetic: str | None = None) -> None:
        if not isinstance(capability, Capability):
            raise TypeError(f"CapabilityPlugin takes a Capability, not {type(capability).__name__}")
        self.capability = capability
        self.teacher_module_name = teacher
        self.student_module_name = student
        self.synthetic = synthetic
        self._checked: dict[str, ModuleType] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in hook_names():
            override = cls.__dict__.get(name)
            if inspect.isfunction(override) and not hasattr(override, "nexus_impl"):
                setattr(cls, name, hookimpl(override))

    def __repr__(self) -> str:
        return f"CapabilityPlugin({self.capability.name!r})"

    def teacher_module(self) -> ModuleType:
        """The teacher module, imported and checked against `TeacherModule`."""
        return self._module(self.teacher_module_name, "teacher")

    def student_module(self) -> ModuleType:
        """The student module, imported and checked against `StudentModule`."""
        return self._module(self.student_module_name, "student")

    def _module(self, name: str, role: str) -> ModuleType:
        """`name` imported and checked on first use; every later hook call reuses it."""
        if name not in self._checked:
            module = importlib.import_module(name)
            check_module(module, role, self.capability.name)
            self._checked[name] = module
        return self._checked[name]

    @hookimpl
    def register_capabilities(self) -> list[Capability]:
        return [self.capability]

    @hookimpl
    def resolve_datasets(self, capability: Capability, settings: Mapping[str, Any]) -> dict[str, str]:
        from nexus_kernel.kit.datasets import resolve_source

        if self.synthetic is None and not settings.get("data_dir"):
            raise PluginError(f"capability {capability.name!r} has no synthetic data: set "
                              f"capabilities.{capability.name}.data_dir in the config")
        source = resolve_source(settings, self.synthetic or "")
        return {"train": source, "test": source}

    @hookimpl
    def demo_teacher(self, capability: Capability, settings: Mapping[str, Any]) -> DemoTeacher | None:
        return self.teacher_module().demo()  # type: ignore[no-any-return]

    @hookimpl
    def teacher_capability(self, capability: Capability, folder: str) -> Capability | None:
        choose = getattr(self.teacher_module(), "capability_for", None)
        return choose(capability, folder) if choose is not None else None

    @hookimpl
    def profile_capability(self, capability: Capability, teacher: Any, n_probe: int,
                           datasets: Mapping[str, str]) -> ProbePlan:
        return self.teacher_module().probe_plan(teacher, n_probe, datasets)  # type: ignore[no-any-return]

    @hookimpl
    def build_adapter(self, capability: Capability, spec: AdapterSpec) -> Any:
        from nexus_kernel.student.model import CapabilityAdapter

        make_projector = getattr(self.student_module(), "projector", None)
        return CapabilityAdapter(spec, make_projector(spec) if make_projector is not None else None)

    @hookimpl
    def distill_capability(self, capability: Capability, teacher: Any, student: Any,
                           datasets: Mapping[str, str]) -> DistillPlan:
        return self.student_module().distill_plan(teacher, student, datasets)  # type: ignore[no-any-return]

    @hookimpl
    def reference_outputs(self, capability: Capability, teacher: Any, split: str, datasets: Mapping[str, str],
                          limit: int | None) -> Any:
        make_reference = getattr(self.student_module(), "reference", None)
        return make_reference(teacher, split, datasets, limit) if make_reference is not None else None

    @hookimpl
    def retention_metric(self, capability: Capability, model: Any, split: str, datasets: Mapping[str, str],
                         limit: int | None, reference: Any) -> dict[str, Score]:
        return self.student_module().score(model, split, datasets, limit, reference)  # type: ignore[no-any-return]

    @hookimpl
    def package_assets(self, capability: Capability, model: Any, datasets: Mapping[str, str]) -> Any:
        make_assets = getattr(self.student_module(), "assets", None)
        return make_assets(model, datasets) if make_assets is not None else None

    @hookimpl
    def answer(self, capability: Capability, model: Any, inputs: list[str], assets: Mapping[str, Any]) -> str:
        return self.student_module().answer(model, inputs, assets)  # type: ignore[no-any-return]


def standard_hooks(*_args: Any, **_kwargs: Any) -> tuple[Any, ...]:
    """Removed in nexus-kernel 0.2 (it returned nine hooks bound by position). Raises
    `PluginError` saying what replaces it, so an old plugin fails to load with that reason."""
    raise PluginError("plugin_kit.standard_hooks was removed in nexus-kernel 0.2: declare "
                      "`plugin = CapabilityPlugin(CAPABILITY, teacher=..., student=..., synthetic=...)` "
                      "in the package and point its `nexus` entry point at it (CONTRIBUTING.md)")

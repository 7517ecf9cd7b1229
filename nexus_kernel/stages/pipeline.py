"""The stage table: stages -1 to 7, in order, with what each one writes and what its input
hash covers, and which of them every rank runs under torchrun (`shared`). The stages stand side by side: each reads earlier stages' artifacts through
`nexus_kernel.run.layout`, never another stage's module."""

from __future__ import annotations

from nexus_kernel.run import layout
from nexus_kernel.run.runner import Stage
from nexus_kernel.stages import (
    architecture,
    cleanup,
    distill,
    doctor,
    lock,
    package,
    profile,
    registry,
    validate,
)


def stages() -> list[Stage]:
    """Every stage of the pipeline, in order."""
    return [
        Stage(-1, "doctor", "environment check", (layout.ENV_FILE,), doctor.run_doctor, doctor.doctor_inputs),
        Stage(0, "lock", "config lock", (str(layout.LOCK_FILE), str(layout.SEED_FILE)), lock.run_lock,
              lock.build_scope),
        Stage(1, "registry", "teacher registry", (layout.REGISTRY_FILE,), registry.run_registry,
              registry.registry_inputs),
        Stage(2, "profile", "profiling (NIWT)", (layout.PROFILE_SUMMARY,), profile.run_profile,
              profile.profile_inputs, shared=True),
        Stage(3, "architecture", "architecture", (layout.ARCHITECTURE_FILE,), architecture.run_architecture,
              lambda context: context.config.section("student")),
        Stage(4, "distill", "distillation", (layout.STUDENT_FILE, layout.DISTILL_REPORT), distill.run_distill,
              lambda context: context.config.section("distill"), shared=True),
        Stage(5, "validate", "teacher removal and retention", (layout.VERIFY_REPORT,), validate.run_validate),
        Stage(6, "package", "quantization and bundle", (layout.PACKAGE_REPORT,), package.run_package,
              lambda context: context.config.section("package"), package.bundle_still_valid),
        Stage(7, "cleanup", "archive and cleanup", (layout.CLEANUP_REPORT,), cleanup.run_cleanup,
              lambda context: {**context.config.section("cleanup"), "confirm": context.confirm_deletions}),
    ]

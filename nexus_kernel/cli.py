"""The `nexus` command. Each command is a thin layer over library functions the tests call.

Nothing here imports torch at module level: `nexus --help` and `nexus plugins` stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from nexus_kernel import __version__
from nexus_kernel.config import DEFAULT_CONFIG, Config, load_config
from nexus_kernel.errors import ExitCodeError, NexusError, StageError
from nexus_kernel.plugins import PluginSet, choose_allow_list, load_plugins

if TYPE_CHECKING:
    from nexus_kernel.run.runner import Leader, RunContext

_plugins_option = click.option(
    "--plugins", "plugins_text", metavar="A,B",
    help="Allow-list of plugins (entry-point or distribution names); overrides NEXUS_PLUGINS "
         "and the config's plugins.enabled. Plugins left out are never registered, and their "
         "teachers' CSV rows are left out.")
_strict_option = click.option(
    "--strict", is_flag=True, help="A plugin that fails to load is an error, not a warning.")
_config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG,
    show_default=True, help="TOML config file.")


def _load_selected_plugins(plugins_text: str | None, strict: bool,
                           config: Config | None) -> tuple[PluginSet, bool]:
    configured = config.section("plugins")["enabled"] if config else []
    always = config.section("plugins")["always_load"] if config else ["quant-bnb"]
    allow = choose_allow_list(plugins_text, os.environ, configured)
    plugin_set = load_plugins(allow, always=always, strict=strict)
    for record in plugin_set.failed:
        click.echo(f"warning: plugin {record.name!r} from distribution {record.distribution} "
                   f"failed to load and was skipped: {record.error}", err=True)
    return plugin_set, allow is not None


def _print_plugins(plugin_set: PluginSet) -> None:
    if not plugin_set.loaded:
        click.echo("no plugins loaded")
    for record in plugin_set.loaded:
        click.echo(f"{record.name}  ({record.distribution} {record.version})")
        for capability in record.capabilities:
            click.echo(f"  capability {capability.name}: {capability.modality}; categories "
                       f"{', '.join(capability.categories)}; benchmarks "
                       f"{', '.join(capability.benchmarks)}; max rank {capability.max_rank}")
        click.echo(f"  hooks: {', '.join(record.hooks) or 'none'}")
    for record in plugin_set.failed:
        click.echo(f"{record.name}  ({record.distribution} {record.version})  FAILED: {record.error}")
    if plugin_set.not_selected:
        click.echo("not selected: " + ", ".join(r.name for r in plugin_set.not_selected))
    for conflict in plugin_set.conflicts():
        click.echo(f"CONFLICT: {conflict}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nexus")
def cli() -> None:
    """Nexus: distil several teachers into one small student with one adapter per capability."""


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_plugins_option
@_strict_option
def plugins_command(as_json: bool, plugins_text: str | None, strict: bool) -> None:
    """List installed plugins: name, version, capabilities and hooks."""
    plugin_set, _ = _load_selected_plugins(plugins_text, strict, None)
    if as_json:
        click.echo(json.dumps(plugin_set.describe(), indent=2))
    else:
        _print_plugins(plugin_set)


@cli.command("doctor")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--plan", "with_plan", is_flag=True, help="Print the memory plan of the config's teachers and student "
              "(per stage and quantization option, from each config.json on the meta device).")
def doctor_command(config_path: Path, as_json: bool, with_plan: bool) -> None:
    """Check the environment (stage -1): torch, bitsandbytes, ffmpeg, devices, memory."""
    from nexus_kernel.stages.doctor import examine

    if with_plan:
        _print_memory_plan(load_config(config_path), as_json)
        return
    hardware = load_config(config_path).section("hardware") if config_path.exists() else {
        "memory_budget_gb": 16.0, "device": "auto"}
    report = examine(hardware["memory_budget_gb"], hardware["device"])
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for check in report.checks:
            fix = f"  -> {check.fix}" if check.fix and not check.ok else ""
            click.echo(f"[{check.level:^7}] {check.name}: {check.detail}{fix}")
        click.echo(f"device: {report.device}; RAM {report.ram_available_gb:.1f} of "
                   f"{report.ram_total_gb:.1f} GB free; memory budget {report.memory_budget_gb:g} GB")
    if report.missing:
        raise StageError("required pieces are missing: "
                         + ", ".join(check.name for check in report.missing))


def _print_memory_plan(config: Config, as_json: bool) -> None:
    """`nexus doctor --plan`: the registry's teachers (a folder not there yet is named as
    such) and the student through `memory_plan.plan_report`."""
    import torch

    from nexus_kernel.algorithms.memory_plan import format_report, plan_report
    from nexus_kernel.teachers.registry import read_registry

    registry = config.section("registry")
    plugin_set, selection_active = _load_selected_plugins(None, False, config)
    capabilities = {name: (capability, record.distribution)
                    for name, (capability, record) in plugin_set.capabilities().items()}
    entries = read_registry(Path(registry["csv"]), capabilities, Path(registry["models_dir"]),
                            selection_active=selection_active)
    teachers: dict[str, Path | str] = {}
    for entry in entries:
        folder = Path(entry.path)
        teachers[entry.name] = folder if (folder / "config.json").is_file() else (
            f"no config.json in {folder}: not built yet (stage 1 builds the demo teachers) or missing")
    hardware = config.section("hardware")
    device = hardware["device"] if hardware["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    report = plan_report(teachers, config.section("student"), config.section("profiling"), config.section("distill"),
                         hardware["memory_budget_gb"], device, tasks=max(1, len({e.capability for e in entries})))
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@cli.command("run")
@_config_option
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Run directory [default: runs/<run.name>].")
@_plugins_option
@_strict_option
@click.option("--from", "start", metavar="STAGE", help="Rerun STAGE (name or number) and all after it.")
@click.option("--only", metavar="STAGE", help="Run only STAGE; earlier stages must be up to date.")
@click.option("--to", "until", metavar="STAGE", help="Stop after STAGE (name or number).")
@click.option("--force", is_flag=True, help="Rerun every stage.")
@click.option("--relock", is_flag=True, help="Accept a config changed since the lock.")
@click.option("--yes", is_flag=True, help="Stage 7 deletes what its dry run lists: the run's training-only "
              "artifacts and the demo teachers Nexus built in registry.models_dir (your own teacher folders "
              "only with cleanup.delete_user_teachers = true).")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level log lines.")
@click.option("--nproc", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run on N processes of this machine: starts `torchrun --standalone --nproc-per-node N -m "
                   "nexus_kernel run ...` with the other options (profiling and distillation are sharded; gloo on "
                   "CPU, NCCL on CUDA). For several machines, run torchrun with its rendezvous flags yourself.")
def run_command(config_path: Path, run_dir: Path | None, plugins_text: str | None, strict: bool,
                start: str | None, only: str | None, until: str | None, force: bool, relock: bool,
                yes: bool, verbose: bool, nproc: int | None) -> None:
    """Run the pipeline, skipping stages whose inputs are unchanged."""
    from nexus_kernel.run import distributed
    from nexus_kernel.run.directory_lock import exclusive_run_directory
    from nexus_kernel.run.logs import configure_logging, get_logger
    from nexus_kernel.run.roots import check_run_roots
    from nexus_kernel.run.runner import FollowerStopped, Leader, RunContext, follow
    from nexus_kernel.stages.pipeline import stages
    from nexus_kernel.stages.validate import restore_moved_teachers

    if nproc is not None and distributed.launched():
        started = os.environ.get("WORLD_SIZE")
        if str(nproc) != started:
            raise click.UsageError(f"--nproc {nproc} under torchrun, which started {started} processes: drop --nproc "
                                   "(torchrun's --nproc-per-node decides)")
    elif nproc is not None and nproc > 1:
        _start_torchrun(nproc, _forwarded_options(click.get_current_context(), leave_out="nproc"))
    config = load_config(config_path)
    run_dir = (run_dir or Path("runs") / config.section("run")["name"]).resolve()
    check_run_roots(config, run_dir)
    plugin_set, selection_active = _load_selected_plugins(plugins_text, strict, config)
    plugin_set.capabilities()  # a conflict stops here, before anything is written
    here = distributed.start(config.section("hardware")["device"])
    leader = Leader()
    settled = False  # whether every rank reaches the end together (then they wait for each other)
    try:
        if not here.main:
            configure_logging(run_dir / "logs" / f"events.rank{here.rank}.jsonl", verbose=verbose, quiet_console=True)
            try:
                follow(stages(), RunContext(run_dir, config, plugin_set, selection_active, confirm_deletions=yes))
            except FollowerStopped:
                settled = True
                raise
            settled = True
            return
        with leader.leading(), exclusive_run_directory(run_dir) as previous:
            configure_logging(run_dir / "logs" / "events.jsonl", verbose=verbose)
            if previous is not None:
                get_logger("run").warning("took over the run directory from a run that ended without "
                                          "releasing it", previous=previous)
            restore_moved_teachers(run_dir)  # before stage 1 could take a moved teacher for a missing one
            context = RunContext(run_dir, config, plugin_set, selection_active, confirm_deletions=yes)
            _run_stages(context, start, only, until, force, relock, leader)
        settled = True
    except Exception:
        settled = settled or (here.main and not leader.sharing)
        raise
    finally:
        distributed.stop(settled)


class LaunchFailed(ExitCodeError):
    """A process `nexus run --nproc` started ended badly; its own message is above."""


def _forwarded_options(context: click.Context, leave_out: str) -> list[str]:
    """The command line of `context`'s command as click parsed it (the options given, not
    their defaults), without the option `leave_out`: what each process torchrun starts runs."""
    arguments = [context.info_name or context.command.name or ""]
    for parameter in context.command.params:
        name = parameter.name or ""
        value = context.params.get(name)
        given = context.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
        if name == leave_out or not given or not isinstance(parameter, click.Option):
            continue
        if parameter.is_flag:
            arguments += [max(parameter.opts, key=len)] if value else []
        elif value is not None:
            arguments += [max(parameter.opts, key=len), str(value)]
    return arguments


def _start_torchrun(nproc: int, arguments: list[str]) -> None:
    """Run `nexus <arguments>` on `nproc` processes through torchrun's own entry
    (`torch.distributed.run`, standalone rendezvous), then exit with the run's code: 0, or the
    code of the first process that failed (`LaunchFailed`, one line instead of torchrun's
    traceback; the process's own message is printed above it). Each process gets an equal
    share of the cores as `OMP_NUM_THREADS` unless it is set. torchrun's own log folder is a
    temporary one, removed afterwards (each rank logs to the run's `logs/`)."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would set one thread a process and warn; the machine's cores shared out instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory(prefix="nexus-torchrun-") as torchrun_logs:
        try:
            run(parse_args(["--standalone", f"--nproc-per-node={nproc}", f"--log-dir={torchrun_logs}",
                            "-m", "nexus_kernel", *arguments]))
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            how = (f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0
                   else f"exited with code {failure.exitcode}")
            raise LaunchFailed(f"rank {rank} of {nproc} {how}", max(1, failure.exitcode)) from None
    raise SystemExit(0)


def _run_stages(context: RunContext, start: str | None, only: str | None, until: str | None,
                force: bool, relock: bool, leader: Leader) -> None:
    """`nexus run` once the run directory is held: the stages, then the summary table."""
    from nexus_kernel.run.runner import StageRunner
    from nexus_kernel.stages.lock import build_scope, check_scope
    from nexus_kernel.stages.pipeline import stages

    run_dir = context.run_dir
    if check_scope(run_dir, build_scope(context), relock):
        if only and only not in ("lock", "0"):
            raise StageError("--relock with a changed config reruns stage 0 and every stage "
                             "after it; drop --only")
        start = "lock"
    outcomes = StageRunner(stages(), context, leader).run(start=start, only=only, force=force, until=until)
    click.echo(f"\nrun {run_dir}")
    for outcome in outcomes:
        timing = f"{outcome.seconds:6.1f}s" if outcome.seconds else "       "
        click.echo(f"  {outcome.stage.number:>2} {outcome.stage.name:<13} {outcome.status:<16}"
                   f"{timing}  {outcome.detail}")
    if (run_dir / "verify_report.json").is_file():
        from nexus_kernel.run.layout import REPORT_HTML
        from nexus_kernel.run.report import collect, table

        click.echo("\n" + table(collect(run_dir)))
        if (run_dir / REPORT_HTML).is_file():
            click.echo(f"report: {run_dir / REPORT_HTML}")


@cli.group("teachers")
def teachers_group() -> None:
    """Demo teachers the capability plugins train locally (no download)."""


@teachers_group.command("build")
@_config_option
@_plugins_option
@_strict_option
@click.option("--force", is_flag=True, help="Rebuild even when a build with the same recipe exists.")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Teachers trained at once, one process (one thread) each.")
def teachers_build_command(config_path: Path, plugins_text: str | None, strict: bool, force: bool,
                           jobs: int) -> None:
    """Build the demo teachers the CSV names whose folders are missing or out of date."""
    from nexus_kernel.run.roots import check_run_roots
    from nexus_kernel.teachers.demo import ensure_teachers

    config = load_config(config_path)
    check_run_roots(config, None)
    plugin_set, selection_active = _load_selected_plugins(plugins_text, strict, config)
    bound, reports = ensure_teachers(config, plugin_set, selection_active, jobs=jobs, force=force)
    if bound.skipped:
        click.echo(bound.skipped_summary())
    if not reports:
        click.echo("no demo teachers in the CSV; nothing to build")
    for report in reports:
        click.echo(report.headline())


@cli.command("infer")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--capability", required=True, help="Which packaged capability answers.")
@click.argument("inputs", nargs=-1, required=True)
def infer_command(bundle: Path, capability: str, inputs: tuple[str, ...]) -> None:
    """Answer with a packaged student: text for math and reasoning, an image or audio path
    (then any text) for vision and voice. Checksums are verified before anything is loaded.

    \b
    nexus infer bundles/nexus_bundle_v1 --capability math "Ann has 19 cards and buys 40 more. How many cards does Ann have now?"
    nexus infer bundles/nexus_bundle_v1 --capability voice seven.wav
    """
    import torch

    from nexus_kernel.student.packaging import load_bundle

    loaded = load_bundle(bundle)
    with torch.inference_mode():
        click.echo(loaded.answer(capability, list(inputs)))


@cli.command("export")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--format", "export_format", type=click.Choice(["hf"]), default="hf", show_default=True,
              help="hf: a transformers folder (backbone/) and one PEFT LoRA adapter per capability (adapters/<name>/).")
@click.argument("out", type=click.Path(path_type=Path))
def export_command(bundle: Path, export_format: str, out: Path) -> None:
    """Write a packaged student in the ecosystem's format: transformers + PEFT load it with no
    Nexus code (README, "Serving without Nexus"). Checksums are verified first; OUT is written
    beside itself and renamed into place, and replaces only an earlier export.

    \b
    nexus export bundles/nexus_bundle_v1 --format hf exported/
    """
    from nexus_kernel.student.hf_export import describe_export, export_hf

    manifest = export_hf(bundle, out)
    for warning in manifest["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(describe_export(out, manifest))


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and an exit code."""
    # transformers' and huggingface_hub's own bars ("Loading weights", "Writing model shards")
    # would interleave with Nexus's progress and logs; the user's explicit setting wins.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except NexusError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()

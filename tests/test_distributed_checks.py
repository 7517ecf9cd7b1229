"""What a run under torchrun checks before any process group exists, and the small pieces of
the data-parallel step that need no second process: clear errors for a bad environment, the
command line `--nproc` hands to torchrun, the loss of a rank with an empty term."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nexus_kernel.run import distributed

TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}


@pytest.fixture
def torchrun_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    return monkeypatch


def test_a_complete_torchrun_environment_describes_the_world(torchrun_env: pytest.MonkeyPatch) -> None:
    assert distributed.torchrun_environment() == distributed.World(rank=1, size=2, local_rank=1, local_size=2)


@pytest.mark.parametrize("missing", ["RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"])
def test_an_incomplete_torchrun_environment_names_what_is_missing(torchrun_env: pytest.MonkeyPatch,
                                                                   missing: str) -> None:
    torchrun_env.delenv(missing)
    with pytest.raises(distributed.DistributedError, match=f"{missing} is not set: start the run with torchrun"):
        distributed.start("cpu")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("RANK", "one", "RANK='one' is not a whole number"),
    ("WORLD_SIZE", "two", "WORLD_SIZE='two' is not a whole number"),
    ("RANK", "2", "RANK=2, LOCAL_RANK=1 and LOCAL_WORLD_SIZE=2 do not fit WORLD_SIZE=2"),
    ("LOCAL_WORLD_SIZE", "3", "do not fit WORLD_SIZE=2"),
    ("NEXUS_DIST_TIMEOUT_MINUTES", "soon", "NEXUS_DIST_TIMEOUT_MINUTES='soon': give the minutes"),
    ("NEXUS_DIST_TIMEOUT_MINUTES", "0", "a number above 0"),
    ("NEXUS_DIST_TIMEOUT_MINUTES", "inf", "a number above 0"),
])
def test_a_bad_torchrun_environment_is_refused_before_joining(torchrun_env: pytest.MonkeyPatch, name: str,
                                                              value: str, message: str) -> None:
    torchrun_env.setenv(name, value)
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.start("cpu")


def test_a_local_rank_beyond_the_gpus_is_refused(torchrun_env: pytest.MonkeyPatch) -> None:
    torchrun_env.setattr(torch.cuda, "is_available", lambda: True)
    torchrun_env.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(distributed.DistributedError, match=r"local rank 1, but this machine shows 1 CUDA device"):
        distributed.start("auto")


def test_the_timeout_defaults_to_two_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_minutes() == 120.0
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2.5")
    assert distributed.timeout_minutes() == 2.5


def test_nproc_hands_torchrun_the_options_given_without_itself() -> None:
    from nexus_kernel.cli import _forwarded_options, run_command

    given = ["--config", "c.toml", "--nproc", "2", "--to", "lock", "--force", "--run-dir", "runs/x", "-v"]
    with run_command.make_context("run", given) as context:
        forwarded = _forwarded_options(context, leave_out="nproc")
    assert forwarded[0] == "run" and "--nproc" not in forwarded and "2" not in forwarded
    pairs = {forwarded[i]: forwarded[i + 1] for i in range(1, len(forwarded) - 1) if forwarded[i + 1][0] != "-"}
    assert pairs == {"--config": "c.toml", "--to": "lock", "--run-dir": "runs/x"}
    assert {"--force", "--verbose"} <= set(forwarded) and "--yes" not in forwarded  # flags only when given
    with run_command.make_context("run", ["--nproc", "2"]) as context:
        assert _forwarded_options(context, leave_out="nproc") == ["run"]  # defaults are the child's own


def test_nproc_under_torchrun_must_match_what_torchrun_started(torchrun_env: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nexus_kernel.cli import cli

    result = CliRunner().invoke(cli, ["run", "--config", str(tmp_path / "absent.toml"), "--nproc", "3"])
    assert result.exit_code == 2
    assert "--nproc 3 under torchrun, which started 2 processes: drop --nproc" in result.output


def test_a_rank_with_no_units_of_a_term_adds_zero_not_nan() -> None:
    from nexus_kernel.stages.distill import scaled_by_shares

    weight = torch.ones(3, requires_grad=True)
    empty = (weight[:0] * 2).mean()  # a mean over no tokens: NaN
    present = (weight * 3).mean()
    assert torch.isnan(empty)
    scaled = scaled_by_shares([present, empty], [3, 0], [0.5, 0.0])
    total = scaled[0] + scaled[1]
    assert float(total.detach()) == pytest.approx(1.5)
    total.backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
    assert torch.allclose(weight.grad, torch.full((3,), 0.5))
    # a NaN where the rank does have units stays NaN: a real fault must still reach the spike check
    assert torch.isnan(scaled_by_shares([empty], [2], [1.0])[0])

"""The kernel lab's VM runner (lab/vm.py) without booting anything: a stand-in for vng."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lab import kernels, vm


def _args(timeout: float = 30) -> argparse.Namespace:
    return argparse.Namespace(
        series="7.2", timeout=timeout, rwdir=[], env=[], verbose=False, cmd=["true"]
    )


def _kernel(tmp_path: Path) -> kernels.Kernel:
    return kernels.Kernel(
        series="7.2",
        release="7.2-test",
        suite="sid",
        packages={},
        vmlinuz=tmp_path / "vmlinuz",
        modules=tmp_path,
    )


@pytest.mark.parametrize(
    ("script", "want"),
    [
        ("exit 255", (255, False)),  # vng gave up before the guest ran anything
        (f"echo {vm.READY.decode()} >&2; exit 3", (3, True)),  # the command's own status
        (f"echo {vm.READY.decode()} >&2; exit 255", (255, True)),  # died under the command
    ],
)
def test_boot_reports_status_and_whether_the_command_ran(
    tmp_path: Path, script: str, want: tuple[int, bool]
) -> None:
    assert vm.boot(_kernel(tmp_path), ["sh", "-c", script], _args()) == want


def test_boot_timeout_kills_the_guest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, reached = vm.boot(_kernel(tmp_path), ["sleep", "60"], _args(timeout=1))
    assert (status, reached) == (vm.TIMEOUT_STATUS, False)
    assert "TIMEOUT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("outcomes", "status", "boots"),
    [
        ([(255, False), (0, True)], 0, 2),  # never reached the command: one more boot
        ([(255, False), (255, False)], 255, 2),  # and only one
        ([(255, True)], 255, 1),  # the command ran: never run it twice
        ([(1, True)], 1, 1),
    ],
)
def test_run_boots_again_only_when_the_command_never_ran(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    outcomes: list[tuple[int, bool]],
    status: int,
    boots: int,
) -> None:
    calls: list[list[str]] = []

    def fake_boot(
        kernel: kernels.Kernel, cmd: list[str], args: argparse.Namespace
    ) -> tuple[int, bool]:
        calls.append(cmd)
        return outcomes[len(calls) - 1]

    monkeypatch.setattr(kernels, "ensure", lambda series: _kernel(tmp_path))
    monkeypatch.setattr(vm, "vng_command", lambda vmlinuz, script, args: ["vng", script])
    monkeypatch.setattr(vm, "boot", fake_boot)
    assert vm.run(_args()) == status
    assert len(calls) == boots

"""Run one command inside a fetched Debian kernel, booted with virtme-ng under TCG.

Usage::

    python -m lab.vm --series 6.1 [--timeout SEC] [--rwdir DIR] -- CMD ARGS...

The guest shares the host's root filesystem read-only (the checkout, the tox venvs and the
Python installation are all visible), runs CMD in the current directory with
``OSSL_KTLS_ENV=kernel-<series>``, ``HOME``/``TMPDIR`` on the guest's writable /tmp and no
bytecode writing, and powers off. The exit status is CMD's. KVM is never used (it hangs on
these machines); a guest that does not finish within ``--timeout`` seconds is killed and
the runner exits with status 124.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from lab import kernels

TIMEOUT_STATUS = 124
DEFAULT_TIMEOUT = 2700.0
READY = b"@@ossl-ktls-vm-ready@@"
# Modules udev would load for QEMU's q35 devices that the lab never uses; each load costs
# seconds under TCG (kvm_amd alone ~8 s). A kernel command line blacklist stops only the
# automatic (alias) loading. The CPU-feature crypto modules (aesni_intel, ghash, sha*) stay.
BLACKLIST = (
    "kvm", "kvm_amd", "kvm_intel", "ahci", "sr_mod", "psmouse", "pcspkr", "evdev",
    "serio_raw", "button", "i2c_i801", "lpc_ich", "iTCO_wdt", "iTCO_vendor_support",
    "intel_pmc_bxt", "i6300esb", "qemu_fw_cfg", "powernow_k8", "acpi_cpufreq", "joydev",
)  # fmt: skip
PASSTHROUGH = ("LANG", "LC_ALL", "TZ", "TERM", "CI", "PYTHONHASHSEED", "PYTHONUNBUFFERED")


def log(msg: str) -> None:
    """Runner messages go to stderr, prefixed so they stand out from the guest's output."""
    print(f"vm: {msg}", file=sys.stderr, flush=True)


def guest_env(series: str, extra: list[str]) -> dict[str, str]:
    """The environment CMD sees in the guest."""
    env = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("OSSL_KTLS_")})
    sbin = "/usr/local/sbin:/usr/sbin:/sbin"
    env.update(
        {
            "OSSL_KTLS_ENV": f"kernel-{series}",
            "PATH": f"{os.environ.get('PATH', '/usr/bin:/bin')}:{sbin}",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HYPOTHESIS_STORAGE_DIRECTORY": "/tmp/.hypothesis",
        }
    )
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"vm: --env wants NAME=VALUE, got {item!r}")
        env[key] = value
    env.pop("OSSL_KTLS_KERNEL_CACHE", None)
    # The guest's HOME is its own /tmp, and it has no network: the third-party sdists
    # (interop/thirdparty.py) are read from the host's cache, which it sees read-only.
    env.setdefault(
        "OSSL_KTLS_THIRDPARTY_CACHE", os.path.expanduser("~/.cache/ossl-ktls/thirdparty")
    )
    return env


def guest_script(cwd: str, env: dict[str, str], cmd: list[str]) -> str:
    """The guest's shell script: announce readiness, cd, exec CMD with its environment.

    It goes into a file, not onto ``--exec``: vng passes ``--exec`` on the kernel command
    line, which x86 caps at 2048 bytes, and a long PATH or pytest arguments would overflow it
    (the kernel then silently truncates, losing ``init=``).
    """
    assigns = " \\\n    ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    return (
        f"#!/bin/sh\necho {READY.decode()} >&2\ncd {shlex.quote(cwd)} || exit 126\n"
        f"exec env \\\n    {assigns} \\\n    {shlex.join(cmd)}\n"
    )


def vng_command(vmlinuz: str, script: str, args: argparse.Namespace) -> list[str]:
    """The virtme-ng command line: TCG only (never KVM), 9p root, fixed memory and CPUs."""
    vng = shutil.which("vng")
    if vng is None:
        raise SystemExit("vm: vng not found on PATH; install virtme-ng (make setup does)")
    cmd = [vng, "--run", vmlinuz, "--disable-kvm", "--force-9p", *(["-v"] if args.verbose else [])]
    cmd += ["--memory", args.memory, "--cpus", str(args.cpus)]
    cmd += ["--append", "modprobe.blacklist=" + ",".join(BLACKLIST)]
    for rw in args.rwdir:
        cmd.append(f"--rwdir={rw}")
    return [*cmd, "--exec", script]


class Pump(threading.Thread):
    """Copy one of vng's output pipes to ours; optionally catch the guest's ready line."""

    def __init__(self, src: IO[bytes], dst: IO[bytes], ready: threading.Event | None) -> None:
        super().__init__(daemon=True)
        self.src, self.dst, self.ready = src, dst, ready
        self.ready_at: float | None = None

    def run(self) -> None:
        pending = b""
        while chunk := os.read(self.src.fileno(), 65536):
            if self.ready is not None and self.ready_at is None:
                # Line by line until the ready marker is seen, then plain copying.
                *lines, pending = (pending + chunk).split(b"\n")
                kept = []
                for line in lines:
                    if line.strip() == READY and self.ready_at is None:
                        self.ready_at = time.monotonic()
                        self.ready.set()
                        kept.append(b"vm: guest is up, running the command\n")
                    else:
                        kept.append(line + b"\n")
                if self.ready_at is not None:
                    kept.append(pending)
                    pending = b""
                chunk = b"".join(kept)
            self.dst.write(chunk)
            self.dst.flush()
        self.dst.write(pending)
        self.dst.flush()


class Terminated(Exception):
    """We were asked to stop (SIGTERM, SIGHUP) while a guest ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill vng and its QEMU (they share a process group)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run(args: argparse.Namespace) -> int:
    """Boot, run, return CMD's status (124 on timeout)."""
    kernel = kernels.ensure(args.series)
    for rw in args.rwdir:
        os.makedirs(rw, exist_ok=True)
    env = guest_env(args.series, args.env)
    # The host's root, so this folder too, is the guest's root (read-only, same user).
    with tempfile.TemporaryDirectory(prefix="ossl-ktls-vm-") as tmp:
        script = Path(tmp, "run.sh")
        script.write_text(guest_script(os.getcwd(), env, args.cmd))
        cmd = vng_command(str(kernel.vmlinuz), f"sh {shlex.quote(str(script))}", args)
        status, reached = boot(kernel, cmd, args)
        if status == 255 and not reached:
            # The guest never ran the command, so trying again cannot run it twice. Seen once
            # in many boots: vng exiting 255 after 6 s with nothing on the console.
            log("the guest never reached the command: booting it once more")
            status, reached = boot(kernel, cmd, args)
        return status


def boot(kernel: kernels.Kernel, cmd: list[str], args: argparse.Namespace) -> tuple[int, bool]:
    """Run vng, stream its output, enforce the timeout; return the status and whether the
    guest reached the command."""
    log(f"booting {kernel.release} (series {args.series}, TCG, timeout {args.timeout:.0f} s)")
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    ready = threading.Event()
    pumps = [
        Pump(proc.stdout, sys.stdout.buffer, None),
        Pump(proc.stderr, sys.stderr.buffer, ready),
    ]
    for p in pumps:
        p.start()

    def _terminate(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    # vng runs in its own session (so a timeout can kill QEMU with it): pass on a
    # SIGTERM/SIGHUP sent to us, or QEMU would outlive us.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        status = proc.wait(timeout=args.timeout)
    except Terminated as exc:
        _stop(proc)
        log(f"stopped the {kernel.release} guest: got signal {exc.signum}")
        return 128 + exc.signum, pumps[1].ready_at is not None
    except subprocess.TimeoutExpired:
        _stop(proc)
        for p in pumps:
            p.join(timeout=5)
        log(
            f"TIMEOUT: the {kernel.release} guest did not finish within {args.timeout:.0f} s; "
            f"killed it. Command was: {shlex.join(args.cmd)}"
        )
        return TIMEOUT_STATUS, pumps[1].ready_at is not None
    except KeyboardInterrupt:
        _stop(proc)
        raise
    for p in pumps:
        p.join(timeout=5)
    elapsed = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    up = pumps[1].ready_at - started if pumps[1].ready_at is not None else None
    up_text = f"booted in {up:.1f} s, " if up is not None else "never became ready, "
    log(
        f"{kernel.release}: {up_text}exit status {status} after {elapsed:.1f} s "
        f"(QEMU used {cpu:.0f} s of CPU)"
    )
    if status == 255:
        if up is None:
            log(
                "status 255 came from vng: the guest never reached the command. Check that "
                "qemu-system-x86, busybox-static, kmod, cpio and udev are installed on the "
                "host (without udev vng cannot find its virtio-serial ports and loses the "
                "guest's output and exit status); rerun with --verbose to see the kernel console."
            )
            if not shutil.which("udevadm", path=os.environ.get("PATH", "") + ":/sbin:/bin"):
                log("udevadm is missing on this host: install the 'udev' package")
        else:
            log(
                "status 255: either the command exited 255 or the guest died under it "
                "(kernel panic, out of memory); rerun with --verbose to see the kernel console."
            )
    return status, up is not None


def main(argv: list[str] | None = None) -> int:
    """Parse ``--series ... -- CMD ARGS...`` and run."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.vm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--series",
        required=True,
        type=lambda s: s.removeprefix("kernel-"),
        choices=list(kernels.SERIES),
        help="kernel series (5.10, 6.1, 6.12, 7.2); a tox env name like kernel-6.1 works too",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"kill the VM after this many seconds (default {DEFAULT_TIMEOUT:.0f})",
    )
    parser.add_argument(
        "--rwdir",
        action="append",
        default=[],
        help="host folder the guest may write (same path inside); repeatable",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment variable for the guest command; repeatable",
    )
    parser.add_argument("--verbose", action="store_true", help="show the kernel console (vng -v)")
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if not args.cmd:
        parser.error("no command given (use: -- CMD ARGS...)")
    args.rwdir = [os.path.abspath(d) for d in args.rwdir]
    try:
        return run(args)
    except kernels.FetchError as exc:
        log(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())

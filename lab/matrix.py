"""Run the whole tox matrix and summarise it: ``python -m lab.matrix``.

Fetches every kernel first (so the kernel environments boot the newest packages), then
runs ``lint``, ``type``, ``host``, ``host-py312``, ``host-py313`` and ``mindeps``, then the
four ``kernel-*`` environments two at a time (``--jobs``), each to the end even when
another failed, and prints one line per environment: kernel release,
passed/failed/skipped/errors from its JUnit report, wall time. The summary is
also written to ``reports/matrix.json``. The exit status is non-zero when any
environment failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab import kernels

ENVS = (
    *("lint", "type", "host", "host-py312", "host-py313", "mindeps"),
    *("kernel-5.10", "kernel-6.1", "kernel-6.12", "kernel-7.2"),
)
_PYTEST_ENVS = ("host", "mindeps", "kernel-")
REPORTS = Path("reports")


@dataclass
class Result:
    """One environment's outcome."""

    env: str
    status: int = -1
    seconds: float = 0.0
    release: str = "?"
    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def ok(self) -> bool:
        """Passed: tox succeeded."""
        return self.status == 0


def tox_command() -> list[str]:
    """How to call tox: ``$TOX`` if set, else this interpreter's tox module, else PATH."""
    if os.environ.get("TOX"):
        return os.environ["TOX"].split()
    if importlib.util.find_spec("tox") is not None:
        return [sys.executable, "-m", "tox"]
    return ["tox"]


def read_junit(path: Path) -> tuple[dict[str, int], str]:
    """Counts (passed, failed, skipped, errors) and the ``kernel_release`` property."""
    root = ET.parse(path).getroot()  # noqa: S314 (our own pytest report)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    release = "?"
    for suite in suites:
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
        for prop in suite.iter("property"):
            if prop.get("name") == "kernel_release":
                release = prop.get("value") or "?"
    counts = {
        "passed": totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"],
        "failed": totals["failures"],
        "skipped": totals["skipped"],
        "errors": totals["errors"],
    }
    return counts, release


def run_env(env: str, tox: list[str], posargs: list[str], log: Path | None = None) -> Result:
    """Run one tox environment, streaming its output (or into *log*); never raise."""
    result = Result(env)
    junit = REPORTS / f"junit-{env}.xml"
    junit.unlink(missing_ok=True)
    pytest_env = env.startswith(_PYTEST_ENVS)
    cmd = [*tox, "-e", env, *(["--", *posargs] if posargs and pytest_env else [])]
    banner = f"==== {env}: {' '.join(cmd)} "
    print(f"\n{banner:=<100}", flush=True)
    started = time.monotonic()
    try:
        if log is None:
            result.status = subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False).returncode
        else:
            with log.open("wb") as out:
                result.status = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                ).returncode
            print(f"{banner:=<100}\n{log.read_text(errors='replace')}", flush=True)
    except OSError as exc:
        result.note = f"could not run tox: {exc}"
    result.seconds = time.monotonic() - started
    if junit.is_file():
        try:
            result.counts, result.release = read_junit(junit)
        except (ET.ParseError, ValueError) as exc:
            result.note = f"unreadable {junit}: {exc}"
    elif env.startswith(_PYTEST_ENVS):
        result.note = f"no {junit}"
    return result


def _fmt_time(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def summary(results: list[Result], total: float) -> str:
    """The final table."""
    head = ("env", "kernel release", "result", "passed", "failed", "skipped", "errors", "wall")
    rows: list[tuple[str, ...]] = [head]
    for r in results:
        c = r.counts
        rows.append(
            (
                r.env,
                r.release if r.counts else "-",
                "ok" if r.ok else f"FAILED ({r.status})",
                *(str(c[k]) if c else "-" for k in ("passed", "failed", "skipped", "errors")),
                _fmt_time(r.seconds),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"total wall time {_fmt_time(total)}"]
    lines += [f"note: {r.env}: {r.note}" for r in results if r.note]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Fetch kernels, run the environments, print and save the summary."""
    parser = argparse.ArgumentParser(prog="python -m lab.matrix", description=__doc__)
    parser.add_argument("--envs", default=",".join(ENVS), help="comma-separated subset")
    parser.add_argument(
        "--jobs",
        type=int,
        default=int(os.environ.get("OSSL_KTLS_JOBS", "2")),
        help="kernel environments booted at once (default 2, or $OSSL_KTLS_JOBS)",
    )
    parser.add_argument(
        "posargs", nargs="*", help="pytest arguments for the host and kernel envs (after --)"
    )
    args = parser.parse_args(argv)
    envs = [e for e in args.envs.split(",") if e]
    REPORTS.mkdir(exist_ok=True)
    started = time.monotonic()
    results: list[Result] = []
    series = [e.removeprefix("kernel-") for e in envs if e.startswith("kernel-")]
    if series:
        fetch = Result("fetch-kernels")
        print(f"==== fetching kernels {' '.join(series)}", flush=True)
        t0 = time.monotonic()
        try:
            for k in kernels.fetch(series):
                print(f"{k.series}\t{k.release}\t{k.vmlinuz}", flush=True)
            fetch.status = 0
        except kernels.FetchError as exc:
            fetch.note = str(exc)
            print(f"matrix: kernel fetch failed: {exc}", file=sys.stderr, flush=True)
        fetch.seconds = time.monotonic() - t0
        results.append(fetch)
    tox = tox_command()
    kernel_envs = [e for e in envs if e.startswith("kernel-")]
    for env in envs:
        if env not in kernel_envs:
            results.append(run_env(env, tox, args.posargs))
    if kernel_envs:
        # Create every kernel venv first, one after the other (they share tox's package
        # build), then boot the kernels args.jobs at a time: under TCG each guest keeps
        # about one host core busy, and this machine has two.
        subprocess.run(
            [*tox, "run", "--notest", "-e", ",".join(kernel_envs)],
            stdin=subprocess.DEVNULL,
            check=False,
        )
        # Pair the lanes so that they end together. Measured beside each other (two
        # guests on two cores, a20a90a's suites): 7.2 (CLI, asyncio, FTPS, third-party
        # suites) 18.6 min, 6.1 (third-party suites) 13.1, 6.12 (the 200-client load
        # test) 12.1, 5.10 (the fallback tier) 4.3. Lanes 5.10 then 7.2 (23 min), and
        # 6.12 then 6.1 (25 min).
        first = {"kernel-5.10": 0, "kernel-6.12": 1, "kernel-7.2": 2}
        start_order = sorted(kernel_envs, key=lambda e: first.get(e, 3))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {
                env: pool.submit(
                    run_env,
                    env,
                    [*tox, "--skip-pkg-install"],
                    args.posargs,
                    None if args.jobs <= 1 else REPORTS / f"{env}.log",
                )
                for env in start_order
            }
            results += [futures[env].result() for env in kernel_envs]
    total = time.monotonic() - started
    table = summary(results, total)
    print(f"\n{'==== summary ':=<100}\n{table}", flush=True)
    (REPORTS / "matrix.json").write_text(
        json.dumps({"total_seconds": total, "results": [asdict(r) for r in results]}, indent=2)
        + "\n"
    )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

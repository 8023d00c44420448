"""Other projects' test suites, run unmodified against ``ossl_ktls.patch()``.

The sdists are pinned (name, version, sha256 of the file PyPI serves) and kept in a cache
outside the git tree (``~/.cache/ossl-ktls/thirdparty``, or
``$OSSL_KTLS_THIRDPARTY_CACHE``), so the lab's guests, which have no network, read them
from there (``lab.vm`` passes the host's cache path into the guest)::

    python -m interop.thirdparty fetch     # on the host, before a boot (tox does it)

A download goes through ``pip download --require-hashes``: pip checks the file against the
pinned sha256 (and against the hash PyPI's index publishes for it). A cached file is
checked against the pin again every time it is used.

Each suite runs in a pytest subprocess, inside its unpacked sdist (its own rootdir,
conftest and ini file), with ``interop/thirdparty_plugin/ossl_ktls_thirdparty.py`` loaded
by ``-p`` before anything imports ``OpenSSL.SSL``: with ``OSSL_KTLS_THIRDPARTY_PATCH=1``
that plugin calls ``ossl_ktls.patch()``, and in both modes it records which Connections
were handed over to the kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGIN_DIR = Path(__file__).resolve().parent / "thirdparty_plugin"
PLUGIN = "ossl_ktls_thirdparty"


@dataclass(frozen=True)
class Suite:
    """One project's SSL tests: what to fetch and how to run them."""

    name: str
    version: str
    sha256: str
    #: pytest arguments after the plugin: the test files, selections and runner options
    args: tuple[str, ...]
    #: tests that fail without the patch (so they say nothing about ours), by node id,
    #: each with the reason; they are deselected in both runs
    deselect: dict[str, str] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"


# Runner options, not edits of the suites:
# * -o addopts=: both ini files' addopts load plugins the SSL tests do not need (xdist,
#   instafail, pytest-cov, doctest collection of every module); pytest-timeout (ours)
#   bounds each test instead, since a server that dies at startup leaves cheroot's fixture
#   polling forever.
# * cheroot marks one test @pytest.mark.flaky (pytest-rerunfailures); its ini turns the
#   unknown-marker warning into an error. The marker is registered here and the plugin is
#   not installed: no reruns, a flaky failure shows.
# * cheroot 11.1.2 calls pyOpenSSL APIs that pyOpenSSL 26 deprecates (set_passwd_cb, the
#   X509 methods), and its ini makes every warning an error: its server thread would die
#   at startup in both runs. Only warnings attributed to cheroot's adapter module are
#   ignored; one from ossl_ktls still fails the test.
SUITES: dict[str, Suite] = {
    "pyftpdlib": Suite(
        name="pyftpdlib",
        version="2.2.0",
        sha256="4ba0642078792df63dd3b2e9c8f838f2a3ecf428c7518d5921c0530d53512acf",
        args=("tests/test_functional_ssl.py", "-o", "addopts="),
        deselect={
            # ftplib's client (stdlib ssl) gets SHUTDOWN_WHILE_IN_INIT unwrapping the data
            # connection after NLST/STAT; the server then answers 226 where QUIT expects
            # 221. Fails the same way with pyOpenSSL's own Connection.
            "tests/test_functional_ssl.py::TestFtpListingCmdsTLSMixin::test_nlst": (
                "fails without the patch: stdlib ssl SHUTDOWN_WHILE_IN_INIT in ftplib"
            ),
            "tests/test_functional_ssl.py::TestFtpListingCmdsTLSMixin::test_stat": (
                "fails without the patch: stdlib ssl SHUTDOWN_WHILE_IN_INIT in ftplib"
            ),
        },
    ),
    "cheroot": Suite(
        name="cheroot",
        version="11.1.2",
        sha256="bfb70c49663f63b0440f2b54dbc6b0d1650e56dfe4e2641f59b2c6f727b44aca",
        args=(
            "cheroot/test/test_ssl.py",
            "-k",
            "pyopenssl",
            "-o",
            "addopts=",
            "-p",
            "cheroot.test._pytest_plugin",
            "-o",
            "markers=flaky: pytest-rerunfailures' marker (not installed: no reruns)",
            "-W",
            "ignore::DeprecationWarning:cheroot.ssl.pyopenssl",
        ),
    ),
}


class FetchError(Exception):
    """An sdist could not be downloaded, or the cached file does not match its pin."""


def cache_dir() -> Path:
    """``$OSSL_KTLS_THIRDPARTY_CACHE`` or ``~/.cache/ossl-ktls/thirdparty``."""
    env = os.environ.get("OSSL_KTLS_THIRDPARTY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ossl-ktls" / "thirdparty"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cached(suite: Suite) -> Path:
    """The cached sdist, checked against its pin (no network)."""
    path = cache_dir() / suite.filename
    if not path.exists():
        raise FetchError(
            f"{path} is missing: run `python -m interop.thirdparty fetch` on a host with "
            "network first (the lab's guests have none)"
        )
    digest = _sha256(path)
    if digest != suite.sha256:
        raise FetchError(f"{path}: sha256 {digest}, pinned {suite.sha256}")
    return path


def fetch(suite: Suite) -> Path:
    """The sdist from the cache, or downloaded from PyPI into it first."""
    path = cache_dir() / suite.filename
    if path.exists():
        return cached(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        req = Path(tmp, "requirements.txt")
        req.write_text(f"{suite.name}=={suite.version} --hash=sha256:{suite.sha256}\n")
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
                *("--require-hashes", "--disable-pip-version-check", "-r", str(req), "-d", tmp),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        got = Path(tmp, suite.filename)
        if done.returncode != 0 or not got.exists():
            raise FetchError(
                f"pip download of {suite.name}=={suite.version} failed "
                f"(status {done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        os.replace(got, path)
    return cached(suite)


def unpack(sdist: Path, into: Path) -> Path:
    """Unpack an sdist; returns its top folder."""
    with tarfile.open(sdist) as tar:
        tar.extractall(into, filter="data")
    top = into / sdist.name.removesuffix(".tar.gz")
    if not top.is_dir():
        raise FetchError(f"{sdist} has no top folder {top.name}")
    return top


@dataclass
class Result:
    """One pytest run of a suite."""

    returncode: int
    outcomes: dict[str, str]  # node id -> passed / failed / error / skipped
    report: dict[str, Any]  # what the plugin recorded
    output: str

    def count(self, outcome: str) -> int:
        return sum(o == outcome for o in self.outcomes.values())


def _outcomes(junit: Path, rootdir: Path) -> dict[str, str]:
    """Node id -> outcome, from a JUnit XML report (xunit1 or 2)."""
    outcomes: dict[str, str] = {}
    # our own subprocess wrote it
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314
        classname, name = case.get("classname", ""), case.get("name", "")
        file = case.get("file")
        parts = classname.split(".")
        if file:
            module = file
            depth = len(Path(file).with_suffix("").parts)
            klass = parts[depth:]
        else:  # xunit2 has no file attribute: rebuild the path from the class name
            for i in range(len(parts), 0, -1):
                if (rootdir / Path(*parts[:i]).with_suffix(".py")).exists():
                    module, klass = str(Path(*parts[:i]).with_suffix(".py")), parts[i:]
                    break
            else:
                module, klass = classname, []
        nodeid = "::".join([module, *klass, name])
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                break
            if child.tag == "skipped":
                outcome = "skipped"
        # a test that passed but failed at teardown has two entries: the worse one counts
        if outcomes.get(nodeid) in ("failed", "error") and outcome == "passed":
            continue
        outcomes[nodeid] = outcome
    return outcomes


def run(suite: Suite, sdist_root: Path, workdir: Path, *, patch: bool, timeout: float) -> Result:
    """Run *suite*'s tests in a pytest subprocess inside its unpacked sdist."""
    junit = workdir / f"junit-{suite.name}-{'patched' if patch else 'baseline'}.xml"
    report = junit.with_suffix(".json")
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PLUGIN_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["OSSL_KTLS_THIRDPARTY_PATCH"] = "1" if patch else "0"
    env["OSSL_KTLS_THIRDPARTY_REPORT"] = str(report)
    cmd = [
        *(sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider"),
        *suite.args,
        *("-rfE", "--timeout", "300", "--junitxml", str(junit), "-o", "junit_family=xunit1"),
    ]
    for nodeid in suite.deselect:
        cmd += ["--deselect", nodeid]
    done = subprocess.run(
        cmd,
        cwd=sdist_root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    if not junit.exists() or not report.exists():
        raise AssertionError(
            f"{suite.name}: pytest (status {done.returncode}) wrote no report:\n{output}"
        )
    return Result(
        returncode=done.returncode,
        outcomes=_outcomes(junit, sdist_root),
        report=json.loads(report.read_text()),
        output=output,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m interop.thirdparty fetch [NAME...]``: fill the cache."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "fetch":
        print("usage: python -m interop.thirdparty fetch [NAME...]", file=sys.stderr)
        return 2
    names = args[1:] or list(SUITES)
    for name in names:
        try:
            path = fetch(SUITES[name])
        except (FetchError, KeyError, subprocess.TimeoutExpired) as exc:
            print(f"thirdparty: {name}: {exc}", file=sys.stderr)
            return 1
        print(f"thirdparty: {name}: {path} (sha256 ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The drop-in, proved by other projects' own tests: pyftpdlib's FTPS suite and cheroot's
pyOpenSSL-adapter TLS tests, unmodified, each run twice in a subprocess: without the patch
(the baseline) and under ``ossl_ktls.patch()``.

Both runs must give every test the same outcome. Tests that fail without the patch say
nothing about ours: they are deselected by name, with the reason, in
``interop/thirdparty.py`` (``Suite.deselect``), and the baseline must then pass whole.

The kernel must really have carried the records where this environment declares kTLS:
every hand-over of the patched run is checked against ``tests/expectations.py``, and
``/proc/net/tls_stat`` (TlsTxSw, TlsRxSw: software kTLS contexts installed) must grow by
exactly the number of directions handed over (plus the contexts the capability probe
installs once per process), and not at all in the baseline. Where the
environment declares no kTLS (the host) the file must be absent, and every Connection must
have stayed in user space, saying why.

Where ``OSSL_KTLS_THIRDPARTY_BASELINE=elsewhere`` (tox sets it in the kernel
environments, to keep ``make test`` under its time budget), the baseline is not run again
here: it is plain pyOpenSSL, which never touches the kernel's TLS, and the host runs it;
the patched run must then pass whole on its own.

The sdists come from the cache filled by ``python -m interop.thirdparty fetch`` (or are
downloaded here when the cache lacks them and the network is there); a missing or
mismatching file fails the test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from interop import thirdparty
from ossl_ktls._linux_tls import probe
from ossl_ktls.cli import read_tls_stat
from tests.expectations import Expectation, current

# Seconds per run of a suite: under TCG each takes 2-4 minutes (pyftpdlib's 214 tests,
# cheroot's 27); a suite that hangs fails here, with its output, long before the guest's
# own timeout. The test's own limit (pytest-timeout, 600 s for the other tests) covers
# the host's two runs (baseline and patched).
SUITE_TIMEOUT = 900.0
COUNTERS = ("TlsTxSw", "TlsRxSw")


def _cipher(name: str) -> str:
    """Our cipher name for OpenSSL's (``TLS_AES_256_GCM_SHA384``, ``ECDHE-...-GCM-...``)."""
    n = name.upper().replace("_", "-")
    for marker, ours in (
        ("AES-128-GCM", "aes-128-gcm"),
        ("AES128-GCM", "aes-128-gcm"),
        ("AES-256-GCM", "aes-256-gcm"),
        ("AES256-GCM", "aes-256-gcm"),
        ("CHACHA20", "chacha20-poly1305"),
        ("AES-128-CCM", "aes-128-ccm"),
        ("AES128-CCM", "aes-128-ccm"),
    ):
        if marker in n:
            return ours
    return name


def _expected(env: Expectation | None, version_name: str, cipher_name: str) -> tuple[bool, bool]:
    """(TX, RX) in the kernel, as declared; TLS 1.3 RX only where the kernel can rekey
    (the façade does not hand RX over otherwise)."""
    version = version_name.removeprefix("TLSv")
    cipher = _cipher(cipher_name)
    if env is None:
        return True, True
    tx = env.has("tx", version, cipher)
    rx = env.has("rx", version, cipher) and (version == "1.2" or env.rekey)
    return tx, rx


def _stat() -> dict[str, int] | None:
    return read_tls_stat()


def _delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int]:
    # The counters appear when the tls module loads (at the first TCP_ULP "tls"): absent
    # before means none had been installed.
    return {k: (after or {}).get(k, 0) - (before or {}).get(k, 0) for k in COUNTERS}


@pytest.fixture(scope="module")
def sdists() -> dict[str, Path]:
    """Every pinned sdist, from the cache (downloaded into it if missing)."""
    return {name: thirdparty.fetch(suite) for name, suite in thirdparty.SUITES.items()}


def _summary(result: thirdparty.Result) -> str:
    return ", ".join(f"{result.count(o)} {o}" for o in ("passed", "failed", "error", "skipped"))


def _failures(result: thirdparty.Result) -> str:
    bad = sorted(n for n, o in result.outcomes.items() if o in ("failed", "error"))
    return "\n".join(bad) + "\n--- output ---\n" + result.output[-20000:]


@pytest.mark.timeout(2 * SUITE_TIMEOUT + 60)
@pytest.mark.parametrize("name", sorted(thirdparty.SUITES))
def test_suite_under_patch(
    name: str,
    sdists: dict[str, Path],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    suite = thirdparty.SUITES[name]
    env = current()
    kernel_declared = env is None or env.ulp

    baseline_root = thirdparty.unpack(sdists[name], tmp_path / "baseline")
    patched_root = thirdparty.unpack(sdists[name], tmp_path / "patched")

    if kernel_declared:
        # Load the tls module now (probe() attaches the ULP once): under TCG the modprobe
        # takes longer than the 0.5 s cheroot's client waits, and it is the environment's
        # one-time cost, not the drop-in's; both runs then start from the same kernel.
        probe()
    baseline_here = os.environ.get("OSSL_KTLS_THIRDPARTY_BASELINE", "here") != "elsewhere"
    stat0 = _stat()
    t0 = time.monotonic()
    baseline = (
        thirdparty.run(suite, baseline_root, tmp_path, patch=False, timeout=SUITE_TIMEOUT)
        if baseline_here
        else None
    )
    t1 = time.monotonic()
    stat1 = _stat()
    patched = thirdparty.run(suite, patched_root, tmp_path, patch=True, timeout=SUITE_TIMEOUT)
    t2 = time.monotonic()
    stat2 = _stat()

    base_delta, patch_delta = _delta(stat0, stat1), _delta(stat1, stat2)
    handovers: list[dict[str, Any]] = patched.report["handovers"]
    line = (
        f"{name} {suite.version}: baseline "
        f"{f'{_summary(baseline)} in {t1 - t0:.1f} s' if baseline else 'run elsewhere'}; "
        f"patched {_summary(patched)} in {t2 - t1:.1f} s; deselected {len(suite.deselect)}; "
        f"handovers {len(handovers)} (tx {sum(bool(h['tx']) for h in handovers)}, "
        f"rx {sum(bool(h['rx']) for h in handovers)}); "
        f"probe installs {patched.report['probe_installs']}; "
        f"tls_stat delta baseline {base_delta}, patched {patch_delta}"
    )
    print(line)
    record_property("thirdparty", line)

    # The runs are what they claim to be.
    assert patched.report["class_at_start"] == "ossl_ktls._pyopenssl.Connection", patched.report
    assert patched.report["class_at_end"] == "ossl_ktls._pyopenssl.Connection", patched.report
    assert patched.outcomes, f"{name}: the patched run ran no tests\n{patched.output}"
    if baseline is not None:
        assert baseline.report["class_at_start"] == "OpenSSL.SSL.Connection", baseline.report
        assert baseline.report["handovers"] == []
        assert baseline.outcomes, f"{name}: the baseline ran no tests\n{baseline.output}"
        # The baseline passes whole (what fails there is deselected, with its reason).
        assert baseline.returncode == 0, f"{name}: baseline failures:\n{_failures(baseline)}"
        # The same tests, the same outcomes, under the patch.
        changed = {
            n: (baseline.outcomes.get(n), patched.outcomes.get(n))
            for n in baseline.outcomes.keys() | patched.outcomes.keys()
            if baseline.outcomes.get(n) != patched.outcomes.get(n)
        }
        assert not changed, f"{name}: outcomes differ (baseline, patched): {changed}\n" + _failures(
            patched
        )
    assert patched.returncode == 0, _failures(patched)

    # Our class was used, and the handshakes completed through it.
    assert handovers, f"{name}: no ossl_ktls.Connection completed a handshake\n{patched.output}"
    errors = [h for h in handovers if "error" in h]
    assert not errors, f"{name}: hand-overs that raised: {errors}"
    for h in handovers:
        tx, rx = _expected(env, h["version"], h["cipher"])
        assert (h["tx"], h["rx"]) == (tx, rx), (
            f"{name}: {h['version']} {h['cipher']}: expected kernel tx={tx} rx={rx}, got {h}"
        )
        if not (tx and rx):
            assert h["reason"], f"{name}: a direction stayed in user space without a reason: {h}"

    # The kernel's own counters agree.
    assert base_delta == {"TlsTxSw": 0, "TlsRxSw": 0}, base_delta
    if kernel_declared:
        assert stat2 is not None, "kTLS declared, but /proc/net/tls_stat is missing"
        # Each hand-over installs its directions; the capability probe, once per process,
        # installs one context per (direction, version, cipher) the kernel takes.
        probed = patched.report["probe_installs"]
        assert patch_delta == {
            "TlsTxSw": sum(h["tx"] for h in handovers) + probed["tx"],
            "TlsRxSw": sum(h["rx"] for h in handovers) + probed["rx"],
        }, (patch_delta, probed, handovers)
        assert patch_delta["TlsTxSw"] > 0, patch_delta
    else:
        assert stat0 is None and stat2 is None, "no kTLS declared, yet tls_stat exists"
        assert any("stays in user space" in m for m in patched.report["log"]), patched.report[
            "log"
        ][:20]

"""The pure parts of the benchmark's FTPS scenario (bench/ftps.py, bench/run.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from bench.ftps import check, curl_argv
from bench.run import verify_download

SIZE = 1 << 20


def _ktls(**over: Any) -> dict[str, Any]:
    sample: dict[str, Any] = {
        "status": "ok",
        "file_sent": True,
        "server_bytes_sent": SIZE,
        "ktls_tx": True,
        "control_ktls_tx": True,
        "sendfile_bytes": SIZE,
        "tls_tx_sw_delta": 2,
    }
    return {**sample, **over}


def test_check_accepts_a_verified_kernel_sample() -> None:
    assert check("ftps_ktls", _ktls(), SIZE) is None


def test_check_marks_user_space_ktls_samples_unavailable() -> None:
    for over in (
        {"ktls_tx": False, "fallback_reason": "no ULP"},
        {"sendfile_bytes": SIZE - 1},
        {"tls_tx_sw_delta": 1},  # two connections say kernel TX, the kernel counted one
        {"tls_tx_sw_delta": None},  # no /proc/net/tls_stat
    ):
        verdict = check("ftps_ktls", _ktls(**over), SIZE)
        assert verdict is not None and verdict[0] == "unavailable", over
    assert check("ftps_ktls", _ktls(control_ktls_tx=False, tls_tx_sw_delta=1), SIZE) is None


def test_check_stock_and_short_transfers() -> None:
    stock = _ktls(ktls_tx=False, control_ktls_tx=False, sendfile_bytes=0, tls_tx_sw_delta=0)
    assert check("ftps_stock", stock, SIZE) is None
    assert check("ftps_stock", {**stock, "tls_tx_sw_delta": None}, SIZE) is None
    verdict = check("ftps_stock", {**stock, "sendfile_bytes": 10}, SIZE)
    assert verdict is not None and verdict[0] == "error"
    verdict = check("ftps_ktls", _ktls(server_bytes_sent=SIZE // 2), SIZE)
    assert verdict is not None and verdict[0] == "error"
    assert check("ftps_ktls", {"status": "error"}, SIZE) is None  # already not counted


def test_curl_argv_pins_tls13_and_the_suite() -> None:
    argv = curl_argv(2121, "payload-1", "/tmp/out", "TLS_AES_128_GCM_SHA256")
    assert argv[0] == "curl" and "--ssl-reqd" in argv
    assert argv[argv.index("--tls13-ciphers") + 1] == "TLS_AES_128_GCM_SHA256"
    assert argv[argv.index("--tls-max") + 1] == "1.3"
    assert argv[-1] == "ftp://127.0.0.1:2121/payload-1"


def test_verify_download(tmp_path: Path) -> None:
    data = b"x" * 1000
    got = tmp_path / "got"
    got.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    ok = {"returncode": 0, "out": "1000"}
    assert verify_download(ok, got, 1000, sha) is None
    assert verify_download({"returncode": 7, "stderr": "refused"}, got, 1000, sha)
    assert verify_download({"returncode": 0, "out": "999"}, got, 1000, sha)
    assert verify_download(ok, None, 1000, sha)
    assert verify_download(ok, got, 1000, "0" * 64)


def _sample(variant: str, rep: int, seconds: float, cpu_s: float, **over: Any) -> dict[str, Any]:
    sample = _ktls() if variant == "ftps_ktls" else _ktls(ktls_tx=False, sendfile_bytes=0)
    sample.update(part="ftps", suite="tls13-aes128gcm", size=SIZE, variant=variant, rep=rep)
    sample.update(bytes=SIZE, seconds=seconds, cpu_s=cpu_s, user_ticks=1, sys_ticks=1)
    sample.update(client_cpu_s=0.01, sha256_ok=True, cipher="TLS_AES_128_GCM_SHA256")
    return {**sample, **over}


def test_ftps_summary_ratios_are_pairwise_and_skip_unverified_pairs() -> None:
    from bench.report import Results, ftps_summary

    samples = [
        _sample("ftps_stock", 0, 2.0, 1.0),
        _sample("ftps_ktls", 0, 1.0, 0.5),
        _sample("ftps_stock", 1, 4.0, 2.0),
        _sample("ftps_ktls", 1, 1.0, 0.5),
        _sample("ftps_stock", 2, 1.0, 1.0),
        _sample("ftps_ktls", 2, 9.0, 9.0, status="unavailable", reason="user space"),
    ]
    raw = {"environment": {}, "plan": {}, "samples": samples}
    out = ftps_summary(Results(raw))
    assert out["throughput_ratio"]["n"] == 2  # the unverified pair counts nowhere
    assert out["throughput_ratio"]["min"] == 2.0 and out["throughput_ratio"]["max"] == 4.0
    assert out["cpu_ratio"]["median"] == 0.375  # (0.5 and 0.25) per GiB, pair by pair
    ktls = next(e for e in out["rows"] if e["variant"] == "ftps_ktls")
    assert ktls["not_counted"] == ["unavailable: user space"]
    everything_unverified = [s for s in samples if s["variant"] == "ftps_stock"] + [
        {**s, "status": "unavailable", "reason": "user space"}
        for s in samples
        if s["variant"] == "ftps_ktls"
    ]
    out = ftps_summary(Results({**raw, "samples": everything_unverified}))
    assert "unavailable" in out and "throughput_ratio" not in out

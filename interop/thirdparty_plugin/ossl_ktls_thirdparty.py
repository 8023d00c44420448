"""pytest plugin for interop/test_thirdparty.py, loaded with ``-p ossl_ktls_thirdparty``.

It is imported before the suite's conftest and test modules, so with
``OSSL_KTLS_THIRDPARTY_PATCH=1`` every ``OpenSSL.SSL.Connection`` the suite makes is
``ossl_ktls.Connection`` (also in cheroot, which binds the class at import). In both modes
it records, into the JSON file ``OSSL_KTLS_THIRDPARTY_REPORT``, the class the suite got,
every hand-over decision of an ``ossl_ktls.Connection`` (kernel TX/RX, fallback reason)
and what went to the ``ossl_ktls`` logger. Observation only: the decision itself is
ours, unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from OpenSSL import SSL

import ossl_ktls
from ossl_ktls import _linux_tls

PATCH = os.environ["OSSL_KTLS_THIRDPARTY_PATCH"] == "1"
REPORT = os.environ["OSSL_KTLS_THIRDPARTY_REPORT"]

if PATCH:
    ossl_ktls.patch()

_lock = threading.Lock()
_handovers: list[dict[str, Any]] = []
_log: list[str] = []
_class_at_start = f"{SSL.Connection.__module__}.{SSL.Connection.__qualname__}"


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        with _lock:
            _log.append(record.getMessage())


_logger = logging.getLogger("ossl_ktls")
_logger.addHandler(_Collect(logging.INFO))
if _logger.getEffectiveLevel() > logging.INFO:
    _logger.setLevel(logging.INFO)

_decide = ossl_ktls.Connection._ktls_hand_over


def _observed(self: ossl_ktls.Connection) -> None:
    before = self._ktls_decided
    try:
        _decide(self)
    except BaseException as exc:
        with _lock:
            _handovers.append({"tx": None, "rx": None, "reason": None, "error": repr(exc)})
        raise
    if not before and self._ktls_decided:
        with _lock:
            _handovers.append(
                {
                    "version": self.get_protocol_version_name(),
                    "cipher": self.get_cipher_name(),
                    "tx": self.ktls_tx,
                    "rx": self.ktls_rx,
                    "reason": self.fallback_reason,
                }
            )


ossl_ktls.Connection._ktls_hand_over = _observed  # type: ignore[method-assign]


def _probe_installs() -> dict[str, int]:
    """Contexts the capability probe installed in this process (it tries every
    direction, version and cipher once on a scratch socket): they count in tls_stat too."""
    if not _linux_tls.probe.cache_info().currsize:
        return {"tx": 0, "rx": 0}
    caps = _linux_tls.probe()
    return {"tx": sum(map(len, caps.tx.values())), "rx": sum(map(len, caps.rx.values()))}


def pytest_unconfigure() -> None:
    probe = _probe_installs()
    with _lock:
        data = {
            "patched": PATCH,
            "class_at_start": _class_at_start,
            "class_at_end": f"{SSL.Connection.__module__}.{SSL.Connection.__qualname__}",
            "handovers": list(_handovers),
            "probe_installs": probe,
            "log": list(_log),
        }
    with open(REPORT, "w") as f:
        json.dump(data, f)

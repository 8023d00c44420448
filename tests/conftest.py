"""Shared fixtures: certificates, connected pyOpenSSL pairs, and the kernel declaration."""

from __future__ import annotations

import platform
from collections.abc import Callable

import pytest

from tests import expectations
from tests._pairs import Certs, make_certs


@pytest.fixture(scope="session", autouse=True)
def _record_kernel(record_testsuite_property: Callable[[str, object], None]) -> None:
    """Put the running kernel's release into the JUnit report (the matrix summary reads it)."""
    record_testsuite_property("kernel_release", platform.release())
    env = expectations.current()
    record_testsuite_property("declared_env", env.name if env else "undeclared")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA with one ECDSA and one RSA server certificate for 'localhost'."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def declared() -> expectations.Expectation | None:
    """This environment's declared kernel capabilities (None: undeclared, expect all)."""
    return expectations.current()


@pytest.fixture
def expect_kernel(
    declared: expectations.Expectation | None,
) -> Callable[[str, str, str], bool]:
    """``expect_kernel(direction, version, cipher)``: must that direction be in the kernel?

    Undeclared environments expect everything; declared ones expect what they declare.
    """

    def check(direction: str, version: str, cipher: str) -> bool:
        if declared is None:
            return True
        return declared.has(direction, version, cipher)

    return check


@pytest.fixture
def can_rekey(declared: expectations.Expectation | None) -> bool:
    """Whether this environment declares TLS 1.3 rekey in the kernel."""
    return True if declared is None else declared.rekey

"""Hypothesis example budgets for the pure-module property tests.

Import :func:`load` at the top of a test module. The profile comes from
``OSSL_KTLS_HYPOTHESIS``: ``default`` (200 examples, the host run), ``kernel`` (25, the
default inside the lab's VMs, where the pure modules run again only as a smoke check) or
``long`` (5000, for a soak run: ``OSSL_KTLS_HYPOTHESIS=long pytest tests/test_records.py``).
Profiles are registered once however many modules import this one; no deadline, so a loaded CI
machine does not turn slowness into failures.
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILES: dict[str, int] = {"default": 200, "long": 5000, "kernel": 25}
_registered = False


def load() -> str:
    """Register the profiles (once) and load the one ``OSSL_KTLS_HYPOTHESIS`` names.

    Returns the loaded profile's name. An unknown name raises ``KeyError`` naming the
    known ones, rather than silently running the default budget.
    """
    global _registered
    if not _registered:
        for name, examples in PROFILES.items():
            settings.register_profile(f"ossl_ktls-{name}", max_examples=examples, deadline=None)
        _registered = True
    # Inside the lab's VMs (TCG emulation, 10-30x slower) the pure modules, which do not
    # depend on the kernel, get a token budget; the host run carries the real one.
    in_vm = os.environ.get("OSSL_KTLS_ENV", "").startswith("kernel-")
    name = os.environ.get("OSSL_KTLS_HYPOTHESIS", "kernel" if in_vm else "default")
    if name not in PROFILES:
        raise KeyError(f"OSSL_KTLS_HYPOTHESIS={name!r}: known profiles are {sorted(PROFILES)}")
    settings.load_profile(f"ossl_ktls-{name}")
    return name

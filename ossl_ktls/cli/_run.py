"""``ossl-ktls run``: run an unmodified pyOpenSSL program with kernel TLS.

Like ``coverage run``: ``ossl_ktls.patch()`` first, then the program as ``__main__``
(a script path, or ``-m module``), with ``sys.argv`` set to what it would see if run by
itself. Its exit status is its own. Where the kernel cannot take over a Connection, the
program runs on plain pyOpenSSL; ``--log`` shows, on stderr, what each Connection did.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys

from ._output import CLIError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run a pyOpenSSL program unmodified, its Connections over kernel TLS",
        description="Run SCRIPT (or -m MODULE) with OpenSSL.SSL.Connection patched to "
        "ossl_ktls.Connection; the remaining arguments are the program's.",
    )
    p.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python -m")
    p.add_argument(
        "--log",
        action="store_true",
        help="log each Connection's hand-over (or why it stayed in user space) to stderr",
    )
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS]")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from .._pyopenssl import patch

    if args.module is None and not args.program:
        raise CLIError("run needs SCRIPT or -m MODULE", status=2)
    if args.log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger = logging.getLogger("ossl_ktls")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    patch()
    if args.module is not None:
        sys.argv = [args.module, *args.program]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        return 0
    script, *rest = args.program
    if not os.path.isfile(script):
        raise CLIError(f"no such script: {script}")
    sys.argv = [script, *rest]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
    return 0

"""The ``ossl-ktls`` command line (also ``python -m ossl_ktls``).

Commands::

    ossl-ktls probe [--json]
    ossl-ktls send HOST:PORT FILE [TLS options] [--json]
    ossl-ktls recv HOST:PORT [-o FILE] [TLS options] [--json]
    ossl-ktls serve [--cert C [--key K]] [--host H] [--port P] [TLS options] ROOT
    ossl-ktls tunnel --accept HOST:PORT --connect HOST:PORT (--cert C [--key K] | --client)
                     [TLS options] [--max-clients N] [--json]
    ossl-ktls stats [--watch [SEC]] [--count N] [--json]
    ossl-ktls stats --sockets [--json]
    ossl-ktls run [--log] (SCRIPT | -m MODULE) [ARGS...]

Every command that moves data ends with one summary line on stdout: bytes, seconds,
throughput, TLS version, cipher, and whether kernel TLS carries TX and RX (and why not,
when not); ``--json`` prints one JSON object instead, for scripts. Errors are one line on
stderr. Exit status: 0 success, 1 failure (refused connection, certificate failure,
missing file, truncated stream, kernel without kTLS under ``--require-ktls``), 2 usage
error, 130 interrupted.

Security defaults: clients verify the server's certificate chain *and* its name (the
``--servername``, or the host of HOST:PORT), against the system trust store unless
``--cafile`` is given; ``--insecure`` turns both checks off. TLS 1.2 is the lowest version
offered, and TLS 1.2 is restricted to forward-secret AEAD suites the kernel can carry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence

from .. import __version__
from .._linux_tls import Capabilities, probe
from .._sock_diag import TLSSocket, tls_sockets
from .._suites import SUITES
from . import _run
from ._output import (
    DEFAULT_CIPHERS,
    PROG,
    VERSIONS,
    CLIError,
    Progress,
    Summary,
    human_bytes,
    warn,
)

CIPHERS: tuple[str, ...] = tuple(SUITES)
TLS_STAT = "/proc/net/tls_stat"

__all__ = [
    "CIPHERS",
    "DEFAULT_CIPHERS",
    "PROG",
    "VERSIONS",
    "CLIError",
    "Progress",
    "Summary",
    "build_parser",
    "format_probe",
    "format_sockets",
    "human_bytes",
    "main",
    "read_tls_stat",
    "warn",
]


def format_probe(caps: Capabilities) -> str:
    """The human ``probe`` report: a yes/no table per cipher, direction and version."""
    lines = []
    if caps.ulp:
        lines.append(f"kernel {caps.kernel}: kernel TLS is available (the 'tls' ULP attaches)")
    else:
        lines.append(f"kernel {caps.kernel}: no kernel TLS: {caps.ulp_error}")
    columns = [(d, v) for d in ("tx", "rx") for v in VERSIONS]
    width = max(len(c) for c in CIPHERS) + 2
    header = "".ljust(width) + "".join(f"{d.upper()} {v}".rjust(9) for d, v in columns)
    lines.append(header)
    for cipher in CIPHERS:
        cells = "".join(
            ("yes" if caps.supports(d, v, cipher) else "no").rjust(9) for d, v in columns
        )
        lines.append(cipher.ljust(width) + cells)
    yes_no = {True: "yes", False: "no"}
    lines.append(f"TLS 1.3 rekey (KeyUpdate, Linux 6.14+): {yes_no[caps.rekey]}")
    lines.append(f"zero-copy sendfile (TLS_TX_ZEROCOPY_RO): {yes_no[caps.zerocopy_sendfile]}")
    lines.append(f"RX expect no padding (TLS_RX_EXPECT_NO_PAD): {yes_no[caps.rx_expect_no_pad]}")
    lines.append(
        "TX record size cap for peers that negotiate smaller records "
        f"(TLS_TX_MAX_PAYLOAD_LEN, Linux 6.19+): {yes_no[caps.tx_max_payload_len]}"
    )
    return "\n".join(lines)


def cmd_probe(args: argparse.Namespace) -> int:
    """``probe``: what the running kernel takes, found by trying. Always exit 0."""
    caps = probe()
    if args.json:
        print(json.dumps(caps.as_json()), flush=True)
    else:
        print(format_probe(caps), flush=True)
    return 0


# ---------------------------------------------------------------- send / recv / serve
# Their code (and OpenSSL, cryptography) is in ._cli_tls, imported only when one of them runs,
# so that ``probe`` and ``stats`` start without loading either.


def cmd_send(args: argparse.Namespace) -> int:
    """``send``: sendfile FILE over kernel TX; exit 0 only if every byte went out."""
    from . import _tls as _cli_tls

    return _cli_tls.cmd_send(args)


def cmd_recv(args: argparse.Namespace) -> int:
    """``recv``: write what arrives until close_notify; truncation is an error."""
    from . import _tls as _cli_tls

    return _cli_tls.cmd_recv(args)


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve``: a static HTTPS/1.1 file server over kernel TLS."""
    from . import _tls as _cli_tls

    return _cli_tls.cmd_serve(args)


def cmd_tunnel(args: argparse.Namespace) -> int:
    """``tunnel``: stunnel's job (TLS <-> plain TCP) spliced through kernel TLS."""
    from . import _tunnel

    return _tunnel.cmd_tunnel(args)


# ---------------------------------------------------------------- stats


def read_tls_stat(path: str = TLS_STAT) -> dict[str, int] | None:
    """The kernel's TLS counters, or None when the file does not exist."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    counters: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            counters[parts[0]] = int(parts[1])
    return counters


def _load_counters() -> dict[str, int]:
    counters = read_tls_stat()
    if counters is None:
        # The counters appear when the tls module is loaded; attaching the ULP loads it.
        caps = probe()
        counters = read_tls_stat()
        if counters is None:
            why = caps.ulp_error or "the tls module exposes no counters"
            raise CLIError(f"no kernel TLS counters ({TLS_STAT} is missing): {why}")
    return counters


def _is_gauge(name: str) -> bool:
    return name.startswith("TlsCurr")


def format_sockets(sockets: Sequence[TLSSocket]) -> list[str]:
    """The human ``stats --sockets`` table: one line per kernel TLS socket."""
    head = ("LOCAL", "PEER", "STATE", "TLS", "CIPHER", "TX", "RX", "OPTIONS")
    rows = [head]
    for s in sockets:
        options = [
            name
            for name, on in (("zerocopy-sendfile", s.zerocopy_sendfile), ("rx-no-pad", s.rx_no_pad))
            if on
        ]
        if s.tx_max_payload_len is not None:
            options.append(f"tx-max-payload={s.tx_max_payload_len}")
        rows.append(
            (
                s.local,
                s.peer,
                s.state,
                s.version or "-",
                s.cipher or "-",
                _CONF_WORDS.get(s.tx, s.tx),
                _CONF_WORDS.get(s.rx, s.rx),
                ",".join(options) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


# The kernel's TLS_CONF_* words, as an operator reads them.
_CONF_WORDS = {"sw": "kernel", "hw": "nic", "hw-record": "nic-record", "none": "user"}


def cmd_sockets(args: argparse.Namespace) -> int:
    """``stats --sockets``: the kernel TLS sockets of this machine, from sock_diag."""
    try:
        sockets = tls_sockets()
    except OSError as exc:
        raise CLIError(f"cannot read sock_diag: {exc.strerror or exc}") from exc
    privileged = os.geteuid() == 0
    if args.json:
        print(
            json.dumps(
                {
                    "kernel": os.uname().release,
                    "sockets": [s.as_json() for s in sockets],
                    "complete": privileged,
                }
            ),
            flush=True,
        )
        return 0
    if sockets:
        for line in format_sockets(sockets):
            print(line)
    print(
        f"{len(sockets)} kernel TLS sockets (sock_diag, kernel {os.uname().release}); "
        "TX/RX: kernel = the kernel's software crypto, nic = NIC offload, user = not in the kernel",
        flush=True,
    )
    if not privileged:
        warn("the kernel shows TLS details only to CAP_NET_ADMIN: run as root to see every socket")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """``stats``: /proc/net/tls_stat, and with ``--watch`` the rate of each counter."""
    if args.sockets:
        if args.watch is not None:
            raise CLIError("--sockets and --watch do not go together", status=2)
        return cmd_sockets(args)
    counters = _load_counters()
    kernel = os.uname().release
    if args.watch is None:
        if args.json:
            print(json.dumps({"kernel": kernel, "counters": counters}), flush=True)
        else:
            width = max((len(n) for n in counters), default=10)
            for name, value in counters.items():
                note = "  (open now)" if _is_gauge(name) else ""
                print(f"{name.ljust(width)}  {value}{note}")
            print(f"{len(counters)} counters from {TLS_STAT} (kernel {kernel})", flush=True)
        return 0
    interval = max(0.1, args.watch)
    samples = 0
    started = time.monotonic()
    first = dict(counters)
    previous, then = counters, started
    try:
        while args.count is None or samples < args.count:
            time.sleep(interval)
            current = _load_counters()
            now = time.monotonic()
            dt = now - then
            rates = {
                n: (v - previous.get(n, 0)) / dt for n, v in current.items() if not _is_gauge(n)
            }
            gauges = {n: v for n, v in current.items() if _is_gauge(n)}
            samples += 1
            if args.json:
                print(
                    json.dumps(
                        {"seconds": round(now - started, 3), "gauges": gauges, "rates": rates}
                    ),
                    flush=True,
                )
            else:
                stamp = time.strftime("%H:%M:%S")
                moving = " ".join(f"{n} {r:+.1f}/s" for n, r in rates.items() if r)
                fixed = " ".join(f"{n}={v}" for n, v in gauges.items())
                print(f"{stamp} {fixed} {moving or '(no change)'}", flush=True)
            previous, then = current, now
    except KeyboardInterrupt:
        pass
    elapsed = time.monotonic() - started
    changed = {n: previous[n] - first.get(n, 0) for n in previous if not _is_gauge(n)}
    if args.json:
        print(json.dumps({"seconds": round(elapsed, 3), "changes": changed}), flush=True)
    else:
        moved = ", ".join(f"{n} +{d}" for n, d in changed.items() if d) or "no counter moved"
        print(f"watched {TLS_STAT} for {elapsed:.1f} s ({samples} samples): {moved}", flush=True)
    return 0


# ---------------------------------------------------------------- parser


def _add_tls_options(p: argparse.ArgumentParser, *, client: bool, timeout: float = 30.0) -> None:
    g = p.add_argument_group("TLS")
    g.add_argument(
        "--tls", choices=VERSIONS, help="use only this TLS version (default: 1.2 or 1.3)"
    )
    g.add_argument(
        "--cipher",
        choices=CIPHERS,
        help="use only this cipher (default: AES-GCM or ChaCha20, as negotiated)",
    )
    if client:
        trust = g.add_mutually_exclusive_group()
        trust.add_argument(
            "--cafile", metavar="F", help="trust these CA certificates instead of the system store"
        )
        trust.add_argument(
            "--insecure",
            action="store_true",
            help="do not verify the server's certificate or name (testing only)",
        )
        g.add_argument(
            "--servername",
            metavar="NAME",
            help="name to send (SNI) and to verify (default: the HOST of HOST:PORT)",
        )
    g.add_argument(
        "--require-ktls",
        action="store_true",
        help="fail instead of falling back to user space when the kernel cannot take over",
    )
    g.add_argument(
        "--rx-without-rekey",
        action="store_true",
        help="TLS 1.3 on kernels before 6.14: put RX in the kernel anyway "
        "(a peer's KeyUpdate then ends the connection)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="SEC",
        help=f"give up when the peer makes no progress for this long (default {timeout:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Move TLS connections into Linux kernel TLS (kTLS): probe, send, receive, "
        "serve files, watch the kernel's counters.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("probe", help="what the running kernel's TLS can do (found by trying)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("send", help="send a file to a TLS server (sendfile through kernel TX)")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("file", metavar="FILE")
    _add_tls_options(p, client=True)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("recv", help="receive from a TLS server until close_notify")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    _add_tls_options(p, client=True)
    p.add_argument("--json", action="store_true", help="print the summary as JSON (needs -o)")
    p.set_defaults(func=cmd_recv)

    p = sub.add_parser("serve", help="static HTTPS/1.1 file server over kernel TLS")
    p.add_argument("root", metavar="ROOT", help="the folder to serve")
    p.add_argument("--cert", metavar="C", help="certificate chain (PEM); default: a throwaway one")
    p.add_argument("--key", metavar="K", help="private key (PEM; default: in --cert)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443; 0 picks a free one)")
    p.add_argument(
        "--max-clients", type=int, default=64, help="connections served at once (default 64)"
    )
    p.add_argument("--quiet", action="store_true", help="no access log on stderr")
    _add_tls_options(p, client=False)
    p.add_argument(
        "--json", action="store_true", help="JSON lines on stdout (ready, requests, summary)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "tunnel",
        help="stunnel-style TLS tunnel: TLS in, plain TCP out (or --client: the reverse), "
        "spliced through kernel TLS",
    )
    p.add_argument("--accept", required=True, metavar="HOST:PORT", help="listen here (port 0: any)")
    p.add_argument("--connect", required=True, metavar="HOST:PORT", help="forward to here")
    p.add_argument(
        "--client",
        action="store_true",
        help="accept plain TCP and originate TLS to --connect (default: accept TLS, "
        "forward plain TCP)",
    )
    p.add_argument("--cert", metavar="C", help="server mode: certificate chain (PEM)")
    p.add_argument("--key", metavar="K", help="server mode: private key (PEM; default: in --cert)")
    p.add_argument(
        "--max-clients", type=int, default=64, help="connections tunnelled at once (default 64)"
    )
    _add_tls_options(p, client=True, timeout=300.0)
    p.add_argument(
        "--json", action="store_true", help="JSON lines on stdout (ready, connections, summary)"
    )
    p.set_defaults(func=cmd_tunnel)

    p = sub.add_parser(
        "stats", help="the kernel's TLS counters (/proc/net/tls_stat), or its TLS sockets"
    )
    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=1.0,
        metavar="SEC",
        help="print the counters' rates every SEC seconds (default 1) until Ctrl-C",
    )
    p.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N samples")
    p.add_argument(
        "--sockets",
        action="store_true",
        help="list the live kernel TLS sockets and what the kernel does for each "
        "(version, cipher, TX/RX in software or NIC, options), from sock_diag as ss -tie",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)

    _run.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return exc.status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        # stdout went away (e.g. piped into head): nothing more to say, quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

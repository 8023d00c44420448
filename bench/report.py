"""Statistics, targets, Markdown, JSON and plots from one run's raw samples.

Every figure is a median over the repetitions, with the spread (lowest-highest) beside
it. Ratios are taken pair by pair: variant A's value over variant B's value *in the same
repetition* (the two ran next to each other), then the median of those ratios. User/system
splits and the user-space share are pooled over the repetitions (sum of user ticks over
sum of all ticks), because a single short transfer holds only a few clock ticks.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import SUITES, VARIANTS, GiB, MiB

Json = dict[str, Any]
Metric = Callable[[Json], float | None]

REF_USER = {"tx": "pyopenssl_sendall", "rx": "pyopenssl_recv"}
REF_C = {"tx": "openssl_c_ktls", "rx": "openssl_c_recv"}
CEILING = {"tx": "tcp_sendfile", "rx": "tcp_recv"}
OURS = {"tx": "ktls_sendfile", "rx": "ktls_recv"}
TARGET_CPU = 1.05
TARGET_USER_SHARE = 0.05
TARGET_SPEEDUP = 1.3
TARGET_WRAP = 0.05


# --------------------------------------------------------------------------- metrics


def throughput(s: Json) -> float | None:
    """MiB/s."""
    return s["bytes"] / s["seconds"] / MiB if s.get("seconds") else None


def cpu_per_gib(s: Json) -> float | None:
    """CPU seconds per GiB moved."""
    return s["cpu_s"] / (s["bytes"] / GiB) if s.get("bytes") else None


def rate(s: Json) -> float | None:
    """Operations (round trips, connections) per second."""
    return s["count"] / s["seconds"] if s.get("seconds") and s.get("count") else None


def cpu_per_op_us(s: Json) -> float | None:
    return s["cpu_s"] / s["count"] * 1e6 if s.get("count") else None


def handshake_ms(s: Json) -> float | None:
    return s["handshake_s"] / s["count"] * 1e3 if s.get("count") else None


def wrap_ms(s: Json) -> float | None:
    return s["wrap_s"] / s["count"] * 1e3 if s.get("count") else None


def wrap_share(s: Json) -> float | None:
    return s["wrap_s"] / s["handshake_s"] if s.get("handshake_s") else None


def server_cpu_per_conn_us(s: Json) -> float | None:
    """The server process's CPU per connection (the peer of a connection sample)."""
    peer = s.get("peer") or {}
    return peer["cpu_s"] / peer["count"] * 1e6 if peer.get("count") and "cpu_s" in peer else None


def resumed_share(s: Json) -> float | None:
    """The share of a sample's connections that resumed a session."""
    return s["resumed"] / s["count"] if s.get("count") and "resumed" in s else None


#: Connection rows: the baseline of each side's CPU ratio (client, server), by variant.
CONN_BASELINE: dict[str, tuple[str | None, str | None]] = {
    "conn_ktls": ("conn_pyopenssl", "conn_pyopenssl"),
    "conn_pyopenssl": ("conn_pyopenssl", "conn_pyopenssl"),
    "conn_stdlib": ("conn_pyopenssl", None),
    "conn_stdlib_ktls": ("conn_stdlib", None),
    "conn_srv_stdlib": (None, "conn_pyopenssl"),
    "conn_srv_stdlib_ktls": (None, "conn_srv_stdlib"),
    "conn_tcp": ("conn_pyopenssl", None),
    "conn_ktls_resumed": ("conn_pyopenssl_resumed", "conn_pyopenssl_resumed"),
    "conn_pyopenssl_resumed": ("conn_pyopenssl_resumed", "conn_pyopenssl_resumed"),
}
TARGET_CONN_CPU = 1.10


def _side_ratio(value: Json | None) -> str:
    if not value:
        return "-"
    against = VARIANTS[value["against"]].label if value.get("against") in VARIANTS else "?"
    return f"{fmt_ratio(_st(value))} of {against}"


def server_wrap_share(s: Json) -> float | None:
    peer = s.get("peer") or {}
    return peer["wrap_s"] / peer["handshake_s"] if peer.get("handshake_s") else None


# --------------------------------------------------------------------------- statistics


@dataclass
class Stat:
    """Median and spread of one metric over the repetitions."""

    median: float
    low: float
    high: float
    n: int
    q1: float | None = None
    q3: float | None = None

    def as_json(self) -> Json:
        out: Json = {"median": self.median, "min": self.low, "max": self.high, "n": self.n}
        if self.q1 is not None:
            out.update({"q1": self.q1, "q3": self.q3})
        return out


def stat(values: Iterable[float | None]) -> Stat | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    q1 = q3 = None
    if len(vals) >= 4:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    return Stat(statistics.median(vals), min(vals), max(vals), len(vals), q1, q3)


Parts = str | tuple[str, ...]


def _parts(part: Parts) -> tuple[str, ...]:
    return (part,) if isinstance(part, str) else part


class Results:
    """Raw samples indexed by (part, suite, size, variant) and, within, by repetition."""

    def __init__(self, raw: Json) -> None:
        self.raw = raw
        self.env: Json = raw["environment"]
        self.plan: Json = raw["plan"]
        self.groups: dict[tuple[str, str, int, str], dict[int, Json]] = defaultdict(dict)
        self.failures: dict[tuple[str, str, int, str], list[Json]] = defaultdict(list)
        for s in raw["samples"]:
            size = s.get("n", s.get("size", 0)) if s["part"] == "conc" else s.get("size", 0)
            key = (s["part"], s.get("suite", ""), int(size), s["variant"])
            if s["status"] == "ok":
                self.groups[key][int(s["rep"])] = s
            else:
                self.failures[key].append(s)

    def samples(self, part: str, suite: str, size: int, variant: str) -> list[Json]:
        return list(self.groups.get((part, suite, size, variant), {}).values())

    def stat(self, part: str, suite: str, size: int, variant: str, metric: Metric) -> Stat | None:
        return stat(metric(s) for s in self.samples(part, suite, size, variant))

    def ratio(
        self, part: Parts, suite: str, size: int, a: str, b: str, metric: Metric
    ) -> Stat | None:
        """Pairwise (same repetition) ratio of *metric*, variant *a* over *b*; several
        parts pool their pairs."""
        vals = []
        for p in _parts(part):
            ga = self.groups.get((p, suite, size, a), {})
            gb = self.groups.get((p, suite, size, b), {})
            for rep, sa in ga.items():
                sb = gb.get(rep)
                if sb is None:
                    continue
                va, vb = metric(sa), metric(sb)
                if va is not None and vb:
                    vals.append(va / vb)
        return stat(vals)

    def pooled_user_share(self, part: Parts, suite: str, size: int, variant: str) -> float | None:
        ss = [s for p in _parts(part) for s in self.samples(p, suite, size, variant)]
        user = sum(s.get("user_ticks", 0) for s in ss)
        total = user + sum(s.get("sys_ticks", 0) for s in ss)
        return user / total if total else None

    def pooled_split_per_gib(
        self, part: Parts, suite: str, size: int, variant: str
    ) -> tuple[float, float] | None:
        """(user, sys) CPU seconds per GiB: the median total split by the pooled share."""
        total = stat(
            cpu_per_gib(s) for p in _parts(part) for s in self.samples(p, suite, size, variant)
        )
        share = self.pooled_user_share(part, suite, size, variant)
        if total is None or share is None:
            return None
        return total.median * share, total.median * (1 - share)

    def unavailable(self, part: str, suite: str, size: int, variant: str) -> str | None:
        fails = self.failures.get((part, suite, size, variant), [])
        if fails and not self.samples(part, suite, size, variant):
            reasons = {f.get("reason", "") for f in fails}
            status = {f["status"] for f in fails}
            word = "unavailable" if status == {"unavailable"} else "failed"
            return f"{word}: {'; '.join(sorted(reasons))[:300]}"
        return None

    def sizes(self, part: str) -> list[int]:
        return sorted({k[2] for k in self.groups if k[0] == part})

    def suites(self) -> list[str]:
        seen = {k[1] for k in self.groups} | {k[1] for k in self.failures}
        return [s for s in SUITES if s in seen]


# --------------------------------------------------------------------------- formatting


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def fmt_stat(s: Stat | None, digits: int = 2) -> str:
    if s is None:
        return "-"
    if s.n == 1:
        return fmt(s.median, digits)
    return f"{fmt(s.median, digits)} ({fmt(s.low, digits)}-{fmt(s.high, digits)})"


def fmt_ratio(s: Stat | None) -> str:
    if s is None:
        return "-"
    if s.n == 1:
        return f"{s.median:.2f}x"
    return f"{s.median:.2f}x ({s.low:.2f}-{s.high:.2f})"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def size_label(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB else f"{size // 1024} KiB"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


# --------------------------------------------------------------------------- summary


def bulk_rows(r: Results, part: str, suite: str, size: int) -> list[Json]:
    rows = []
    for v, info in VARIANTS.items():
        if info.part != part:
            continue
        entry: Json = {"variant": v, "label": info.label, "note": info.note}
        why = r.unavailable(part, suite, size, v)
        if why:
            entry["unavailable"] = why
            rows.append(entry)
            continue
        tp = r.stat(part, suite, size, v, throughput)
        if tp is None:
            continue
        cpu = r.stat(part, suite, size, v, cpu_per_gib)
        split = r.pooled_split_per_gib(part, suite, size, v)
        ss = r.samples(part, suite, size, v)
        entry.update(
            {
                "throughput_mib_s": tp.as_json(),
                "cpu_s_per_gib": cpu.as_json() if cpu else None,
                "user_s_per_gib": split[0] if split else None,
                "sys_s_per_gib": split[1] if split else None,
                "user_share": r.pooled_user_share(part, suite, size, v),
                "kernel_tx": any(s.get("ktls_tx") for s in ss),
                "kernel_rx": any(s.get("ktls_rx") for s in ss),
            }
        )
        if v == "openssl_c_ktls":
            entry["s_server_sendfile"] = all(s.get("s_server_sendfile") for s in ss)
        for name, ref in (("vs_user", REF_USER[part]), ("vs_c", REF_C[part])):
            t = r.ratio(part, suite, size, v, ref, throughput)
            c = r.ratio(part, suite, size, v, ref, cpu_per_gib)
            entry[f"throughput_{name}"] = t.as_json() if t else None
            entry[f"cpu_{name}"] = c.as_json() if c else None
        rows.append(entry)
    return rows


#: Where the targets' bulk pairs come from: the full matrix and the extra anchor triples.
TP = ("tx", "anchor")


def fmt_pairs(s: Stat | None) -> str:
    """Median ratio with its interquartile range (when there are enough pairs) and n."""
    if s is None:
        return "-"
    if s.q1 is None or s.q3 is None:
        return f"{fmt_ratio(s)}, {s.n} pairs"
    return (
        f"{s.median:.2f}x (middle half {s.q1:.2f}-{s.q3:.2f}, "
        f"all {s.low:.2f}-{s.high:.2f}; {s.n} pairs)"
    )


def straddles(s: Stat, limit: float) -> str:
    """A warning when the middle half of the pairs lies on both sides of *limit*."""
    if s.q1 is not None and s.q3 is not None and s.q1 <= limit <= s.q3:
        return "the middle half of the pairs lies on both sides of the limit: this run cannot tell"
    return ""


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "missed")


def targets(r: Results) -> list[Json]:
    """The issue's four targets, per suite (bulk at the largest transfer size measured)."""
    out: list[Json] = []
    for suite in r.suites():
        label = SUITES[suite].label
        sizes = r.sizes("tx")
        size = sizes[-1] if sizes else 0
        where = f"{label}, {size_label(size)}" if size else label
        c = r.ratio(TP, suite, size, OURS["tx"], REF_C["tx"], cpu_per_gib)
        ok = None if c is None else c.median <= TARGET_CPU
        why = ""
        if c is not None:
            ours = r.pooled_split_per_gib(TP, suite, size, OURS["tx"])
            theirs = r.pooled_split_per_gib(TP, suite, size, REF_C["tx"])
            if ours and theirs:
                why = (
                    f"user {fmt(ours[0])} vs {fmt(theirs[0])} s/GiB, "
                    f"system {fmt(ours[1])} vs {fmt(theirs[1])} s/GiB"
                )
            why = "; ".join(x for x in (why, straddles(c, TARGET_CPU)) if x)
        out.append(
            {
                "target": "sendfile sender CPU per GiB within 5% of OpenSSL C kTLS sendfile",
                "where": where,
                "measured": f"{fmt_pairs(c)} of OpenSSL's CPU/GiB",
                "value": c.median if c else None,
                "limit": TARGET_CPU,
                "verdict": verdict(ok),
                "by": None if c is None else f"{(c.median / TARGET_CPU - 1) * 100:.0f}% over 1.05x",
                "detail": why,
            }
        )
        share = r.pooled_user_share(TP, suite, size, OURS["tx"])
        ok = None if share is None else share < TARGET_USER_SHARE
        ss = [x for p in TP for x in r.samples(p, suite, size, OURS["tx"])]
        ticks = sum(s.get("user_ticks", 0) + s.get("sys_ticks", 0) for s in ss)
        out.append(
            {
                "target": "Python user-space CPU under 5% of the sender's total (sendfile)",
                "where": where,
                "measured": f"{pct(share)} user space ({ticks} clock ticks pooled)",
                "value": share,
                "limit": TARGET_USER_SHARE,
                "verdict": verdict(ok),
                "by": None
                if share is None
                else f"{(share - TARGET_USER_SHARE) * 100:.1f} points over 5%",
                "detail": "",
            }
        )
        t = r.ratio(TP, suite, size, OURS["tx"], REF_USER["tx"], throughput)
        ceiling = r.ratio("tx", suite, size, CEILING["tx"], REF_USER["tx"], throughput)
        of_ceiling = r.ratio("tx", suite, size, OURS["tx"], CEILING["tx"], throughput)
        ok = None if t is None else t.median >= TARGET_SPEEDUP
        out.append(
            {
                "target": "throughput at least 1.3x pyOpenSSL user space",
                "where": where,
                "measured": f"{fmt_pairs(t)} pyOpenSSL",
                "value": t.median if t else None,
                "limit": TARGET_SPEEDUP,
                "verdict": verdict(ok),
                "by": None
                if t is None
                else f"{(1 - t.median / TARGET_SPEEDUP) * 100:.0f}% short of 1.3x",
                "detail": f"plain TCP sendfile (ceiling) is {fmt_ratio(ceiling)} pyOpenSSL; "
                f"ossl_ktls reaches {fmt_ratio(of_ceiling)} of it"
                + (
                    f"; {straddles(t, TARGET_SPEEDUP)}"
                    if t and straddles(t, TARGET_SPEEDUP)
                    else ""
                ),
            }
        )
        for side, cpu_metric, anchor in (
            ("client", cpu_per_op_us, ("conn_stdlib_ktls", "conn_stdlib")),
            ("server", server_cpu_per_conn_us, ("conn_srv_stdlib_ktls", "conn_srv_stdlib")),
        ):
            for mine, base, what in (
                ("conn_ktls", "conn_pyopenssl", "full handshake"),
                ("conn_ktls_resumed", "conn_pyopenssl_resumed", "resumed"),
            ):
                c = r.ratio("conn", suite, 0, mine, base, cpu_metric)
                if c is None:
                    continue
                a = r.ratio("conn", suite, 0, anchor[0], anchor[1], cpu_metric)
                res = r.stat("conn", suite, 0, mine, resumed_share)
                detail = f"C anchor in the same run: stdlib ssl + KTLS bit is {fmt_pairs(a)} of "
                detail += "stdlib ssl without it"
                if what == "resumed" and res is not None:
                    detail += f"; {pct(res.median)} of ossl_ktls's connections resumed"
                ok = c.median <= TARGET_CONN_CPU
                out.append(
                    {
                        "target": f"{side} CPU per connection within 1.10x of pyOpenSSL ({what})",
                        "where": label,
                        "measured": f"{fmt_pairs(c)} pyOpenSSL's",
                        "value": c.median,
                        "limit": TARGET_CONN_CPU,
                        "verdict": verdict(ok),
                        "by": f"{(c.median / TARGET_CONN_CPU - 1) * 100:.0f}% over 1.10x",
                        "detail": detail,
                    }
                )
        factors = inflation(r.env)
        for side, metric in (("client", wrap_share), ("server", server_wrap_share)):
            w = r.stat("conn", suite, 0, "conn_ktls", metric)
            ok = None if w is None else w.median < TARGET_WRAP
            detail = ""
            host = (r.env.get("host_wrap_estimate") or {}).get(suite)
            if host:
                detail = (
                    f"on the host (bench/wrap_cost.py, client thread CPU; no kTLS there: kernel "
                    f"calls skipped, the rest of wrap() real): {host['wrap_us']:.0f} µs = "
                    f"{pct(host['wrap_share'])} of a {host['prepared_us']:.0f} µs prepared "
                    f"client handshake"
                )
            elif w is not None and factors and factors[0] > factors[1] * 1.5:
                scaled = w.median * factors[1] / factors[0]
                detail = (
                    f"wrap() is Python, the handshake mostly C: here Python is slowed "
                    f"{factors[0] / factors[1]:.1f}x more than C; scaled back to the host's "
                    f"balance, about {pct(scaled)} (an estimate, not a measurement)"
                )
            out.append(
                {
                    "target": f"wrap() under 5% of the handshake time ({side})",
                    "where": label,
                    "measured": f"{pct(w.median) if w else '-'} of the handshake"
                    + (f" ({pct(w.low)}-{pct(w.high)})" if w and w.n > 1 else ""),
                    "value": w.median if w else None,
                    "limit": TARGET_WRAP,
                    "verdict": verdict(ok),
                    "by": None
                    if w is None
                    else f"{(w.median - TARGET_WRAP) * 100:.1f} points over 5%",
                    "detail": detail,
                }
            )
    return out


#: The FTPS scenario's variants (bench/ftps.py) and what the report calls them.
FTPS_LABELS = {
    "ftps_stock": "stock pyftpdlib (TLS_FTPHandler)",
    "ftps_ktls": "ossl_ktls (KTLS_FTPHandler)",
}
FTPS_NOTES = {
    "ftps_stock": "pyOpenSSL in user space; pyftpdlib sends 64 KiB chunks through SSL_write",
    "ftps_ktls": "kernel TX; pyftpdlib's own os.sendfile loop (64 KiB per call)",
}


def ftps_where(r: Results) -> tuple[str, int] | None:
    """(suite, size) of the FTPS samples, if the run has any."""
    keys = sorted(k for k in (*r.groups, *r.failures) if k[0] == "ftps")
    return (keys[0][1], keys[0][2]) if keys else None


def client_cpu_per_gib(s: Json) -> float | None:
    """The FTPS client's (curl's) CPU seconds per GiB."""
    c = s.get("client_cpu_s")
    return c / (s["bytes"] / GiB) if c is not None and s.get("bytes") else None


def ftps_summary(r: Results) -> Json:
    """Both FTPS variants and the pairwise ossl_ktls / stock ratios (verified pairs only)."""
    where = ftps_where(r)
    if where is None:
        return {}
    suite, size = where
    rows: list[Json] = []
    for v, label in FTPS_LABELS.items():
        entry: Json = {"variant": v, "label": label, "note": FTPS_NOTES[v]}
        fails = r.failures.get(("ftps", suite, size, v), [])
        entry["not_counted"] = [f"{f['status']}: {f.get('reason', '')}"[:300] for f in fails]
        why = r.unavailable("ftps", suite, size, v)
        ss = r.samples("ftps", suite, size, v)
        if why or not ss:
            entry["unavailable"] = why or "not measured"
            rows.append(entry)
            continue
        tp = r.stat("ftps", suite, size, v, throughput)
        cpu = r.stat("ftps", suite, size, v, cpu_per_gib)
        client = r.stat("ftps", suite, size, v, client_cpu_per_gib)
        entry.update(
            {
                "pairs_counted": len(ss),
                "throughput_mib_s": tp.as_json() if tp else None,
                "cpu_s_per_gib": cpu.as_json() if cpu else None,
                "client_cpu_s_per_gib": client.as_json() if client else None,
                "user_share": r.pooled_user_share("ftps", suite, size, v),
                "kernel_tx": all(s.get("ktls_tx") for s in ss),
                "control_kernel_tx": all(s.get("control_ktls_tx") for s in ss),
                "sendfile_bytes_min": min(int(s.get("sendfile_bytes", 0)) for s in ss),
                "tls_tx_sw_delta": sorted({s.get("tls_tx_sw_delta") for s in ss}, key=str),
                "negotiated": sorted({f"{s.get('tls_version')} {s.get('cipher')}" for s in ss}),
                "sha256_checked": sum(1 for s in ss if s.get("sha256_ok")),
                "client": sorted({str(s.get("client")) for s in ss}),
            }
        )
        rows.append(entry)
    out: Json = {"suite": suite, "size": size, "rows": rows}
    if all("unavailable" not in e for e in rows):
        t = r.ratio("ftps", suite, size, "ftps_ktls", "ftps_stock", throughput)
        c = r.ratio("ftps", suite, size, "ftps_ktls", "ftps_stock", cpu_per_gib)
        out["throughput_ratio"] = t.as_json() if t else None
        out["cpu_ratio"] = c.as_json() if c else None
    else:
        out["unavailable"] = "; ".join(
            f"{e['label']}: {e['unavailable']}" for e in rows if "unavailable" in e
        )
    profs = [s for g in r.groups.values() for s in g.values() if s["part"] == "ftps_prof"]
    if profs and profs[0].get("profile"):
        out["profile"] = {"top": profs[0].get("profile_top", []), "text": profs[0]["profile"]}
    return out


def summarize(r: Results) -> Json:
    summary: Json = {"bulk": {}, "rr": {}, "conn": {}, "conc": {}, "targets": targets(r)}
    summary["ftps"] = ftps_summary(r)
    for part in ("tx", "rx"):
        for suite in r.suites():
            for size in r.sizes(part):
                summary["bulk"][f"{part}/{suite}/{size}"] = bulk_rows(r, part, suite, size)
    for suite in r.suites():
        rows: list[Json] = []
        for v, info in VARIANTS.items():
            if info.part != "rr":
                continue
            size = r.plan.get("rr_msg", 1024)
            rt = r.stat("rr", suite, size, v, rate)
            if rt is None:
                rows.append({"variant": v, "unavailable": r.unavailable("rr", suite, size, v)})
                continue
            ratio = r.ratio("rr", suite, size, v, "rr_pyopenssl", rate)
            cpu = r.stat("rr", suite, size, v, cpu_per_op_us)
            rows.append(
                {
                    "variant": v,
                    "round_trips_s": rt.as_json(),
                    "cpu_us_per_round_trip": cpu.as_json() if cpu else None,
                    "vs_pyopenssl": ratio.as_json() if ratio else None,
                }
            )
        summary["rr"][suite] = rows
        rows = []
        for v, info in VARIANTS.items():
            if info.part != "conn":
                continue
            cr = r.stat("conn", suite, 0, v, rate)
            if cr is None:
                rows.append({"variant": v, "unavailable": r.unavailable("conn", suite, 0, v)})
                continue
            row: Json = {"variant": v, "conns_s": cr.as_json()}
            for name, metric in (
                ("handshake_ms", handshake_ms),
                ("wrap_ms", wrap_ms),
                ("wrap_share_client", wrap_share),
                ("wrap_share_server", server_wrap_share),
                ("cpu_us_per_conn", cpu_per_op_us),
                ("server_cpu_us_per_conn", server_cpu_per_conn_us),
                ("resumed", resumed_share),
            ):
                st = r.stat("conn", suite, 0, v, metric)
                row[name] = st.as_json() if st else None
            vs = r.ratio("conn", suite, 0, v, "conn_pyopenssl", rate)
            row["vs_pyopenssl"] = vs.as_json() if vs else None
            client_base, server_base = CONN_BASELINE.get(v, (None, None))
            for key, base, metric in (
                ("client_cpu_ratio", client_base, cpu_per_op_us),
                ("server_cpu_ratio", server_base, server_cpu_per_conn_us),
            ):
                ratio = r.ratio("conn", suite, 0, v, base, metric) if base else None
                row[key] = {**ratio.as_json(), "against": base} if ratio else None
            rows.append(row)
        summary["conn"][suite] = rows
        conc = []
        for n in r.sizes("conc"):
            tp = r.stat("conc", suite, n, "serve", throughput)
            if tp is None:
                continue
            cpu = r.stat("conc", suite, n, "serve", cpu_per_gib)
            conc.append(
                {
                    "n": n,
                    "throughput_mib_s": tp.as_json(),
                    "cpu_s_per_gib": cpu.as_json() if cpu else None,
                    "user_share": r.pooled_user_share("conc", suite, n, "serve"),
                }
            )
        if conc:
            summary["conc"][suite] = conc
    return summary


# --------------------------------------------------------------------------- plots


def plots(r: Results, out: Path) -> list[tuple[str, str]]:
    """Write the PNGs; return (file name, caption) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")

    made: list[tuple[str, str]] = []
    suites = r.suites()
    for part, title in (("tx", "sender measured"), ("rx", "receiver measured")):
        sizes = r.sizes(part)
        if not sizes:
            continue
        variants = [v for v, i in VARIANTS.items() if i.part == part]
        fig, axes = plt.subplots(2, len(suites), figsize=(6.5 * len(suites), 8.5), squeeze=False)
        for col, suite in enumerate(suites):
            ax = axes[0][col]
            width = 0.8 / len(variants)
            if not any(r.samples(part, suite, sz, v) for sz in sizes for v in variants):
                for a in (ax, axes[1][col]):
                    a.set_axis_off()
                ax.text(0.5, 0.5, f"{SUITES[suite].label}: not measured", ha="center")
                continue
            for i, v in enumerate(variants):
                meds, errs_lo, errs_hi, xs = [], [], [], []
                for j, size in enumerate(sizes):
                    st = r.stat(part, suite, size, v, throughput)
                    if st is None:
                        continue
                    xs.append(j + (i - len(variants) / 2 + 0.5) * width)
                    meds.append(st.median)
                    errs_lo.append(st.median - st.low)
                    errs_hi.append(st.high - st.median)
                if xs:
                    ax.bar(
                        xs, meds, width, yerr=[errs_lo, errs_hi], capsize=2,
                        label=VARIANTS[v].label, color=f"C{i}",
                    )  # fmt: skip
            ax.set_xticks(range(len(sizes)), [size_label(s) for s in sizes])
            ax.set_ylabel("MiB/s (median, min-max)")
            ax.set_title(f"{SUITES[suite].label}: throughput, {title}")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax = axes[1][col]
            size = sizes[-1]
            labels, users, syss = [], [], []
            for v in variants:
                split = r.pooled_split_per_gib(part, suite, size, v)
                if split is None:
                    continue
                labels.append(VARIANTS[v].label)
                users.append(split[0])
                syss.append(split[1])
            ys = range(len(labels))
            ax.barh(ys, users, color="C1", label="user")
            ax.barh(ys, syss, left=users, color="C0", label="system")
            ax.set_yticks(list(ys), labels)
            ax.invert_yaxis()
            ax.set_xlabel(f"CPU seconds per GiB, {size_label(size)} transfers")
            ax.set_title(f"{SUITES[suite].label}: CPU of the measured side")
            ax.legend(loc="lower right")
        shown = [
            (i, v)
            for i, v in enumerate(variants)
            if any(r.samples(part, su, sz, v) for su in suites for sz in sizes)
        ]
        handles = [Patch(color=f"C{i}", label=VARIANTS[v].label) for i, v in shown]
        fig.legend(handles=handles, loc="upper center", ncol=5, fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        name = f"bench-{part}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        made.append((name, f"Bulk transfers, {title}"))

    tx_sizes = r.sizes("tx")
    if tx_sizes and any(k[0] == "anchor" for k in r.groups):
        size = tx_sizes[-1]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        panels = (
            (axes[0], REF_C["tx"], cpu_per_gib, TARGET_CPU, "CPU per GiB, ossl_ktls / OpenSSL C"),
            (
                axes[1],
                REF_USER["tx"],
                throughput,
                TARGET_SPEEDUP,
                "throughput, ossl_ktls / pyOpenSSL",
            ),
        )
        for ax, ref, metric, limit, title in panels:
            for k, suite in enumerate(suites):
                vals = []
                for p in TP:
                    ga = r.groups.get((p, suite, size, OURS["tx"]), {})
                    gb = r.groups.get((p, suite, size, ref), {})
                    for rep, sa in ga.items():
                        sb = gb.get(rep)
                        va = metric(sa)
                        vb = metric(sb) if sb else None
                        if va is not None and vb:
                            vals.append(va / vb)
                ax.scatter([k] * len(vals), vals, alpha=0.6, label=SUITES[suite].label)
                if vals:
                    ax.hlines(statistics.median(vals), k - 0.25, k + 0.25, colors="black")
            ax.axhline(limit, color="red", linestyle="--", label=f"target {limit}x")
            ax.set_xticks(range(len(suites)), [SUITES[s].label for s in suites])
            ax.set_xlim(-0.6, len(suites) - 0.4)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.set_title(f"{title}, {size_label(size)}, one dot per pair")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench-pairs.png", dpi=90)
        plt.close(fig)
        made.append(("bench-pairs.png", "The targets' pairs"))

    rr_variants = [v for v, i in VARIANTS.items() if i.part == "rr"]
    conn_variants = [v for v, i in VARIANTS.items() if i.part == "conn"]
    if r.sizes("rr") or r.sizes("conn"):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, part, variants, metric, ylabel in (
            (axes[0], "rr", rr_variants, rate, "1 KiB round trips per second"),
            (axes[1], "conn", conn_variants, rate, "connections per second"),
        ):
            size = r.plan.get("rr_msg", 1024) if part == "rr" else 0
            width = 0.8 / max(1, len(suites))
            if not any(r.samples(part, su, size, v) for su in suites for v in variants):
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{ylabel}: not measured", ha="center", transform=ax.transAxes)
                continue
            for k, suite in enumerate(suites):
                xs, meds, lo, hi = [], [], [], []
                for i, v in enumerate(variants):
                    st = r.stat(part, suite, size, v, metric)
                    if st is None:
                        continue
                    xs.append(i + (k - len(suites) / 2 + 0.5) * width)
                    meds.append(st.median)
                    lo.append(st.median - st.low)
                    hi.append(st.high - st.median)
                ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=SUITES[suite].label)
            ax.set_xticks(range(len(variants)), [VARIANTS[v].label for v in variants])
            ax.set_ylabel(ylabel)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench-small.png", dpi=90)
        plt.close(fig)
        made.append(("bench-small.png", "Small messages and connections"))

    conc_suites = [s for s in suites if r.samples("conc", s, 1, "serve")]
    if conc_suites:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for suite in conc_suites:
            ns = r.sizes("conc")
            tps = [r.stat("conc", suite, n, "serve", throughput) for n in ns]
            cps = [r.stat("conc", suite, n, "serve", cpu_per_gib) for n in ns]
            axes[0].plot(
                ns, [t.median if t else None for t in tps], "o-", label=SUITES[suite].label
            )
            axes[1].plot(
                ns, [c.median if c else None for c in cps], "o-", label=SUITES[suite].label
            )
        axes[0].set_ylabel("aggregate MiB/s")
        axes[1].set_ylabel("server CPU seconds per GiB")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("simultaneous downloads")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench-concurrency.png", dpi=90)
        plt.close(fig)
        made.append(("bench-concurrency.png", "Concurrent downloads through serve"))
    return made


# --------------------------------------------------------------------------- Markdown


def inflation(env: Json) -> tuple[float, float] | None:
    """(Python, C handshake) slow-down of this machine against the host, if both known."""
    here, host = env.get("calibration"), env.get("host_calibration")
    if not here or not host:
        return None
    return (
        here["python_loop_ms"] / host["python_loop_ms"],
        here["handshake_ms"] / host["handshake_ms"],
    )


def calibration(env: Json) -> str:
    here = env.get("calibration")
    if not here:
        return ""
    text = (
        f"pure-Python loop {here['python_loop_ms']:.0f} ms, in-memory TLS 1.3 handshake "
        f"(OpenSSL C) {here['handshake_ms']:.1f} ms"
    )
    host = env.get("host_calibration")
    factors = inflation(env)
    if host and factors:
        text += (
            f"; on the host {host['python_loop_ms']:.0f} ms and {host['handshake_ms']:.1f} ms: "
            f"Python runs {factors[0]:.0f}x slower here, OpenSSL's handshake "
            f"{factors[1]:.0f}x slower"
        )
    return text


def environment_lines(raw: Json) -> list[str]:
    env = raw["environment"]
    emu = {
        "tcg": "yes: QEMU TCG software emulation (absolute numbers are meaningless, "
        "ratios within the run are what counts)",
        "vm": "no: hardware-assisted virtual machine",
        "none": "no: bare metal",
    }.get(env["emulation"], env["emulation"])
    rows = [
        ["kernel", f"{env['kernel']} ({env['kernel_version']})"],
        ["CPU", f"{env['cpu_model']}, {env['cpus']} CPUs, {env['memory_mib']} MiB"],
        ["emulated", emu],
    ]
    if env.get("host_cpu_model"):
        rows.append(["host", f"{env['host_cpu_model']}, kernel {env.get('host_kernel')}"])
    cal = calibration(env)
    if cal:
        rows.append(["calibration", cal])
    rows += [
        ["kernel TLS", env["ktls_probe"]["repr"]],
        ["Python", env["python"]],
        ["pyOpenSSL", f"{env['pyopenssl']} on {env['pyopenssl_openssl']}"],
        ["stdlib ssl", env["stdlib_ssl_openssl"]],
        ["openssl CLI", env["openssl_cli"]],
        ["ossl_ktls", f"{env['ossl_ktls']} (commit {env.get('commit') or '?'})"],
        ["date", env["date"]],
        ["duration", f"{raw.get('duration_s', 0) / 60:.1f} minutes"],
    ]
    return table(["", ""], rows)


def stdlib_finding(r: Results) -> str:
    env = r.env
    kernel_tx = [
        s
        for (part, _suite, _size, v), g in r.groups.items()
        if v == "stdlib_ktls_sendall"
        for s in g.values()
        if s.get("ktls_tx")
    ]
    kernel_rx = {
        SUITES[k[1]].label
        for k, g in r.groups.items()
        if k[3] == "stdlib_ktls_recv"
        for s in g.values()
        if s.get("ktls_rx")
    }
    has_const = env.get("stdlib_ssl_has_op_enable_ktls")
    text = (
        f"The host Python's `ssl` module is linked against {env['stdlib_ssl_openssl']}. "
        f"Python {env['python']} {'has' if has_const else 'has no'} `ssl.OP_ENABLE_KTLS`, and "
        "its `SSLSocket.sendfile()` is a plain `send()` loop over 8 KiB reads (`SSL_sendfile` "
        "is not used), so a stdlib user gets user-space TLS by default. "
    )
    if kernel_tx:
        text += (
            "That OpenSSL *is* built with kTLS: setting the option bit by its number "
            "(`ctx.options |= 0x8`, SSL_OP_ENABLE_KTLS) made it install kernel TX "
            "(checked with getsockopt(SOL_TLS, TLS_TX))"
            + (f", and kernel RX for {', '.join(sorted(kernel_rx))}" if kernel_rx else "")
            + ': the row "stdlib ssl sendall + KTLS bit" measures that path.'
        )
    elif r.env["ktls_probe"]["ulp"]:
        text += "Setting SSL_OP_ENABLE_KTLS (0x8) by hand did not make it use the kernel."
    else:
        text += "Whether its OpenSSL can use kTLS cannot be told here: this kernel has none."
    return text


def bulk_section(r: Results, summary: Json, part: str) -> list[str]:
    lines: list[str] = []
    ref_c = VARIANTS[REF_C[part]].label
    ref_u = VARIANTS[REF_USER[part]].label
    for suite in r.suites():
        for size in r.sizes(part):
            rows = summary["bulk"].get(f"{part}/{suite}/{size}", [])
            if not rows:
                continue
            lines += ["", f"**{SUITES[suite].label}, {size_label(size)}**", ""]
            body = []
            for e in rows:
                if "unavailable" in e:
                    body.append([e["label"], e["unavailable"], "", "", "", "", "", ""])
                    continue
                tp = e["throughput_mib_s"]
                kern = [d for d, on in (("TX", e["kernel_tx"]), ("RX", e["kernel_rx"])) if on]
                label = e["label"] + (f" *(kernel {'+'.join(kern)})*" if kern else "")
                if e.get("s_server_sendfile") is True:
                    label += " *(SSL_sendfile confirmed)*"
                elif e.get("s_server_sendfile") is False:
                    label += " *(s_server fell back to SSL_write)*"
                body.append(
                    [
                        label,
                        fmt_stat(Stat(tp["median"], tp["min"], tp["max"], tp["n"]), 1),
                        fmt_stat(_st(e["cpu_s_per_gib"])),
                        f"{fmt(e['user_s_per_gib'])} / {fmt(e['sys_s_per_gib'])}",
                        pct(e["user_share"]),
                        f"{fmt_ratio(_st(e['throughput_vs_user']))}",
                        f"{fmt_ratio(_st(e['cpu_vs_user']))}",
                        f"{fmt_ratio(_st(e['throughput_vs_c']))} / {fmt_ratio(_st(e['cpu_vs_c']))}",
                    ]
                )
            lines += table(
                [
                    "variant",
                    "MiB/s",
                    "CPU s/GiB",
                    "user / sys s/GiB",
                    "user share",
                    f"throughput vs {ref_u}",
                    f"CPU vs {ref_u}",
                    f"vs {ref_c}: throughput / CPU",
                ],
                body,
            )
    return lines


def pairs_section(r: Results) -> list[str]:
    """The targets' pairs pooled from the matrix and the anchor triples."""
    sizes = r.sizes("tx")
    if not sizes or not any(k[0] == "anchor" for k in r.groups):
        return []
    size = sizes[-1]
    rows = []
    for suite in r.suites():
        for ref, what in ((REF_C["tx"], "OpenSSL C kTLS sendfile"), (REF_USER["tx"], "pyOpenSSL")):
            c = r.ratio(TP, suite, size, OURS["tx"], ref, cpu_per_gib)
            t = r.ratio(TP, suite, size, OURS["tx"], ref, throughput)
            rows.append([SUITES[suite].label, what, fmt_pairs(c), fmt_pairs(t)])
    return [
        "",
        f"**The targets' pairs, repeated.** After the matrix, ossl_ktls sendfile, OpenSSL's "
        f"kTLS sendfile and pyOpenSSL ran {r.plan.get('anchor_pairs')} more times back to back "
        f"at {size_label(size)} (order rotated each time); with the matrix's own pairs they "
        "give the figures the targets are judged on. Each dot of the plot below is one pair.",
        "",
        *table(
            ["suite", "ossl_ktls sendfile against", "CPU per GiB ratio", "throughput ratio"], rows
        ),
    ]


def _st(j: Json | None) -> Stat | None:
    return None if j is None else Stat(j["median"], j["min"], j["max"], j["n"])


def headline(r: Results, ftps: Json | None = None) -> list[str]:
    """The ratios the README may quote: ossl_ktls against each alternative."""
    rows = []
    ftps = ftps or {}
    for suite in r.suites():
        label = SUITES[suite].label
        for part, what in (("tx", "sendfile, sender"), ("rx", "recv_into, receiver")):
            sizes = r.sizes(part)
            if not sizes:
                continue
            size = sizes[-1]
            ours = OURS[part]
            for ref in (REF_USER[part], REF_C[part], CEILING[part]):
                tp = r.ratio(part, suite, size, ours, ref, throughput)
                cpu = r.ratio(part, suite, size, ours, ref, cpu_per_gib)
                if tp is None and cpu is None:
                    continue
                rows.append(
                    [
                        label,
                        f"{what}, {size_label(size)}",
                        VARIANTS[ref].label,
                        fmt_ratio(tp),
                        fmt_ratio(cpu),
                    ]
                )
        for part, ours, ref, what in (
            ("rr", "rr_ktls", "rr_pyopenssl", "1 KiB round trips/s"),
            ("conn", "conn_ktls", "conn_pyopenssl", "connections/s (handshake + wrap)"),
        ):
            size = r.plan.get("rr_msg", 1024) if part == "rr" else 0
            rt = r.ratio(part, suite, size, ours, ref, rate)
            cpu = r.ratio(part, suite, size, ours, ref, cpu_per_op_us)
            if rt is not None:
                rows.append([label, what, VARIANTS[ref].label, fmt_ratio(rt), fmt_ratio(cpu)])
        if ftps.get("suite") == suite:
            what = f"pyftpdlib FTPS RETR, {size_label(ftps['size'])} (server)"
            against = FTPS_LABELS["ftps_stock"]
            if "unavailable" in ftps:
                rows.append([label, what, against, ftps["unavailable"], "-"])
            else:
                rows.append(
                    [
                        label,
                        what,
                        against,
                        fmt_ratio(_st(ftps.get("throughput_ratio"))),
                        fmt_ratio(_st(ftps.get("cpu_ratio"))),
                    ]
                )
    if not rows:
        return ["No kernel TLS rows were measured in this run."]
    return table(["suite", "ossl_ktls", "against", "throughput / rate ratio", "CPU ratio"], rows)


def markdown(raw: Json, r: Results, summary: Json, pngs: list[tuple[str, str]]) -> str:
    plan = raw["plan"]
    env = r.env
    emulated = env["emulation"] == "tcg"
    lines = [
        "# Benchmarks",
        "",
        "ossl_ktls against what a user would pick instead, side by side in one run. "
        + (
            "This run is **emulated (QEMU TCG)**: absolute figures are 10-30x off and "
            "meaningless; only the ratios between variants of the same run are reported "
            "as results. "
            if emulated
            else ""
        )
        + f"Generated by `bench/` ({raw.get('command', 'python -m bench')}); "
        "regenerate with `make bench`. Raw samples and every summary figure are in "
        "[benchmarks.json](benchmarks.json).",
        "",
        "## Where",
        "",
        *environment_lines(raw),
        "",
        "## Summary",
        "",
        "Ratios are medians of per-repetition pairs (the two variants ran back to back), "
        "with the lowest and highest pair in brackets. Bulk figures are at the largest "
        "transfer size of the run. Throughput: higher is better; CPU per GiB: lower is better.",
        "",
    ]
    lines += headline(r, summary.get("ftps"))
    lines += ["", "### Targets", ""]
    trow = []
    for t in summary["targets"]:
        by = t["by"] if t["verdict"] == "missed" else ""
        verdict_text = f"**{t['verdict']}**" + (f" ({by})" if by else "")
        trow.append([t["target"], t["where"], t["measured"], verdict_text, t["detail"]])
    lines += table(["target", "where", "measured", "verdict", "detail"], trow)
    notes_file = Path(__file__).with_name("analysis.md")
    if notes_file.exists():
        lines += ["", notes_file.read_text().strip()]
    lines += [
        "",
        "### The tunnel, and receiving to a file",
        "",
        "`ossl-ktls tunnel` against stunnel4 and a pyOpenSSL copy-loop tunnel (both modes, "
        "both directions, 64 connections at once), and `recvfile` against `recv_into` + "
        "`write`, are measured by `python -m bench.tunnel` (`make bench` runs both): "
        "[tunnel-benchmark.md](tunnel-benchmark.md).",
    ]
    lines += [
        "",
        "## Bulk transfer, sender measured",
        "",
        "The sender is a TLS server; the receiver, another process, finishes its handshake "
        "(pyOpenSSL) and then reads and drops the ciphertext without decrypting it, so only "
        "the sender's work is counted. Timing and CPU run from the first byte sent to the "
        "receiver's FIN after the sender's close_notify and half-close (OpenSSL: from the "
        "HTTP request after the handshake to the end of the response). CPU is the sender "
        "process's, from /proc (user + system); *user share* is the part spent in user space "
        "(for ossl_ktls sendfile: the Python interpreter).",
        *bulk_section(r, summary, "tx"),
        "",
        stdlib_finding(r),
        *pairs_section(r),
    ]
    for name, caption in pngs:
        if name in ("bench-pairs.png", "bench-tx.png"):
            lines += ["", f"![{caption}]({name})"]
    lines += [
        "",
        "## Bulk transfer, receiver measured",
        "",
        "The reverse direction: a peer pushes (ossl_ktls sendfile where the kernel takes it), "
        "the receiver, a TLS client, reads and is measured from the end of its handshake to "
        "the last byte. `openssl s_client` is measured from outside (/proc), its progress "
        "followed through the bytes it writes to /dev/null.",
        *bulk_section(r, summary, "rx"),
    ]
    for name, caption in pngs:
        if name == "bench-rx.png":
            lines += ["", f"![{caption}]({name})"]
    lines += ["", "## Small messages", ""]
    lines += [
        f"{plan.get('rr_msg', 1024)}-byte request, same-size response, one connection, "
        f"{plan.get('rr_seconds')} s per sample, TCP_NODELAY; the client is measured. Both "
        "ends use the variant's stack, except the stdlib client whose server is pyOpenSSL "
        "(Python 3.11's ssl cannot pin a TLS 1.3 suite).",
        "",
    ]
    body = []
    for suite in r.suites():
        for row in summary["rr"].get(suite, []):
            label = VARIANTS[row["variant"]].label
            if "round_trips_s" not in row:
                body.append([SUITES[suite].label, label, row.get("unavailable") or "-", "", ""])
                continue
            body.append(
                [
                    SUITES[suite].label,
                    label,
                    fmt_stat(_st(row["round_trips_s"]), 0),
                    fmt_stat(_st(row["cpu_us_per_round_trip"]), 0),
                    fmt_ratio(_st(row["vs_pyopenssl"])),
                ]
            )
    lines += table(
        ["suite", "variant", "round trips/s", "client CPU µs per round trip", "vs pyOpenSSL"],
        body,
    )
    lines += [
        "",
        "## Connections per second and the cost of wrap()",
        "",
        f"New connection, full handshake (no resumption), hand-over, a 4-byte exchange, close; "
        f"{plan.get('conn_seconds')} s per sample. The client is measured; handshake and "
        "`wrap()` are timed apart (the handshake is finished with `do_handshake()` before "
        "`wrap()`, so `wrap()` measures the hand-over alone: key derivation, setsockopt, "
        "socket swap). The server side's share comes from the peer process.",
        "",
    ]
    body = []
    for suite in r.suites():
        for row in summary["conn"].get(suite, []):
            label = VARIANTS[row["variant"]].label
            if "conns_s" not in row:
                body.append([SUITES[suite].label, label, row.get("unavailable") or "-"] + [""] * 5)
                continue
            ws_c, ws_s = _st(row["wrap_share_client"]), _st(row["wrap_share_server"])
            resumed = _st(row.get("resumed"))
            body.append(
                [
                    SUITES[suite].label,
                    label,
                    fmt_stat(_st(row["conns_s"]), 1),
                    fmt_ratio(_st(row["vs_pyopenssl"])),
                    fmt_stat(_st(row["handshake_ms"])),
                    fmt_stat(_st(row["wrap_ms"]), 3),
                    f"{pct(ws_c.median) if ws_c else '-'} / {pct(ws_s.median) if ws_s else '-'}",
                    fmt_stat(_st(row["cpu_us_per_conn"]), 0),
                    _side_ratio(row.get("client_cpu_ratio")),
                    fmt_stat(_st(row.get("server_cpu_us_per_conn")), 0),
                    _side_ratio(row.get("server_cpu_ratio")),
                    pct(resumed.median) if resumed else "-",
                ]
            )
    lines += table(
        [
            "suite",
            "variant",
            "connections/s",
            "vs pyOpenSSL",
            "handshake ms (client)",
            "wrap() ms (client)",
            "wrap share client / server",
            "client CPU µs/conn",
            "client CPU ratio",
            "server CPU µs/conn",
            "server CPU ratio",
            "resumed",
        ],
        body,
    )
    lines += [
        "",
        "CPU ratios are per-repetition pairs against the row named after them: ossl_ktls "
        "against pyOpenSSL (resumed against resumed), the stdlib's KTLS bit against the "
        "stdlib without it (the C anchor: OpenSSL's own kernel set-up, done in C). The "
        "stdlib client rows face a pyOpenSSL server and the stdlib server rows a pyOpenSSL "
        "client, so only their own side is compared. *resumed*: the share of connections "
        "whose handshake resumed the previous session.",
    ]
    est = r.env.get("host_wrap_estimate")
    if est:
        parts = [
            f"{SUITES[k].label}: a client handshake takes {v['handshake_us']:.0f} µs; "
            f"do-nothing callbacks add {pct(v['floor_overhead'])}, `prepare()`'s "
            f"{pct(v['prepare_overhead'])}; `wrap()` takes {v['wrap_us']:.0f} µs; a whole "
            f"connection costs {v['connection_ratio']:.2f}x a plain handshake"
            for k, v in est.items()
            if k in SUITES and "wrap_us" in v
        ]
        if parts:
            lines += [
                "",
                "The same costs on the host CPU, where the balance between Python and C is the "
                "real one (`bench/wrap_cost.py`: client thread CPU, the server in another "
                "process; the host has no kTLS, so the kernel calls of `wrap()` are skipped and "
                "their cost comes on top; medians of "
                f"{next(iter(est.values()))['n']} connections per variant, interleaved): "
                + "; ".join(parts)
                + ".",
            ]
        stepped = {k: v["steps_us"] for k, v in est.items() if k in SUITES and v.get("steps_us")}
        if stepped:
            labels: list[str] = []  # each suite's steps in order, merged
            for steps in stepped.values():
                for i, x in enumerate(steps):
                    if x not in labels:
                        before = list(steps)[i - 1] if i else None
                        at = labels.index(before) + 1 if before in labels else len(labels)
                        labels.insert(at, x)
            lines += [
                "",
                "Where `wrap()`'s time goes on the host, step by step (client thread CPU, "
                "medians; each step timed by a wrapper of its own, nested steps included in "
                "their parents; the kernel calls skipped as above). The cProfile listings in "
                "*Where ossl_ktls's own Python time goes* below give the same split by "
                "function under TCG.",
                "",
            ]
            lines += table(
                ["step", *(SUITES[k].label for k in stepped)],
                [
                    [
                        "&nbsp;" * 4 * ((len(label) - len(label.lstrip())) // 2) + label.strip(),
                        *(
                            f"{stepped[k][label]:.1f} µs" if label in stepped[k] else "-"
                            for k in stepped
                        ),
                    ]
                    for label in labels
                ],
            )
    for name, caption in pngs:
        if name == "bench-small.png":
            lines += ["", f"![{caption}]({name})"]
    lines += ["", "## Concurrency through `serve`", ""]
    if summary["conc"]:
        lines += [
            f"`python -m ossl_ktls serve` (one thread per connection); N clients (threads of "
            f"one process) each finish a handshake, then all fetch a "
            f"{size_label(plan.get('conc_size', MiB))} file at once (HTTP/1.1, "
            "Connection: close) and drop the ciphertext. Measured: the server process, from the "
            "moment every handshake is done to the last download's end (clock ticks, all "
            "threads).",
            "",
        ]
        body = []
        for suite, rows in summary["conc"].items():
            base = rows[0]["throughput_mib_s"]["median"] if rows else None
            for row in rows:
                tp = _st(row["throughput_mib_s"])
                body.append(
                    [
                        SUITES[suite].label,
                        str(row["n"]),
                        fmt_stat(tp, 1),
                        fmt_stat(_st(row["cpu_s_per_gib"])),
                        pct(row["user_share"]),
                        f"{tp.median / base:.2f}x" if tp and base else "-",
                    ]
                )
        lines += table(
            [
                "suite",
                "downloads at once",
                "aggregate MiB/s",
                "server CPU s/GiB",
                "user share",
                "throughput vs 1",
            ],
            body,
        )
        kt = {s.get("serve_ktls") for s in raw["samples"] if s["part"] == "conc"}
        lines += ["", f"serve reported kernel TLS {', '.join(sorted(str(k) for k in kt))}."]
        for name, caption in pngs:
            if name == "bench-concurrency.png":
                lines += ["", f"![{caption}]({name})"]
    else:
        lines += ["Not measured in this run. " + " ".join(raw.get("notes", []))]
    lines += ftps_section(summary.get("ftps") or {})
    profs = [s for s in raw["samples"] if s["part"] == "prof" and s.get("profile")]
    if profs:
        lines += [
            "",
            "## Where ossl_ktls's own Python time goes",
            "",
            "cProfile of one extra sendfile transfer (the largest size; from the first call to "
            "the receiver's FIN) and of `wrap()` over the connections of one extra connection "
            "test, per suite. Profiled timings are inflated by the profiler and are not used "
            "anywhere else; the call counts and the split between functions are the point. "
            "System calls show up as the built-in methods that make them (`os.sendfile`, "
            "`setsockopt`): their time is kernel time.",
        ]
        for s in profs:
            what = "sendfile transfer" if s["variant"] == "ktls_sendfile" else "wrap()"
            where = SUITES[s["suite"]].label
            if s["variant"] == "ktls_sendfile":
                where += f", {size_label(s['size'])}"
            else:
                where += f", {s.get('count')} connections"
            lines += [
                "",
                f"<details><summary>{what}: {where}</summary>",
                "",
                "```",
                s["profile"],
                "```",
                "",
                "</details>",
            ]
    lines += [
        "",
        "## Method",
        "",
        f"- Profile `{plan['profile']}`: {plan['reps']} repetitions; bulk sizes "
        f"{', '.join(size_label(s) for s in plan['tx_sizes'])} (TX), "
        f"{', '.join(size_label(s) for s in plan['rx_sizes'])} (RX); suites "
        f"{', '.join(SUITES[s].label for s in plan['suites'])}.",
        "- Two long-lived worker processes are the endpoints, one measured, one its peer; "
        "OpenSSL's programs and `serve` are measured from outside through /proc/<pid>.",
        "- Each repetition runs every variant of a configuration once, in an order rotated "
        "by one from the previous repetition (interleaved), so that load drifts on the "
        "shared, emulated machine touch every variant alike.",
        "- CPU: /proc/<pid>/schedstat run time (ns) for the total of single-threaded "
        "processes, /proc/<pid>/stat clock ticks for the user/system split (pooled over the "
        "repetitions) and for multi-threaded `serve`.",
        "- Under emulation the guest cannot see when the host takes its virtual CPUs away "
        "(no steal time under TCG): such pauses count as CPU time of whatever was running, "
        "so on a loaded host CPU figures are about as noisy as timings. Interleaving and "
        "medians of pairs are the defence; the spread columns show what is left.",
        "- Certificates: a throwaway ECDSA P-256 key; TLS 1.2 uses "
        "ECDHE-ECDSA-AES256-GCM-SHA384, TLS 1.3 TLS_AES_128_GCM_SHA256. No session resumption.",
        "- OpenSSL's C kTLS path: `openssl s_server -WWW -sendfile` with an OPENSSL_CONF "
        "holding `Options = KTLS`; /proc/net/tls_stat confirms the kernel took TX "
        "(the row is marked unavailable otherwise) and s_server's own \"KTLS SENDFILE ... "
        'OK" line that `SSL_sendfile` was used.',
        "- pyOpenSSL rows use a Context without `ossl_ktls.prepare()` (what a pyOpenSSL user "
        "runs); ossl_ktls rows use `prepare()` + `wrap()` with default options.",
    ]
    failed = [(k, v) for k, v in r.failures.items() if any(s["status"] == "error" for s in v)]
    if failed:
        lines += ["", "Samples that failed (not counted):", ""]
        for (part, suite, size, variant), fails in sorted(failed):
            errs = [f for f in fails if f["status"] == "error"]
            lines.append(
                f"- {part} {suite} {size_label(size) if size else ''} {variant}: "
                f"{len(errs)}x ({errs[0].get('reason', '')[:200]})"
            )
    if raw.get("boots"):
        lines += [
            "",
            f"Note: the guest was stopped from outside during the run; it was booted again "
            f"and the run resumed after its last complete repetition ({len(raw['boots'])} "
            "boots). Each repetition, and so each pair behind a ratio, comes from one boot.",
        ]
    for note in raw.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def profile_total_s(text: str) -> float | None:
    """The total of a pstats listing's first line ("N function calls in X seconds")."""
    for line in text.splitlines():
        words = line.split()
        if "calls" in words and "in" in words and words[-1] == "seconds":
            try:
                return float(words[-2])
            except ValueError:
                return None
    return None


def ftps_section(ftps: Json) -> list[str]:
    """The FTPS scenario: setup, both variants, the ratios, what was verified, the profile."""
    lines = ["", "## FTPS: pyftpdlib RETR", ""]
    if not ftps:
        return [*lines, "Not measured in this run."]
    size = size_label(ftps["size"])
    lines += [
        f"One FTPS session per sample: explicit FTPS (AUTH TLS, PROT P), login, one RETR of "
        f"a {size} file, QUIT. The server is pyftpdlib 2.x in its own event loop, in the "
        "measured worker process, with either pyftpdlib's own `TLS_FTPHandler` (pyOpenSSL in "
        "user space; pyftpdlib never uses sendfile for TLS) or "
        "`ossl_ktls.contrib.pyftpdlib.KTLS_FTPHandler` (kernel TX, and pyftpdlib's own "
        "`os.sendfile` loop turned back on). Both get a Context offering only "
        f"{SUITES[ftps['suite']].label}. The client is `curl --ssl-reqd --tls13-ciphers "
        "TLS_AES_128_GCM_SHA256`, another process, writing to a file on the guest's tmpfs; "
        "every download is checked for size and SHA-256 against the payload. curl rather "
        "than `ftplib.FTP_TLS`: it costs less client CPU (on the host, one 64 MiB RETR from "
        "stock pyftpdlib: 0.11-0.14 s for curl against 0.15-0.16 s for ftplib), so it takes "
        "less of the two (emulated) CPUs the server competes for. The server measures itself "
        "(/proc/self/schedstat and /proc/self/stat) from the moment the file can go out (RETR "
        "received *and* the data connection's handshake done) to the client's QUIT, which "
        "curl sends after the last byte and the 226 reply: handshakes and login are not "
        "counted. After one unrecorded warm-up of each, the two variants run back to back, "
        "in an order rotated from one pair to the next; ratios are ossl_ktls over stock, "
        "pair by pair.",
        "",
        "An ossl_ktls sample counts only if the data connection reported kernel TX, "
        "pyftpdlib's `os.sendfile` moved every byte of the file (counted in the server), and "
        "/proc/net/tls_stat `TlsTxSw` grew during the session by at least one per "
        "connection that reported kernel TX (control and data); otherwise it is "
        "*unavailable* and no ratio uses it. A stock sample that used sendfile or kernel TX "
        "would be an error.",
        "",
    ]
    body = []
    for e in ftps["rows"]:
        if "unavailable" in e:
            body.append([e["label"], e["unavailable"], "", "", "", "", ""])
            continue
        deltas = "/".join(map(str, e["tls_tx_sw_delta"]))
        verified = (
            f"data TX in kernel: {'yes' if e['kernel_tx'] else 'no'}; os.sendfile "
            f"≥ {e['sendfile_bytes_min']} bytes; TlsTxSw +{deltas}"
        )
        body.append(
            [
                e["label"],
                fmt_stat(_st(e["throughput_mib_s"]), 1),
                fmt_stat(_st(e["cpu_s_per_gib"])),
                pct(e["user_share"]),
                fmt_stat(_st(e["client_cpu_s_per_gib"])),
                ", ".join(e["negotiated"]),
                f"{verified}; SHA-256 ok {e['sha256_checked']}/{e['pairs_counted']}",
            ]
        )
    lines += table(
        [
            "server",
            "MiB/s",
            "server CPU s/GiB",
            "user share",
            "client (curl) CPU s/GiB",
            "negotiated",
            "checked",
        ],
        body,
    )
    lines.append("")
    if "unavailable" in ftps:
        lines.append(f"No ratio: {ftps['unavailable']}.")
    else:
        t, c = _st(ftps.get("throughput_ratio")), _st(ftps.get("cpu_ratio"))
        lines.append(
            f"**ossl_ktls / stock, pair by pair ({t.n if t else 0} pairs):** throughput "
            f"{fmt_ratio(t)}, server CPU per GiB {fmt_ratio(c)}."
        )
    skipped = [x for e in ftps["rows"] for x in e.get("not_counted", [])]
    if skipped:
        lines += ["", "Samples not counted: " + "; ".join(sorted(set(skipped))) + "."]
    prof = ftps.get("profile")
    if prof:
        total = profile_total_s(prof["text"])
        rows = [
            [
                f"`{p['function']}`",
                str(p["ncalls"]),
                pct(p["cumtime"] / total) if total else "-",
                pct(p["tottime"] / total) if total else "-",
            ]
            for p in prof["top"]
        ]
        lines += [
            "",
            f"**Where the ossl_ktls server's time goes.** cProfile of one more ossl_ktls RETR "
            f"({size}; the same window as above, not used for any figure). Shares of the "
            "profiled time; the profiler inflates Python calls, so the split is the point, "
            "not the times. `posix.sendfile` is kernel time (reading the page cache, "
            "encrypting, queueing on the socket).",
            "",
            *table(["function (top by cumulative time)", "calls", "cumulative", "own"], rows),
            "",
            "<details><summary>The full listing</summary>",
            "",
            "```",
            prof["text"],
            "```",
            "",
            "</details>",
        ]
    return lines


def write(raw: Json, out: Path) -> None:
    """Write benchmarks.json, benchmarks.md and the plots into *out*."""
    out.mkdir(parents=True, exist_ok=True)
    r = Results(raw)
    summary = summarize(r)
    raw = {**raw, "summary": summary}
    pngs = plots(r, out)
    (out / "benchmarks.json").write_text(json.dumps(raw, indent=1) + "\n")
    (out / "benchmarks.md").write_text(markdown(raw, r, summary, pngs))

"""Fetch Debian kernels for the kernel lab, into a cache outside the git tree.

Usage::

    python -m lab.kernels fetch 5.10 6.1 6.12 7.2   # resolve newest, download, unpack
    python -m lab.kernels fetch --offline 6.1        # cache only, no network
    python -m lab.kernels list                       # what the cache holds

Each series is resolved at fetch time to the newest package of that series in its Debian
suites, through a private apt configuration (its own sources file, lists and cache under
the cache folder; the machine's own apt sources are only *read*, to learn which Debian
archive this machine uses). Packages are fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x``; nothing is installed. The cache (``~/.cache/ossl-ktls/kernels``, or
``$OSSL_KTLS_KERNEL_CACHE``) is reused offline: when ``apt-get update`` fails, the newest
cached kernel of the series is used.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MANIFEST = "kernel.json"


class FetchError(RuntimeError):
    """A kernel could not be resolved, downloaded or found in the cache."""


@dataclass(frozen=True)
class Layout:
    """One way a series' kernel can be packaged.

    ``image`` is an anchored regex on package names whose ``abi`` group is the kernel
    release (``uname -r``); ``extra`` are companion packages, formatted with ``abi``.
    """

    image: str
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Series:
    """A kernel series of the lab: the suites it is taken from and its package layouts."""

    name: str
    suites: tuple[str, ...]
    layouts: tuple[Layout, ...]


SERIES: dict[str, Series] = {
    s.name: s
    for s in (
        Series(
            "5.10",
            ("bullseye",),
            (Layout(r"^linux-image-(?P<abi>5\.10\.0-[0-9]+-amd64)-unsigned$"),),
        ),
        Series(
            "6.1",
            ("bookworm", "bookworm-security"),
            (Layout(r"^linux-image-(?P<abi>6\.1\.0-[0-9]+-amd64)-unsigned$"),),
        ),
        Series(
            "6.12",
            ("trixie", "trixie-security"),
            (Layout(r"^linux-image-(?P<abi>6\.12\.[0-9]+\+[a-z0-9.]+-amd64)-unsigned$"),),
        ),
        # "7.2" stands for the newest 7.x kernel in sid. sid splits image and modules.
        Series(
            "7.2",
            ("sid",),
            (
                Layout(
                    r"^linux-binary-unsigned-(?P<abi>7\.[0-9]+\.[0-9]+\+[a-z0-9.]+-amd64)$",
                    ("linux-modules-{abi}",),
                ),
                Layout(r"^linux-image-(?P<abi>7\.[0-9]+\.[0-9]+\+[a-z0-9.]+-amd64)-unsigned$"),
            ),
        ),
    )
}
SUITES: tuple[str, ...] = ("bullseye", "bookworm", "trixie", "sid")
SECURITY_SUITES: tuple[str, ...] = ("bookworm-security", "trixie-security")


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel in the cache."""

    series: str
    release: str
    suite: str
    packages: dict[str, str]
    vmlinuz: Path
    modules: Path


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays machine-readable."""
    print(f"kernels: {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """The kernel cache folder (``$OSSL_KTLS_KERNEL_CACHE`` or ``~/.cache/ossl-ktls/kernels``)."""
    env = os.environ.get("OSSL_KTLS_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ossl-ktls" / "kernels"


# --- Debian version ordering (Debian Policy 5.6.12) -------------------------------------------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _cmp_fragment(a: str, b: str) -> int:
    while a or b:
        na = re.match(r"[^0-9]*", a)[0]  # type: ignore[index]
        nb = re.match(r"[^0-9]*", b)[0]  # type: ignore[index]
        for i in range(max(len(na), len(nb))):
            oa = _order(na[i]) if i < len(na) else 0
            ob = _order(nb[i]) if i < len(nb) else 0
            if oa != ob:
                return -1 if oa < ob else 1
        a, b = a[len(na) :], b[len(nb) :]
        da = re.match(r"[0-9]*", a)[0]  # type: ignore[index]
        db = re.match(r"[0-9]*", b)[0]  # type: ignore[index]
        if int(da or 0) != int(db or 0):
            return -1 if int(da or 0) < int(db or 0) else 1
        a, b = a[len(da) :], b[len(db) :]
    return 0


def compare_versions(a: str, b: str) -> int:
    """Compare two Debian package versions: negative, zero or positive like ``cmp``."""

    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _cmp_fragment(ua, ub) or _cmp_fragment(ra, rb)


version_key = functools.cmp_to_key(compare_versions)


# --- the machine's apt sources (read only) ----------------------------------------------------


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
        elif line[0].isspace() and key:
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()


def machine_sources(etc: Path = Path("/etc/apt")) -> list[tuple[str, list[str], str]]:
    """The machine's binary apt sources as (URI, suites, Signed-By) triples."""
    found: list[tuple[str, list[str], str]] = []
    parts = etc / "sources.list.d"
    for path in sorted(parts.glob("*.sources")) if parts.is_dir() else []:
        for st in _deb822_stanzas(path.read_text(errors="replace")):
            if "deb" not in st.get("types", "").split():
                continue
            if st.get("enabled", "yes").lower() == "no":
                continue
            suites = st.get("suites", "").split()
            for uri in st.get("uris", "").split():
                found.append((uri, suites, st.get("signed-by", "")))
    lists = [etc / "sources.list"]
    if parts.is_dir():
        lists += sorted(parts.glob("*.list"))
    for path in lists:
        if not path.is_file():
            continue
        for raw in path.read_text(errors="replace").splitlines():
            line = re.sub(r"\[[^]]*\]", "", raw.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                opts = re.search(r"signed-by=(\S+?)[\] ]", raw)
                found.append((line[1], [line[2]], opts.group(1) if opts else ""))
    return found


def archive_uris(etc: Path = Path("/etc/apt")) -> tuple[str, str, str]:
    """The Debian archive and security-archive URIs this machine uses, and a keyring.

    The security URI comes from a source whose suite ends in ``-security``; when the
    machine has none, it is derived from the main archive URI (``.../debian`` becomes
    ``.../debian-security``, Debian's own naming).
    """
    main = security = ""
    keyring = ""
    for uri, suites, signed_by in machine_sources(etc):
        if uri.startswith("cdrom:"):
            continue
        if any(s.endswith("-security") or s.endswith("/updates") for s in suites):
            security = security or uri
        elif not main:
            main = uri
            keyring = signed_by if signed_by.startswith("/") else ""
    if not main:
        raise FetchError(
            f"no Debian archive found in {etc}/sources.list or {etc}/sources.list.d/*.sources"
        )
    if not security:
        security = main.rstrip("/") + "-security"
    return main, security, keyring or DEFAULT_KEYRING


# --- private apt --------------------------------------------------------------------------------


class Apt:
    """apt-get/apt-cache run against a private sources file, lists and cache."""

    def __init__(self, root: Path) -> None:
        self.root = root / "apt"
        self.sources = self.root / "debian.sources"

    def write_sources(self) -> None:
        """Write the private deb822 sources file from the machine's configuration."""
        main, security, keyring = archive_uris()
        stanza = "Types: deb\nURIs: {}\nSuites: {}\nComponents: main\nSigned-By: {}\n"
        text = stanza.format(main, " ".join(SUITES), keyring)
        text += "\n" + stanza.format(security, " ".join(SECURITY_SUITES), keyring)
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.sources.write_text(text)

    def options(self) -> list[str]:
        """The ``-o`` options that make apt use only the private configuration."""
        opts = {
            "Dir::Etc::SourceList": str(self.sources),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::State::Lists": str(self.root / "lists"),
            "Dir::Cache": str(self.root / "cache"),
            # Keep the binary package cache between calls (some images, like Docker's
            # debian, disable it globally; rebuilding it costs ~8 s per apt-cache call).
            "Dir::Cache::pkgcache": "pkgcache.bin",
            "Dir::Cache::srcpkgcache": "",
            "Dir::State::status": "/dev/null",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "Acquire::Languages": "none",
        }
        if os.geteuid() == 0:
            # The cache usually sits in /root, which apt's _apt sandbox user cannot enter.
            opts["APT::Sandbox::User"] = "root"
        return [a for k, v in opts.items() for a in ("-o", f"{k}={v}")]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        """Run an apt tool quietly; return stdout, raise FetchError with stderr on failure."""
        cmd = [tool, "-q", *self.options(), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise FetchError(f"{' '.join([tool, *args])} failed: " + " | ".join(detail))
        return proc.stdout

    def update(self) -> None:
        """Refresh the private package lists."""
        self.write_sources()
        self.run("apt-get", "update")

    def candidates(self, prefix: str) -> list[str]:
        """Package names starting with ``prefix``."""
        return self.run("apt-cache", "pkgnames", prefix).split()

    def madison(self, names: list[str]) -> list[tuple[str, str, str]]:
        """(package, version, suite) for every version of ``names`` apt knows."""
        rows = []
        for line in self.run("apt-cache", "madison", *names).splitlines():
            cols = [c.strip() for c in line.split("|")]
            if len(cols) == 3 and cols[2].endswith(" Packages"):
                suite = cols[2].split()[1].split("/")[0]
                rows.append((cols[0], cols[1], suite))
        return rows


@dataclass(frozen=True)
class Resolved:
    """The newest package set of a series, as found in the package lists."""

    release: str
    suite: str
    packages: dict[str, str]


def _prefix(pattern: str) -> str:
    """The literal start of an anchored package regex (for ``apt-cache pkgnames``)."""
    return re.match(r"\^([a-z-]+)", pattern).group(1)  # type: ignore[union-attr]


def resolve(apt: Apt, series: Series) -> Resolved:
    """The newest kernel of ``series`` in its suites, with the exact package versions."""
    best: Resolved | None = None
    best_version = ""
    for layout in series.layouts:
        names = [n for n in apt.candidates(_prefix(layout.image)) if re.match(layout.image, n)]
        if not names:
            continue
        for name, version, suite in apt.madison(names):
            if suite not in series.suites:
                continue
            if best is not None and compare_versions(version, best_version) <= 0:
                continue
            abi = re.match(layout.image, name).group("abi")  # type: ignore[union-attr]
            pkgs = {name: version}
            for extra in layout.extra:
                pkgs[extra.format(abi=abi)] = version
            best, best_version = Resolved(abi, suite, pkgs), version
    if best is None:
        suites = " or ".join(series.suites)
        raise FetchError(f"kernel series {series.name}: no amd64 kernel package found in {suites}")
    return best


# --- the cache ----------------------------------------------------------------------------------


def _load(folder: Path) -> Kernel | None:
    try:
        meta = json.loads((folder / MANIFEST).read_text())
        return Kernel(
            series=meta["series"],
            release=meta["release"],
            suite=meta["suite"],
            packages=dict(meta["packages"]),
            vmlinuz=folder / meta["vmlinuz"],
            modules=folder / meta["modules"],
        )
    except (OSError, ValueError, KeyError):
        return None


def cached(series: str, root: Path | None = None) -> Kernel | None:
    """The newest complete kernel of ``series`` in the cache, or None."""
    base = (root or cache_dir()) / series
    found = [k for d in base.glob("*") if d.is_dir() and (k := _load(d)) is not None]
    if not found:
        return None
    return max(found, key=lambda k: version_key(max(k.packages.values(), key=version_key)))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _find_layout(tree: Path, release: str) -> tuple[Path, Path]:
    """Locate the kernel image and the modules folder in an unpacked package tree."""
    images = [
        tree / "boot" / f"vmlinuz-{release}",
        tree / "usr/lib/modules" / release / "vmlinuz.unsigned",
        tree / "usr/lib/modules" / release / "vmlinuz",
        tree / "lib/modules" / release / "vmlinuz",
    ]
    mods = [tree / "lib/modules" / release, tree / "usr/lib/modules" / release]
    image = next((p for p in images if p.is_file()), None)
    moddir = next((p for p in mods if (p / "kernel").is_dir()), None)
    if image is None or moddir is None:
        raise FetchError(f"unpacked {release} but found no kernel image or modules in {tree}")
    return image, moddir


def _depmod(tree: Path, release: str) -> None:
    """Generate modules.dep (Debian packages leave it to postinst)."""
    if not (tree / "lib").exists() and (tree / "usr/lib").is_dir():
        (tree / "lib").symlink_to("usr/lib")  # merged-/usr, as on the real system
    proc = subprocess.run(
        ["depmod", "-a", "-b", str(tree), release], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        log(f"warning: depmod failed ({proc.stderr.strip()}); vng will retry at boot")


def download(apt: Apt, series: Series, res: Resolved, root: Path) -> Kernel:
    """Download and unpack ``res`` into the cache; return the cached kernel."""
    base = root / series.name
    base.mkdir(parents=True, exist_ok=True)
    final = base / res.release
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=base, prefix=".partial-") as tmp:
        work = Path(tmp)
        debs = work / "debs"
        debs.mkdir()
        tree = work / "tree"
        log(f"{series.name}: downloading {' '.join(f'{n}={v}' for n, v in res.packages.items())}")
        apt.run("apt-get", "download", *(f"{n}={v}" for n, v in res.packages.items()), cwd=debs)
        size = sum(p.stat().st_size for p in debs.glob("*.deb"))
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        shutil.rmtree(debs)
        image, moddir = _find_layout(tree, res.release)
        _depmod(tree, res.release)
        meta = {
            "series": series.name,
            "release": res.release,
            "suite": res.suite,
            "packages": res.packages,
            "vmlinuz": str(image.relative_to(work)),
            "modules": str(moddir.relative_to(work)),
            "download_bytes": size,
            "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / MANIFEST).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        final.chmod(0o755)
    log(
        f"{series.name}: {res.release} unpacked ({size / 1e6:.0f} MB in "
        f"{time.monotonic() - started:.0f} s)"
    )
    kernel = _load(final)
    assert kernel is not None
    return kernel


def _prune(root: Path, keep: Kernel) -> None:
    """Remove older kernels of the same series (each one is a few hundred MB)."""
    for d in (root / keep.series).glob("*"):
        if d.is_dir() and not d.name.startswith(".") and d.name != keep.release:
            log(f"{keep.series}: removing superseded {d.name}")
            shutil.rmtree(d, ignore_errors=True)


def fetch(names: list[str], *, offline: bool = False, root: Path | None = None) -> list[Kernel]:
    """Resolve, download and unpack the newest kernel of each series (cache reused)."""
    root = root or cache_dir()
    unknown = [n for n in names if n not in SERIES]
    if unknown:
        raise FetchError(f"unknown kernel series {', '.join(unknown)}; known: {', '.join(SERIES)}")
    with _locked(root):
        apt = Apt(root)
        online = False
        if not offline:
            try:
                apt.update()
                online = True
            except FetchError as exc:
                log(f"warning: {exc}; falling back to the cache")
        result = []
        for name in names:
            series = SERIES[name]
            have = cached(name, root)
            if not online:
                if have is None:
                    suites = " or ".join(series.suites)
                    raise FetchError(
                        f"kernel series {name} ({suites}): not in the cache {root} "
                        "and the package lists could not be updated"
                    )
                log(f"{name}: using cached {have.release} (offline)")
                result.append(have)
                continue
            res = resolve(apt, series)
            if have is not None and have.release == res.release and have.packages == res.packages:
                log(f"{name}: {res.release} is up to date in the cache")
                result.append(have)
                continue
            kernel = download(apt, series, res, root)
            _prune(root, kernel)
            result.append(kernel)
        return result


def ensure(name: str) -> Kernel:
    """The cached kernel of a series, fetched first when the cache has none."""
    have = cached(name)
    return have if have is not None else fetch([name])[0]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``fetch [--offline] SERIES...`` and ``list``."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.kernels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="resolve, download and unpack kernels")
    p_fetch.add_argument("series", nargs="+", choices=list(SERIES))
    p_fetch.add_argument("--offline", action="store_true", help="use the cache only")
    sub.add_parser("list", help="show the cached kernels")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            kernels = fetch(args.series, offline=args.offline)
        else:
            kernels = [k for s in SERIES if (k := cached(s)) is not None]
    except FetchError as exc:
        print(f"kernels: error: {exc}", file=sys.stderr)
        return 1
    for k in kernels:
        print(f"{k.series}\t{k.release}\t{k.vmlinuz}\t{k.modules}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Install what the kernel lab needs (used by `make setup`, hence by `make test` and `make demo`).
#
#  1. Debian packages: qemu-system-x86 busybox-static kmod cpio udev openssl gnutls-bin curl
#     iproute2 (ss: the sock_diag differential test), stunnel4 (the tunnel benchmark),
#     plus python3/python3-venv. Nothing is installed when all are present. When some are
#     missing and this is not Debian or not root, the missing ones are listed with the command
#     that would install them, and the script exits 1.
#  2. A Python venv in .lab/venv (git-ignored) with tox, virtme-ng and this project (editable,
#     with its cli, test and dev extras). Skipped when pyproject.toml and this script did not change
#     since the last successful install.
#
# Environment: PYTHON (interpreter for the venv, default python3), LAB_VENV (default .lab/venv).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LAB_VENV=${LAB_VENV:-.lab/venv}
export DEBIAN_FRONTEND=noninteractive
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

say() { printf 'setup: %s\n' "$*" >&2; }

# package:probe pairs; a probe is a command name, or "py:" + Python statement.
REQUIREMENTS=(
  "qemu-system-x86:qemu-system-x86_64"
  "busybox-static:busybox"
  "kmod:depmod"
  "cpio:cpio"
  "udev:udevadm"
  "openssl:openssl"
  "gnutls-bin:gnutls-cli"
  "curl:curl"
  "iproute2:ss"
  "stunnel4:stunnel4"
  "python3:$PYTHON"
  "python3-venv:py:import ensurepip, venv"
)

is_debian() {
  [ -r /etc/os-release ] && (. /etc/os-release && [ "${ID:-}" = debian ])
}

have_pkg() { # installed according to dpkg (Debian) - busybox must be the static build
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

have_probe() {
  case "$1" in
    py:*) command -v "$PYTHON" >/dev/null 2>&1 && "$PYTHON" -c "${1#py:}" >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing=()
for req in "${REQUIREMENTS[@]}"; do
  pkg=${req%%:*}
  probe=${req#*:}
  if ! have_probe "$probe"; then
    missing+=("$pkg")
  elif [ "$pkg" = busybox-static ] && is_debian && ! have_pkg busybox-static; then
    missing+=("$pkg") # a dynamic busybox cannot go into virtme-ng's initramfs
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  say "missing: ${missing[*]}"
  if ! is_debian || [ "$(id -u)" != 0 ]; then
    why="this is not Debian"
    is_debian && why="not running as root"
    say "cannot install them here ($why). Needed:"
    for req in "${REQUIREMENTS[@]}"; do
      pkg=${req%%:*}
      for m in "${missing[@]}"; do
        probe=${req#*:}
        [ "${probe#py:}" != "$probe" ] && probe="$PYTHON -c '${probe#py:}'"
        [ "$m" = "$pkg" ] && say "  - $pkg (for: $probe)"
      done
    done
    say "on Debian 12, as root: apt-get install -y --no-install-recommends ${missing[*]}"
    exit 1
  fi
  say "apt-get install ${missing[*]}"
  apt-get update -q
  # debian-archive-keyring: keep the keys current, the kernel fetcher reads trixie and sid.
  apt-get install -y -q --no-install-recommends "${missing[@]}" debian-archive-keyring
else
  say "Debian packages: all present"
fi

# The Python side: one venv for the lab's own tools (tox builds the test envs itself).
stamp=$LAB_VENV/.ossl-ktls-setup
want=$(cat pyproject.toml lab/setup.sh | sha256sum | cut -d' ' -f1)
if [ -x "$LAB_VENV/bin/tox" ] && [ -x "$LAB_VENV/bin/vng" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  say "python tools: up to date in $LAB_VENV"
  exit 0
fi
if [ ! -x "$LAB_VENV/bin/python" ]; then
  say "creating $LAB_VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$LAB_VENV"
fi
say "pip install tox virtme-ng and this project into $LAB_VENV"
"$LAB_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$LAB_VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "tox>=4.11" "virtme-ng>=1.30" -e ".[cli,test,dev]"
echo "$want" >"$stamp"
say "done: $("$LAB_VENV/bin/tox" --version | head -1); virtme-ng $("$LAB_VENV/bin/vng" --version 2>&1 | awk '{print $NF}')"

#!/bin/sh
# netfs developer entry point. Works on a fresh Debian 12 root with nothing
# but sh and apt-get: it installs the system packages, a venv and the project.
#
#   sh dev.sh run     mount netfs with the example network, in a private netns
#   sh dev.sh test    ruff, mypy and the whole test suite
#   sh dev.sh bench   the benchmarks under bench/
#   sh dev.sh setup   only install (system packages, .venv, the project)
set -eu

cd "$(dirname "$0")"
TOP=$(pwd)
VENV="$TOP/.venv"
PY="$VENV/bin/python"

# Debian packages: build and run (python3, libfuse3, iproute2), and what the
# tests and benchmarks call (inotifywait, groff for the man page check, ps, ed),
# and the traffic of virtual networks: dnsmasq, nft; udhcpc (busybox) and dig as guests.
DEB_PKGS="python3 python3-venv python3-dev gcc libc6-dev pkg-config libfuse3-dev fuse3 \
iproute2 inotify-tools groff-base procps kmod util-linux ca-certificates ed \
dnsmasq-base nftables busybox bind9-dnsutils"

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "dev.sh: run this as root (it installs packages, mounts FUSE and makes network namespaces)" >&2
        exit 1
    fi
}

setup_system() {
    missing=""
    for p in $DEB_PKGS; do
        if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed'; then
            missing="$missing $p"
        fi
    done
    if [ -n "$missing" ]; then
        echo "dev.sh: installing Debian packages:$missing" >&2
        export DEBIAN_FRONTEND=noninteractive
        # Wait for another apt (a fresh machine's unattended upgrades, say)
        # instead of failing at once on its lock.
        lock="-o DPkg::Lock::Timeout=600"
        # shellcheck disable=SC2086
        apt-get $lock update -qq
        # shellcheck disable=SC2086
        apt-get $lock install -y -qq --no-install-recommends $missing >/dev/null
    fi
    [ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
}

setup_venv() {
    # Debian's own python3 (not whatever else is first on PATH).
    if [ ! -x "$PY" ]; then
        /usr/bin/python3 -m venv "$VENV"
    fi
    # A PIP_CERT naming a file that is not there (a copied environment) would
    # make every download fail: fall back to the system's CA bundle.
    if [ -n "${PIP_CERT:-}" ] && [ ! -f "$PIP_CERT" ]; then unset PIP_CERT; fi
    stamp="$VENV/.netfs-installed"
    want=$(cat pyproject.toml | cksum)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "dev.sh: installing netfs and its test tools into .venv" >&2
        "$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
        echo "$want" > "$stamp"
    fi
}

setup() {
    need_root
    setup_system
    setup_venv
}

cmd_test() {
    setup
    status=0
    echo "== ruff check"; "$VENV/bin/ruff" check netfs tests bench || status=1
    echo "== ruff format --check"; "$VENV/bin/ruff" format --check netfs tests bench || status=1
    echo "== mypy"; "$VENV/bin/mypy" || status=1
    echo "== pytest"
    "$PY" -m pytest "$@" || status=1
    exit $status
}

cmd_run() {
    setup
    exec "$PY" -m netfs.demo "$@"
}

cmd_bench() {
    setup
    exec "$PY" -m bench "$@"
}

case "${1:-}" in
    run) shift; cmd_run "$@" ;;
    test) shift; cmd_test "$@" ;;
    bench) shift; cmd_bench "$@" ;;
    setup) setup ;;
    *) echo "usage: sh dev.sh run|test|bench|setup" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Runs fleetkey's whole test suite on a fresh Debian machine: installs the
# system packages the tests use when they are missing (as root), checks
# formatting and lints, builds every binary and runs every test, the
# end-to-end ones included (they start their own portal and daemons on
# loopback and temporary Unix sockets, and stop them).
#
#   ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build and tests need: openssl verifies signatures,
# setpriv switches users; libtss2-dev builds the tpm backend, swtpm,
# swtpm-tools and tpm2-tools run the TPM tests (libcurl4-openssl-dev is
# named because apt's resolver may otherwise fail on libtss2-dev's
# "libcurl4-openssl-dev | libcurl-ssl-dev" dependency); libpcsclite-dev
# builds the pcsc backend, pcscd with the vsmartcard-vpcd driver hosts the
# simulated PIV cards, opensc checks them; libclang-dev is for the v4l
# crate's bindgen (the daemon's v4l feature); zbar-tools is the QR bench's
# reference decoder; systemd provides systemd-socket-activate, which stands in
# for the socket unit in the service tests, and busctl (doctor's D-Bus
# check); dbus and dbus-daemon host the private buses of the doctor and
# D-Bus tests, libglib2.0-bin provides gdbus, polkitd answers their
# authorization checks; python3-venv holds the PyPI grpcio client of the
# interop test; lintian, binutils (strip), dpkg-dev and man-db are for the
# Debian package test; faketime runs a portal with a skewed clock for
# doctor's clock-skew check.
packages=(openssl util-linux ca-certificates pkg-config
    libcurl4-openssl-dev libtss2-dev swtpm swtpm-tools tpm2-tools
    libpcsclite-dev pcscd vsmartcard-vpcd opensc
    libclang-dev zbar-tools systemd dbus dbus-daemon libglib2.0-bin polkitd
    python3-venv lintian binutils dpkg-dev man-db faketime)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "== installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
fi

if [ "$(id -u)" = 0 ]; then
    # As root the suite must also run the tests that switch users.
    export FLEETKEY_REQUIRE_ROOT_TESTS=1
fi

# The interop test's client is the grpcio users get: from PyPI, in a venv
# under target/ (made once; pip is a no-op when it is there already).
venv=target/grpc-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
    echo "== installing grpcio and grpcio-tools from PyPI into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcio>=1.85' grpcio-tools
fi
export FLEETKEY_PYTHON="$PWD/$venv/bin/python" FLEETKEY_REQUIRE_PYTHON=1

# The package test builds the .deb with cargo-deb.
if [ "$(id -u)" = 0 ] && ! command -v cargo-deb >/dev/null; then
    echo "== installing cargo-deb"
    cargo install --locked cargo-deb
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== build binaries"
cargo build --workspace --all-features --bins
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-features --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The Debian package, built from the debug binaries the tests just used
# (FLEETKEY_DEB_PROFILE=dev: no second build; real packages use the
# release profile), installed and run (tests/packaging/deb-test.sh). It
# needs root (dpkg -i); its result counts in the totals below.
if [ "$(id -u)" = 0 ]; then
    echo "== Debian package test"
    set +e
    start=$(date +%s)
    FLEETKEY_DEB_PROFILE=dev tests/packaging/deb-test.sh 2>&1 | tee -a "$log"
    deb_status=${PIPESTATUS[0]}
    set -e
    echo "deb-test took $(($(date +%s) - start)) s"
    if [ "$deb_status" != 0 ]; then
        echo "test result: FAILED. 0 passed; 1 failed (tests/packaging/deb-test.sh)" >>"$log"
        status=1
    fi
else
    echo "== Debian package test skipped: it needs root (dpkg -i)"
fi
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } /^deb-test: [0-9]+ passed/ { passed += $2 } END { printf "\ntests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"

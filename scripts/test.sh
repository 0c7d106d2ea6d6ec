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
# for the socket unit in the service tests (and busctl); dbus-daemon hosts
# the private bus of the D-Bus tests, libglib2.0-bin provides gdbus, polkitd
# answers their authorization checks.
packages=(openssl util-linux ca-certificates pkg-config
    libcurl4-openssl-dev libtss2-dev swtpm swtpm-tools tpm2-tools
    libpcsclite-dev pcscd vsmartcard-vpcd opensc
    libclang-dev zbar-tools systemd dbus-daemon libglib2.0-bin polkitd)
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
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "\ntests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"

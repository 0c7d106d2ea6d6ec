#!/usr/bin/env bash
# Builds the Debian package: release binaries with every key store
# (tpm, pcsc, v4l), the man pages and completions (fleetkey-gen), then
# cargo-deb, which strips the binaries. Prints the path of the .deb.
#
#   packaging/deb.sh            # needs cargo-deb (cargo install cargo-deb)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || {
    echo "cargo-deb is missing: cargo install --locked cargo-deb" >&2
    exit 1
}

out=packaging/build
rm -rf "$out"
cargo run --quiet -p fleetkey-gen -- "$out" >&2
gzip -9n "$out"/man/*.[18]

cargo build --release -p fleetkeyd -p fleetkeyctl --features fleetkeyd/tpm,fleetkeyd/pcsc,fleetkeyd/v4l >&2
cargo deb -p fleetkeyd --no-build --strip --output target/debian/ 2>&1 | tail -n 1

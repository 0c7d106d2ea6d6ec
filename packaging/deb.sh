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

# FLEETKEY_DEB_PROFILE=dev packages the debug binaries of
# `cargo build --workspace --all-features --bins` (the test suite's own
# build, so nothing is built again): for the package test only. Real
# packages use the release profile (the default).
profile=${FLEETKEY_DEB_PROFILE:-release}
case "$profile" in
release)
    cargo build --release -p fleetkeyd -p fleetkeyctl --features fleetkeyd/tpm,fleetkeyd/pcsc,fleetkeyd/v4l >&2
    ;;
dev)
    cargo build --workspace --all-features --bins >&2
    ;;
*)
    echo "FLEETKEY_DEB_PROFILE must be release or dev, not $profile" >&2
    exit 2
    ;;
esac
# The man pages and completions. With the dev profile, the generator the
# workspace build above already made (`cargo run -p` would rebuild the
# dependencies under that one package's feature set: minutes in CI).
out=packaging/build
rm -rf "$out"
if [ "$profile" = dev ]; then
    target/debug/fleetkey-gen "$out" >&2
else
    cargo run --quiet -p fleetkey-gen -- "$out" >&2
fi
gzip -9n "$out"/man/*.[18]

cargo deb -p fleetkeyd --no-build --profile "$profile" --strip --output target/debian/ 2>&1 | tail -n 1

#!/usr/bin/env bash
# The Debian package, tested as an admin would use it (as root, on a
# Debian machine where systemd need not be PID 1):
#   1. build it (packaging/deb.sh) and check it with lintian;
#   2. install it with dpkg -i: the _fleetkey user, the fleetkey-admin
#      group and the directories are made, the units enabled;
#   3. systemd-analyze verify the installed units, and check their
#      hardening score;
#   4. start the installed daemon the way the unit's ExecStart does, as the
#      unit's user, with the socket the socket unit would hand it;
#   5. activate, enroll and sign with the installed fleetkeyctl against a
#      real portal, and verify the signature with openssl;
#   6. purge the package: its files and state are gone.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ "$(id -u)" = 0 ] || { echo "deb-test: needs root (dpkg -i)" >&2; exit 1; }

work=$(mktemp -d)
daemon_pid=""
portal_pid=""
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
    [ -n "$portal_pid" ] && kill "$portal_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    dpkg --purge fleetkey >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "deb-test: FAILED: $*" >&2; exit 1; }
step() { echo "== deb-test: $*"; }

step "build"
deb=$(packaging/deb.sh)
[ -f "$deb" ] || fail "packaging/deb.sh printed no package ($deb)"
size=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/sbin/fleetkeyd | wc -c)
echo "fleetkeyd in the package: $((size / 1024 / 1024)) MiB (stripped)"
[ "$size" -lt $((40 * 1024 * 1024)) ] || fail "fleetkeyd is $size bytes: not stripped?"

step "lintian"
lintian --fail-on error,warning "$deb" || fail "lintian"

step "install"
dpkg -i "$deb" >/dev/null
for f in /usr/sbin/fleetkeyd /usr/bin/fleetkeyctl /etc/fleetkey/fleetkeyd.toml \
    /usr/share/man/man1/fleetkeyctl.1.gz /usr/share/man/man1/fleetkeyctl-user-add.1.gz \
    /usr/share/man/man8/fleetkeyd.8.gz /usr/share/bash-completion/completions/fleetkeyctl \
    /usr/share/zsh/vendor-completions/_fleetkeyctl /usr/share/fish/vendor_completions.d/fleetkeyctl.fish \
    /usr/share/dbus-1/system.d/org.fleetkey.Daemon1.conf /usr/share/polkit-1/actions/org.fleetkey.policy \
    /usr/lib/sysusers.d/fleetkey.conf /usr/lib/tmpfiles.d/fleetkey.conf; do
    [ -e "$f" ] || fail "$f is not installed"
done
getent passwd _fleetkey >/dev/null || fail "no _fleetkey user"
getent group fleetkey-admin >/dev/null || fail "no fleetkey-admin group"
id -nG _fleetkey | grep -qw tss || fail "_fleetkey is not in group tss"
[ "$(stat -c '%U %a' /var/lib/fleetkey)" = "_fleetkey 700" ] || fail "/var/lib/fleetkey: $(stat -c '%U %a' /var/lib/fleetkey)"
[ "$(stat -c '%U %a' /run/fleetkey)" = "_fleetkey 755" ] || fail "/run/fleetkey: $(stat -c '%U %a' /run/fleetkey)"
unitdir=$(dirname "$(dpkg -L fleetkey | grep '/fleetkeyd.service$')")
[ -L /etc/systemd/system/multi-user.target.wants/fleetkeyd.service ] || fail "fleetkeyd.service is not enabled"
man -l /usr/share/man/man1/fleetkeyctl-user-add.1.gz 2>/dev/null | grep -q -- "--pin-stdin" || fail "man page of user add lacks --pin-stdin"

step "systemd-analyze"
systemd-analyze verify "$unitdir/fleetkeyd.socket" "$unitdir/fleetkeyd.service" || fail "systemd-analyze verify"
score=$(systemd-analyze security --offline=true "$unitdir/fleetkeyd.service" 2>&1 | sed -n 's/.*Overall exposure level for fleetkeyd.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: $score"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || fail "exposure $score > 2.0"

step "run the installed daemon as _fleetkey"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/fleetkey-portal serve --listen "127.0.0.1:$port" --db "$work/portal.db" >"$work/portal.log" 2>&1 &
portal_pid=$!
exec_start=$(sed -n 's/^ExecStart=//p' "$unitdir/fleetkeyd.service")
# shellcheck disable=SC2086 # the unit's command line, split as systemd does
setpriv --reuid _fleetkey --regid _fleetkey --init-groups -- $exec_start >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [ -S /run/fleetkey/fleetkeyd.sock ] && break; sleep 0.1; done
[ -S /run/fleetkey/fleetkeyd.sock ] || { cat "$work/daemon.log"; fail "the daemon did not create its socket"; }
[ "$(stat -c %U /var/lib/fleetkey/state.db)" = _fleetkey ] || fail "state.db is not the daemon user's"

ctl=/usr/bin/fleetkeyctl
issue() { target/debug/fleetkey-portal code issue --db "$work/portal.db" --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["uri"])'; }
"$ctl" activate "$(issue --kind device)" >/dev/null || { cat "$work/daemon.log"; fail "activate"; }
printf '4321\n4321\n' | "$ctl" user add "$(issue --kind user --user alice)" --pin-stdin >/dev/null || fail "user add"
echo "approve login 42" >"$work/challenge.txt"
printf '4321\n' | "$ctl" sign --user alice --in "$work/challenge.txt" --out "$work/sig.der" --pin-stdin >/dev/null || fail "sign"
"$ctl" --json user show alice | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key_pem"], end="")' >"$work/alice.pem"
openssl dgst -sha256 -verify "$work/alice.pem" -signature "$work/sig.der" "$work/challenge.txt" | grep -q "Verified OK" || fail "openssl does not verify the signature"
echo "enrolled alice and verified her signature through the installed binaries"

step "purge"
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
dpkg --purge fleetkey >/dev/null
[ ! -e /usr/sbin/fleetkeyd ] || fail "purge left /usr/sbin/fleetkeyd"
[ ! -e /var/lib/fleetkey ] || fail "purge left /var/lib/fleetkey"
echo "deb-test: 1 passed, 0 failed"

#!/usr/bin/env bash
# Starts a software TPM (swtpm) for fleetkey's tests, the way a real device
# comes: manufactured with an endorsement key and an EK certificate signed
# by a local test CA.
#
#   tests/swtpm/start.sh STATE_DIR PORT [CA_DIR]
#
# - STATE_DIR: the TPM's persistent state (kept across restarts: run the
#   script again on the same directory to "reboot" the TPM). Made and
#   manufactured (swtpm_setup --create-ek-cert) on first use.
# - PORT: the TPM command port on 127.0.0.1; PORT+1 is the control port.
# - CA_DIR: the local test CA (default STATE_DIR/ca); give several TPMs
#   the same CA_DIR so their EK certificates share one root
#   (CA_DIR/swtpm-localca-rootca-cert.pem).
#
# swtpm runs in the background (pid in STATE_DIR/swtpm.pid, log in
# STATE_DIR/swtpm.log), powered on and started (TPM2_Startup done), and
# serves one client at a time. On success the script prints the TCTI to
# use, e.g. `swtpm:host=127.0.0.1,port=2321`. Stop it with
# `kill $(cat STATE_DIR/swtpm.pid)`.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 STATE_DIR PORT [CA_DIR]" >&2
    exit 2
fi
state=$1
port=$2
ca=${3:-$state/ca}
ctrl=$((port + 1))

for tool in swtpm swtpm_setup swtpm_localca; do
    command -v "$tool" >/dev/null || {
        echo "$tool is missing: apt-get install swtpm swtpm-tools" >&2
        exit 1
    }
done

mkdir -p "$state" "$ca"
if [ ! -e "$state/tpm2-00.permall" ]; then
    # A local CA just for these tests (swtpm_localca makes its keys on
    # first use), instead of the system one in /var/lib/swtpm-localca.
    cat > "$ca/swtpm-localca.conf" <<EOF
statedir = $ca
signingkey = $ca/signkey.pem
issuercert = $ca/issuercert.pem
certserial = $ca/certserial
EOF
    cat > "$ca/swtpm-localca.options" <<EOF
--platform-manufacturer fleetkey-tests
--platform-version 2.1
--platform-model swtpm
EOF
    cat > "$state/swtpm_setup.conf" <<EOF
create_certs_tool = $(command -v swtpm_localca)
create_certs_tool_config = $ca/swtpm-localca.conf
create_certs_tool_options = $ca/swtpm-localca.options
active_pcr_banks = sha256
EOF
    # Serialize setups sharing a CA: swtpm_localca is not safe to run twice
    # at once on one CA directory.
    (
        flock 9
        swtpm_setup --tpm2 --tpmstate "$state" --config "$state/swtpm_setup.conf" \
            --createek --ecc --create-ek-cert --create-platform-cert --lock-nvram \
            --overwrite --display >"$state/setup.log" 2>&1
    ) 9>"$ca/.lock" || {
        echo "swtpm_setup failed; see $state/setup.log:" >&2
        tail -20 "$state/setup.log" >&2
        exit 1
    }
fi

rm -f "$state/swtpm.pid"
swtpm socket --tpm2 \
    --tpmstate "dir=$state" \
    --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$ctrl,bindaddr=127.0.0.1" \
    --flags not-need-init,startup-clear \
    --pid "file=$state/swtpm.pid" \
    --log "file=$state/swtpm.log,level=1" \
    --daemon

# --daemon returns once the sockets listen; wait for the pid file too.
for _ in $(seq 100); do
    [ -s "$state/swtpm.pid" ] && break
    sleep 0.05
done
[ -s "$state/swtpm.pid" ] || {
    echo "swtpm did not start; see $state/swtpm.log" >&2
    exit 1
}
echo "swtpm:host=127.0.0.1,port=$port"

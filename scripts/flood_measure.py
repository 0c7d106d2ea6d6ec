#!/usr/bin/env python3
"""Measures fleetkeyd's RSS and threads during and after a flood of 400
abandoned Sign requests from an unprivileged uid (issue 9, item 4).
usage: flood_measure.py FLEETKEYD_BINARY BIN_DIR"""
import json, os, subprocess, sys, tempfile, time, random
daemon_bin, bindir = sys.argv[1], sys.argv[2]
ctl = os.path.join(bindir, "fleetkeyctl"); portal_bin = os.path.join(bindir, "fleetkey-portal")
d = tempfile.mkdtemp(prefix="flood-"); os.chmod(d, 0o755)
db = os.path.join(d, "portal.db")
portal = subprocess.Popen([portal_bin, "serve", "--listen", "127.0.0.1:0", "--db", db], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
url = portal.stdout.readline().strip()
sock = os.path.join(d, "fleetkeyd.sock"); cfg = os.path.join(d, "fleetkeyd.toml"); open(cfg, "w").write("")
log = open(os.path.join(d, "fleetkeyd.log"), "w")
daemon = subprocess.Popen([daemon_bin, "--config", cfg, "--socket", sock, "--state-dir", os.path.join(d, "state")], stdout=subprocess.DEVNULL, stderr=log)
while not os.path.exists(sock): time.sleep(0.05)
time.sleep(0.3)
def issue(kind, user=None):
    args = [portal_bin, "code", "issue", "--json", "--ttl", "600", "--kind", kind] + (["--user", user] if user else []) + ["--db", db]
    return json.loads(subprocess.check_output(args))["uri"]
def run(args, stdin=None, pre=()):
    return subprocess.run(list(pre) + [ctl, "--socket", sock] + args, input=stdin, capture_output=True, text=True)
assert run(["--json", "activate", issue("device")]).returncode == 0
for u, p in [("alice", "1234"), ("carol", "2468")]:
    r = run(["--json", "user", "add", issue("user", u), "--pin-stdin"], p + "\n"); assert r.returncode == 0, r
data = os.path.join(d, "data.txt"); open(data, "w").write("x")
assert run(["sign", "--user", "alice", "--in", data, "--out", data + ".sig", "--pin-stdin"], "1234\n").returncode == 0
time.sleep(1)
def status():
    s = open(f"/proc/{daemon.pid}/status").read().split("\n")
    f = {l.split(":")[0]: l.split(":")[1].split()[0] for l in s if ":" in l and l.split(":")[1].split()}
    return int(f["VmRSS"]), int(f["Threads"])
base = status(); peak = list(base)
flooder = ["setpriv", "--reuid=64101", "--regid=64101", "--clear-groups"]
procs = []; start = time.time(); rnd = random.Random(1)
for i in range(400):
    p = subprocess.Popen(flooder + [ctl, "--socket", sock, "sign", "--user", "carol", "--in", data, "--out", "/dev/null", "--pin-stdin"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.stdin.write(b"2468\n"); p.stdin.close()
    procs.append((p, time.time() + 0.02 + rnd.random() * 0.1))
    now = time.time()
    for q, t in procs:
        if t <= now and q.poll() is None: q.kill()
    r, th = status(); peak[0] = max(peak[0], r); peak[1] = max(peak[1], th)
    time.sleep(0.005)
while any(q.poll() is None for q, _ in procs):
    for q, t in procs:
        if t <= time.time() and q.poll() is None: q.kill()
    time.sleep(0.01)
t0 = time.time(); admin = run(["sign", "--user", "alice", "--in", data, "--out", data + ".sig", "--pin-stdin"], "1234\n"); admin_t = time.time() - t0
samples = []
for k in range(30):
    r, th = status(); peak[0] = max(peak[0], r); peak[1] = max(peak[1], th); samples.append((round(time.time() - start, 1), r, th)); time.sleep(1)
print(f"baseline RSS {base[0]} KiB threads {base[1]}; peak RSS {peak[0]} KiB threads {peak[1]}; admin sign after flood rc={admin.returncode} {admin_t:.2f}s")
print("after (t s, RSS KiB, threads):", samples[0], samples[5], samples[15], samples[-1])
daemon.kill(); portal.kill()

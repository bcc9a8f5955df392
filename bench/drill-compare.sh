#!/usr/bin/env bash
# Seed config against tuned config, in ONE run on one lab: the same drills once with the
# runbook's own load balancer settings (TCP check every 10 s, VRRPv2 with 1 s adverts, and its
# keepalived track script: `kill -0` every 2 s, weight 2, fall 3) and once
# with hakube's defaults, then both side by side, and whether hakube's goals were met. It only
# prints what it measured.
#
# Needs root. Usage: bash bench/drill-compare.sh
# Environment: HAKUBE (binary; default target/release/hakube, else target/debug/hakube),
#   DURATION (fault hold, default 30s: long enough for the runbook's 2 x 10 s checks to notice),
#   SCENARIOS (default all), LAB (default dcompare), SUBNET (default 10.94.0.0/24),
#   OUT (default drill-reports/compare-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/drill-compare.sh: needs root" >&2; exit 1; }
HAKUBE=${HAKUBE:-}
if [ -z "$HAKUBE" ]; then
  if [ -x target/release/hakube ]; then HAKUBE=target/release/hakube; else HAKUBE=target/debug/hakube; fi
fi
[ -x "$HAKUBE" ] || { echo "bench/drill-compare.sh: build first (cargo build --release)" >&2; exit 1; }
HAKUBE=$(realpath "$HAKUBE")
LAB=${LAB:-dcompare}
SUBNET=${SUBNET:-10.94.0.0/24}
DURATION=${DURATION:-30s}
SCENARIOS=${SCENARIOS:-all}
OUT=$(realpath -m "${OUT:-drill-reports/compare-$(date -u +%Y%m%dT%H%M%SZ)}")
DIR=/var/lib/hakube-lab/$LAB
mkdir -p "$OUT"

cleanup() { "$HAKUBE" lab down --name "$LAB" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

healthy() { # wait until `status` says healthy (exit 0)
  local spec=$1 i
  for i in $(seq 1 120); do
    "$HAKUBE" status -f "$spec" >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "bench/drill-compare.sh: $spec did not become healthy" >&2
  "$HAKUBE" status -f "$spec" >&2 || true
  return 1
}

runbook_keepalived() { # the runbook's own track script on every LB, instead of hakube's two
  local lb
  for lb in $(python3 -c 'import json,sys; print(" ".join(h["name"] for h in json.load(open(sys.argv[1]))["hosts"] if "loadbalancer" in h.get("roles", [])))' "$DIR/state.json"); do
    python3 bench/runbook-keepalived.py "$DIR/hosts/$lb/fs/etc/keepalived/keepalived.conf"
    ssh -F "$DIR/ssh_config" "$lb" systemctl restart keepalived
  done
}

run() { # label spec [hook]: apply the spec, run the hook, then the drills
  local label=$1 spec=$2 hook=${3:-}
  echo "== $label: apply $spec" >&2
  "$HAKUBE" apply -f "$spec" >"$OUT/$label.apply.log" 2>&1 || { tail -20 "$OUT/$label.apply.log" >&2; exit 1; }
  if [ -n "$hook" ]; then echo "== $label: $hook" >&2; "$hook"; fi
  healthy "$spec"
  echo "== $label: hakube drill $SCENARIOS --duration $DURATION" >&2
  "$HAKUBE" drill "$SCENARIOS" -f "$spec" --duration "$DURATION" --recovery-timeout 120s \
    -o json --report-dir "$OUT/$label" >"$OUT/$label.json" 2>"$OUT/$label.log" || true
  grep -E '\] (injecting|recovered|not recovered)|refus' "$OUT/$label.log" >&2 || true
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
"$HAKUBE" lab up --name "$LAB" --subnet "$SUBNET" >/dev/null
# The runbook's settings, on the same hosts (same folder, so the same PKI and secrets).
python3 - "$DIR/cluster.yaml" "$DIR/cluster-seed.yaml" <<'EOF'
import sys
src, dst = sys.argv[1], sys.argv[2]
text = open(src).read()
old = "    healthCheck:\n      type: https\n"
assert old in text, "unexpected lab cluster.yaml"
new = ("    healthCheck: {type: tcp, interval: 10s, fall: 2, rise: 2, timeout: 10s, connectTimeout: 10s}\n"
       "    vrrp: {version: 2, advertInterval: 1s}\n")
open(dst, "w").write(text.replace(old, new))
EOF

run tuned "$DIR/cluster.yaml"
run seed "$DIR/cluster-seed.yaml" runbook_keepalived

LOAD="load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
python3 - "$OUT/seed.json" "$OUT/tuned.json" "$DURATION" "$(nproc)" "$LOAD" "$(basename "$(dirname "$HAKUBE")")/hakube" <<'EOF' | tee "$OUT/compare.md"
import json, sys
seed_f, tuned_f, duration, cores, loadavg, binary = sys.argv[1:7]
def load(f):
    try:
        return {s["scenario"]: s for s in json.load(open(f))["scenarios"]}
    except Exception as e:
        print(f"cannot read {f}: {e}")
        return {}
seed, tuned = load(seed_f), load(tuned_f)
def num(s, *path):
    v = s
    for p in path:
        v = (v or {}).get(p) if isinstance(v, dict) else None
    return v
def secs(v):
    return "—" if v is None else f"{v / 1000:.2f} s"
def failed(s):
    m = s.get("metrics")
    return "—" if not m else f"{m['failed']}/{m['requests']}"
def lost(s):
    w = s.get("writes") or {}
    return "—" if not w or w.get("method", "").startswith("none") else str(len(w.get("lost", [])))
def hit(s):
    # Whether the fault hit the API server that served the kept-alive connection.
    on, faults = s.get("kept_alive_on"), s.get("faults") or []
    if not on:
        return "—"
    return "yes" if any(f.get("host") == on for f in faults) else "no"
def res(s):
    return s.get("outcome", "—")
names = list(dict.fromkeys(list(tuned) + list(seed)))
print(f"\nhakube drill, seed (runbook) vs tuned (hakube defaults); fault held {duration}; {cores} cores, {binary} ({loadavg})\n")
print("| scenario | downtime seed | downtime tuned | failed requests seed | failed requests tuned | VIP moved seed | VIP moved tuned | detected seed | detected tuned | recovered seed | recovered tuned | lost writes seed | lost writes tuned | kept-alive hit seed / tuned | result seed / tuned |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    s, t = seed.get(n, {}), tuned.get(n, {})
    print(f"| {n} | {secs(num(s, 'metrics', 'downtime_ms'))} | {secs(num(t, 'metrics', 'downtime_ms'))} "
          f"| {failed(s)} | {failed(t)} | {secs(s.get('vip_moved_after_ms'))} | {secs(t.get('vip_moved_after_ms'))} "
          f"| {secs(s.get('detected_after_ms'))} | {secs(t.get('detected_after_ms'))} "
          f"| {secs(s.get('recovered_after_ms'))} | {secs(t.get('recovered_after_ms'))} "
          f"| {lost(s)} | {lost(t)} | {hit(s)} / {hit(t)} | {res(s)} / {res(t)} |")
print("\n(downtime: longest time without a successful request on the worse of the two probe streams;"
      " detected/recovered: after the injection; recovered = status healthy and clients answered again)\n")
def goal(text, ok, measured):
    state = "—  not measured" if ok is None else ("met" if ok else "NOT met")
    print(f"- {text}: {state} ({measured})")
print("Goals for hakube's defaults (tuned):")
a = num(tuned.get("apiserver-down", {}), "metrics", "failed")
goal("0 failed requests when an API server process is stopped", None if a is None else a == 0, f"{a} failed")
c = num(tuned.get("control-plane-partition", {}), "metrics", "downtime_ms")
goal("<= 1.5 s client-visible downtime when a control plane is partitioned", None if c is None else c <= 1500, secs(c))
for n, what in [("lb-failover", "HAProxy stopped on the holder"), ("lb-host-loss", "holder partitioned")]:
    v = tuned.get(n, {}).get("vip_moved_after_ms")
    goal(f"VIP failover under 1.5 s ({what})", None if v is None else v < 1500, secs(v))
lw = {n: lost(s) for n, s in tuned.items()}
known = [v for v in lw.values() if v != "—"]
goal("0 lost writes in every scenario", None if not known else all(v == "0" for v in known),
     ", ".join(f"{n} {v}" for n, v in lw.items()))
EOF
echo "reports: $OUT (seed/ and tuned/: timeline, SVG chart, every request per scenario)"

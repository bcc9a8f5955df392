#!/usr/bin/env bash
# The demo behind `make demo`: plan and render the runbook's cluster with real-tool checks, then
# a live lab: apply, status, a failure (haproxy stopped on the VIP holder), doctor, recovery,
# and a measured drill.
set -euo pipefail
cd "$(dirname "$0")/.."
H=target/debug/hakube
LAB=${LAB:-demo}
SPEC=/var/lib/hakube-lab/$LAB/cluster.yaml

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "hakube plan -f examples/seed.yaml"
$H plan -f examples/seed.yaml || [ $? -eq 1 ]

step "hakube render -f examples/seed.yaml --out out/seed --check"
$H render -f examples/seed.yaml --out out/seed --check

if [ "$(id -u)" -ne 0 ]; then
  echo "(the live lab needs root; skipping it)"
  exit 0
fi

trap '$H lab down --name "$LAB" >/dev/null 2>&1 || true' EXIT
step "hakube lab up --name $LAB"
$H lab up --name "$LAB"

step "hakube apply -f $SPEC"
$H apply -f "$SPEC"

step "hakube apply again: nothing to change"
$H apply -f "$SPEC" | tail -1

step "hakube status"
$H status -f "$SPEC"

# status exits 1 or 2 when the cluster is degraded or down; its JSON is still the answer.
holders() { { $H status -f "$SPEC" -o json || true; } | python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["vip_holders"]))'; }
holder=$(holders)
step "failure: stop haproxy on the VIP holder ($holder)"
$H lab fault stop --name "$LAB" "$holder" haproxy
for _ in $(seq 1 20); do
  now=$(holders)
  [ "$now" != "$holder" ] && [ -n "$now" ] && break
  sleep 0.5
done
$H status -f "$SPEC" || true

step "hakube doctor"
$H doctor -f "$SPEC" || true

step "recovery: start haproxy again"
$H lab fault start --name "$LAB" "$holder" haproxy
# Healthy, and the VIP preempted back to its first holder, so that the drill below starts on a
# settled cluster instead of measuring the tail of this failure.
for _ in $(seq 1 60); do
  $H status -f "$SPEC" >/dev/null 2>&1 && [ "$(holders)" = "$holder" ] && break
  sleep 0.5
done
$H status -f "$SPEC" | head -3

step "hakube drill apiserver-down --duration 3s: what clients saw, and no lost writes"
$H drill apiserver-down --duration 3s -f "$SPEC" --report-dir out/drill || true

step "hakube lab down --name $LAB"
$H lab down --name "$LAB"
trap - EXIT

#!/usr/bin/env bash
# Benchmark of `hakube apply` on the lab (root): a cold apply of the 7-host lab, a no-op
# re-apply, and a no-op re-apply of a 30-host lab. Prints a table of what it measured.
# Usage: bash bench/apply.sh   (builds in release mode first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
H=target/release/hakube
B7=bench7; B30=bench30
cleanup() { $H lab down --name $B7 >/dev/null 2>&1 || true; $H lab down --name $B30 >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

secs() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; exit 1; }; e=$(date +%s%N); awk -v n=$((e-s)) 'BEGIN{printf "%.2f", n/1e9}'; }

$H lab up --name $B7 --subnet 10.95.0.0/24 >/dev/null
cold7=$(secs $H apply -f /var/lib/hakube-lab/$B7/cluster.yaml)
noop7=$(secs $H apply -f /var/lib/hakube-lab/$B7/cluster.yaml)
noop7b=$(secs $H apply -f /var/lib/hakube-lab/$B7/cluster.yaml)
$H lab down --name $B7 >/dev/null

$H lab up --name $B30 --subnet 10.96.0.0/23 --workers 25 >/dev/null
cold30=$(secs $H apply -f /var/lib/hakube-lab/$B30/cluster.yaml)
noop30=$(secs $H apply -f /var/lib/hakube-lab/$B30/cluster.yaml)

printf '\n%-34s %10s %10s\n' "hakube apply (release build)" "seconds" "target"
printf '%-34s %10s %10s\n' "cold, 7 hosts" "$cold7" "< 60"
printf '%-34s %10s %10s\n' "no-op re-apply, 7 hosts" "$noop7" "< 3"
printf '%-34s %10s %10s\n' "no-op re-apply, 7 hosts (again)" "$noop7b" "< 3"
printf '%-34s %10s %10s\n' "cold, 30 hosts" "$cold30" "-"
printf '%-34s %10s %10s\n' "no-op re-apply, 30 hosts" "$noop30" "-"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F)"

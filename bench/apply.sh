#!/usr/bin/env bash
# Benchmark of `hakube apply` and `hakube status` on the lab (root). Measures a cold apply of the
# 7-host lab, no-op re-applies, `status` healthy and with a control plane partitioned, and the same
# on a 30-host lab. Prints a table of what it measured.
# Usage: bash bench/apply.sh   (builds in release mode first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
H=target/release/hakube
B7=bench7; B30=bench30
cleanup() { $H lab down --name $B7 >/dev/null 2>&1 || true; $H lab down --name $B30 >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

# Seconds a command takes; the command must succeed (status: exit 0, 1 or 2 are all answers).
secs() { local s e rc; s=$(date +%s%N); "$@" >/dev/null 2>&1 && rc=0 || rc=$?; e=$(date +%s%N);
  if [ "$1" = "$H" ] && [ "$2" = apply ] && [ $rc -ne 0 ]; then echo "FAILED: $*" >&2; exit 1; fi
  awk -v n=$((e-s)) 'BEGIN{printf "%.2f", n/1e9}'; }
# Median of five runs.
med5() { for _ in 1 2 3 4 5; do secs "$@"; echo; done | sort -n | sed -n 3p; }

S7=/var/lib/hakube-lab/$B7/cluster.yaml
$H lab up --name $B7 --subnet 10.95.0.0/24 >/dev/null
cold7=$(secs $H apply -f $S7)
noop7=$(med5 $H apply -f $S7)
sleep 3 # let HAProxy's rise checks settle before timing status
st7=$(med5 $H status -f $S7)
$H lab fault partition --name $B7 master2 >/dev/null
st7p=$(med5 $H status -f $S7)
$H lab fault heal --name $B7 master2 >/dev/null
$H lab down --name $B7 >/dev/null

S30=/var/lib/hakube-lab/$B30/cluster.yaml
$H lab up --name $B30 --subnet 10.96.0.0/23 --workers 25 >/dev/null
cold30=$(secs $H apply -f $S30)
noop30=$(med5 $H apply -f $S30)
st30=$(med5 $H status -f $S30)

printf '\n%-44s %9s %8s\n' "release build; median of 5 where noted" "seconds" "target"
printf '%-44s %9s %8s\n' "apply, cold, 7 hosts" "$cold7" "< 60"
printf '%-44s %9s %8s\n' "apply, no-op, 7 hosts (median of 5)" "$noop7" "< 3"
printf '%-44s %9s %8s\n' "apply, cold, 30 hosts" "$cold30" "-"
printf '%-44s %9s %8s\n' "apply, no-op, 30 hosts (median of 5)" "$noop30" "-"
printf '%-44s %9s %8s\n' "status, healthy, 7 hosts (median of 5)" "$st7" "< 1"
printf '%-44s %9s %8s\n' "status, master2 partitioned (median of 5)" "$st7p" "< 3"
printf '%-44s %9s %8s\n' "status, 30 hosts (median of 5)" "$st30" "-"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F)"

#!/usr/bin/env bash
# Benchmark of `hakube apply` and `hakube status` on the lab (root). Measures a cold apply of the
# 7-host lab, no-op re-applies, `status` healthy and with a control plane partitioned, the same
# on a 30-host lab, and on a 100-host lab (2 LBs, 5 control planes, 93 workers) with hakube's
# peak memory (`/usr/bin/time -v`) and where a no-op apply's time goes (apply's per-phase times,
# from `apply -o json`). Prints tables of what it measured.
# Usage: bash bench/apply.sh   (builds in release mode first)
# Lab names and subnets can be moved off others' with L7/L30/L100 and NET7/NET30/NET100, e.g.
#   L7=sc1 NET7=10.200.0.0/24 L30=sc2 NET30=10.201.0.0/24 L100=sc100 NET100=10.202.0.0/23 bash bench/apply.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -q
H=target/release/hakube
B7=${L7:-bench7}; B30=${L30:-bench30}; B100=${L100:-bench100}
N7=${NET7:-10.95.0.0/24}; N30=${NET30:-10.96.0.0/23}; N100=${NET100:-10.97.0.0/23}
cleanup() { for l in $B7 $B30 $B100; do $H lab down --name "$l" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
cleanup

# Seconds a command takes; the command must succeed (status: exit 0, 1 or 2 are all answers).
secs() { local s e rc; s=$(date +%s%N); "$@" >/dev/null 2>&1 && rc=0 || rc=$?; e=$(date +%s%N);
  if [ "$1" = "$H" ] && [ "$2" = apply ] && [ $rc -ne 0 ]; then echo "FAILED: $*" >&2; exit 1; fi
  awk -v n=$((e-s)) 'BEGIN{printf "%.2f", n/1e9}'; }
# Median of five runs.
med5() { for _ in 1 2 3 4 5; do secs "$@"; echo; done | sort -n | sed -n 3p; }
# Peak RSS in MB of one run of a command (its output discarded).
peak_mb() { local f rc; f=$(mktemp); /usr/bin/time -o "$f" -f '%M' "$@" >/dev/null 2>&1 && rc=0 || rc=$?
  if [ "$2" = apply ] && [ $rc -ne 0 ]; then echo "FAILED: $*" >&2; exit 1; fi
  tail -1 "$f" | awk '{printf "%.0f", $1/1024}'; rm -f "$f"; }
# "phase seconds" lines of one `apply -o json` run.
phases() { "$H" apply -o json -f "$1" | awk '/"event":"summary"/' |
  python3 -c 'import json,sys; [print(p, "%.2f" % (ms/1000)) for p, ms in json.loads(sys.stdin.read())["summary"]["phases"]]'; }

S7=/var/lib/hakube-lab/$B7/cluster.yaml
$H lab up --name "$B7" --subnet "$N7" >/dev/null
cold7=$(secs $H apply -f "$S7")
noop7=$(med5 $H apply -f "$S7")
rss7=$(peak_mb $H apply -f "$S7")
sleep 3 # let HAProxy's rise checks settle before timing status
st7=$(med5 $H status -f "$S7")
$H lab fault partition --name "$B7" master2 >/dev/null
st7p=$(med5 $H status -f "$S7")
$H lab fault heal --name "$B7" master2 >/dev/null
$H lab down --name "$B7" >/dev/null

S30=/var/lib/hakube-lab/$B30/cluster.yaml
$H lab up --name "$B30" --subnet "$N30" --workers 25 >/dev/null
cold30=$(secs $H apply -f "$S30")
noop30=$(med5 $H apply -f "$S30")
st30=$(med5 $H status -f "$S30")
$H lab down --name "$B30" >/dev/null

S100=/var/lib/hakube-lab/$B100/cluster.yaml
up100=$(secs $H lab up --name "$B100" --subnet "$N100" --control-planes 5 --workers 93)
s=$(date +%s%N)
coldrss100=$(peak_mb $H apply -f "$S100")
cold100=$(awk -v n=$(( $(date +%s%N) - s )) 'BEGIN{printf "%.2f", n/1e9}')
noop100=$(med5 $H apply -f "$S100")
rss100=$(peak_mb $H apply -f "$S100")
st100=$(med5 $H status -f "$S100")
strss100=$(peak_mb $H status -f "$S100")
breakdown=$(phases "$S100")

printf '\n%-48s %9s %8s\n' "release build; median of 5 where noted" "seconds" "target"
printf '%-48s %9s %8s\n' "apply, cold, 7 hosts" "$cold7" "< 60"
printf '%-48s %9s %8s\n' "apply, no-op, 7 hosts (median of 5)" "$noop7" "<= 2"
printf '%-48s %9s %8s\n' "apply, cold, 30 hosts" "$cold30" "-"
printf '%-48s %9s %8s\n' "apply, no-op, 30 hosts (median of 5)" "$noop30" "-"
printf '%-48s %9s %8s\n' "status, healthy, 7 hosts (median of 5)" "$st7" "< 1"
printf '%-48s %9s %8s\n' "status, master2 partitioned (median of 5)" "$st7p" "< 3"
printf '%-48s %9s %8s\n' "status, 30 hosts (median of 5)" "$st30" "-"
printf '%-48s %9s %8s\n' "lab up, 100 hosts" "$up100" "<= 20"
printf '%-48s %9s %8s\n' "apply, cold, 100 hosts" "$cold100" "<= 60"
printf '%-48s %9s %8s\n' "apply, no-op, 100 hosts (median of 5)" "$noop100" "<= 5"
printf '%-48s %9s %8s\n' "status, 100 hosts (median of 5)" "$st100" "<= 1"
printf '\n%-48s %9s %8s\n' "hakube's peak RSS" "MB" "target"
printf '%-48s %9s %8s\n' "apply, no-op, 7 hosts" "$rss7" "-"
printf '%-48s %9s %8s\n' "apply, cold, 100 hosts" "$coldrss100" "<= 150"
printf '%-48s %9s %8s\n' "apply, no-op, 100 hosts" "$rss100" "<= 150"
printf '%-48s %9s %8s\n' "status, 100 hosts" "$strss100" "-"
printf '\nwhere one more no-op apply on 100 hosts spends its time (apply -o json, seconds):\n'
echo "$breakdown" | awk '{printf "  %-16s %6s\n", $1, $2}'
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F)"

#!/usr/bin/env bash
# `hakube exporter` under a scrape every second for a minute: 30 s with every host healthy,
# then 30 s with one load balancer partitioned. Prints, per phase, the scrape times (curl's
# total time) and the exporter's RSS at the start and end, as a Markdown table.
# Needs root; creates the lab $LAB (default tmon4, subnet $NET.0/24, default 10.183.0) with
# --monitoring and removes it after.
# Usage: [LAB=name NET=a.b.c] bash bench/exporter.sh [path/to/hakube]
#        (default: target/release/hakube, else debug)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/exporter.sh: needs root" >&2; exit 1; }
HAKUBE=${1:-}
if [ -z "$HAKUBE" ]; then
  if [ -x target/release/hakube ]; then HAKUBE=target/release/hakube; else HAKUBE=target/debug/hakube; fi
fi
[ -x "$HAKUBE" ] || { echo "bench/exporter.sh: build first (cargo build)" >&2; exit 1; }
LAB=${LAB:-tmon4} NET=${NET:-10.183.0}
DIR=/var/lib/hakube-lab/$LAB
"$HAKUBE" lab --name $LAB down >/dev/null 2>&1 || true
trap '"$HAKUBE" lab --name $LAB down >/dev/null 2>&1 || true' EXIT
"$HAKUBE" lab --name $LAB up --subnet $NET.0/24 --monitoring >/dev/null
"$HAKUBE" apply -f $DIR/cluster.yaml >/dev/null
PID=$(python3 -c "import json;print(json.load(open('$DIR/state.json'))['monitoring']['exporterPid']['pid'])")
URL=http://$NET.1:9468/metrics
rss() { awk '$1 == "VmRSS:" {print $2}' /proc/$PID/status; }

phase() { # name seconds -> one table row
  local name=$1 n=$2 times=() rss0 rss1 i t
  rss0=$(rss)
  for ((i = 0; i < n; i++)); do
    t=$(curl -s -o /dev/null -m 10 -w '%{time_total}' "$URL" || echo 10)
    times+=("$t")
    sleep "$(python3 -c "print(max(0.0, 1 - $t))")"
  done
  rss1=$(rss)
  # Nearest-rank percentiles of the sorted times (plain POSIX awk: mawk has no ?: in an index).
  printf '%s\n' "${times[@]}" | sort -n | awk -v name="$name" -v r0="$rss0" -v r1="$rss1" '
    function at(p,  i) { i = int(NR * p); if (i < NR * p) i++; if (i < 1) i = 1; return v[i] }
    { v[NR] = $1 * 1000 }
    END { printf "| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f |\n", name, NR, at(0.5), at(0.95), v[NR], r0/1024, r1/1024 }'
}

echo "| phase | scrapes | p50 (ms) | p95 (ms) | max (ms) | RSS start (MiB) | RSS end (MiB) |"
echo "|---|---|---|---|---|---|---|"
phase "healthy" 30
"$HAKUBE" lab --name $LAB fault partition lb2 >/dev/null
phase "lb2 partitioned" 30
"$HAKUBE" lab --name $LAB fault heal lb2 >/dev/null

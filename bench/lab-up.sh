#!/usr/bin/env bash
# Times `hakube lab up` (7 and 30 hosts) and `lab down`, and sums the memory (RSS, and PSS,
# which splits shared pages fairly) of the lab's processes: everything in its namespaces.
# Needs root. Usage: bash bench/lab-up.sh [path/to/hakube]   (default: target/release/hakube,
# else target/debug/hakube). Prints a Markdown table of what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/lab-up.sh: needs root" >&2; exit 1; }
HAKUBE=${1:-}
if [ -z "$HAKUBE" ]; then
  if [ -x target/release/hakube ]; then HAKUBE=target/release/hakube; else HAKUBE=target/debug/hakube; fi
fi
[ -x "$HAKUBE" ] || { echo "bench/lab-up.sh: build first (cargo build --release)" >&2; exit 1; }

now() { date +%s.%N; }
mem_kib() { # $1 lab, $2 field: sum of VmRSS (status) or Pss (smaps_rollup) over the lab's processes
  local lab=$1 field=$2 total=0 ns pid kb file
  [ "$field" = Pss ] && file=smaps_rollup || file=status
  for ns in $(ip netns list | awk '{print $1}' | grep "^hakube-lab\.$lab\."); do
    for pid in $(ip netns pids "$ns"); do
      kb=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/$file" 2>/dev/null || true)
      total=$((total + ${kb:-0}))
    done
  done
  echo "$total"
}

run() { # name subnet workers -> one table row
  local name=$1 subnet=$2 workers=$3 t0 t1 t2 hosts rss pss procs
  "$HAKUBE" lab --name "$name" down >/dev/null 2>&1 || true
  t0=$(now)
  "$HAKUBE" lab --name "$name" up --subnet "$subnet" --workers "$workers" >/dev/null 2>&1
  local up_s
  up_s=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')
  hosts=$(ip netns list | grep -c "^hakube-lab\.$name\.")
  rss=$(mem_kib "$name" VmRSS)
  pss=$(mem_kib "$name" Pss)
  procs=$(for ns in $(ip netns list | awk '{print $1}' | grep "^hakube-lab\.$name\."); do ip netns pids "$ns"; done | wc -l)
  t1=$(now)
  "$HAKUBE" lab --name "$name" down >/dev/null 2>&1
  t2=$(now)
  awk -v h="$hosts" -v u="$up_s" -v b="$t1" -v c="$t2" -v r="$rss" -v s="$pss" -v p="$procs" \
    'BEGIN { printf "| %d | %.2f | %.2f | %.1f | %.1f | %d |\n", h, u, c - b, r / 1024, s / 1024, p }'
}

echo "hakube lab up/down on $(nproc) cores, $(uname -r), binary $HAKUBE"
echo
echo "| hosts | lab up (s) | lab down (s) | sum RSS (MiB) | sum PSS (MiB) | processes |"
echo "|---|---|---|---|---|---|"
run bench7 10.79.7.0/24 2
run bench30 10.79.30.0/24 25

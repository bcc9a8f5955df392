#!/usr/bin/env bash
# The demo behind `make demo`: plan and render the runbook's cluster, check every file with the
# real tools, then bring up a live lab, show it, and take it down again.
set -euo pipefail
cd "$(dirname "$0")/.."
H=target/debug/hakube
LAB=${LAB:-demo}

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

step "hakube lab status --name $LAB"
$H lab status --name "$LAB"

step "hakube lab exec --name $LAB master1 -- hostname"
$H lab exec --name "$LAB" master1 -- hostname

step "hakube lab down --name $LAB"
$H lab down --name "$LAB"
trap - EXIT

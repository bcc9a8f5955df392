#!/usr/bin/env bash
# Validation time against spec size, for 10 000 and 100 000 hosts, certSANs and API server
# arguments (the specs come from tests/validate_scale.rs):
# 1. validation alone (spec::load_str: parse, source map, unknown fields, every rule, port
#    plans), in the test profile: debug unless CARGO_PROFILE_DEV_OPT_LEVEL is set;
# 2. the whole `hakube plan -o json` (validation, plan, every port plan as JSON), wall and CPU.
# Usage: bash bench/validate.sh [path/to/hakube]   (default target/debug/hakube)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/hakube}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

HAKUBE_BENCH_DIR=$dir cargo test -q --test validate_scale -- --ignored --nocapture 2>/dev/null | grep '^validate'

# CPU time (user + sys) is inflated less than wall time by a busy machine.
TIMEFORMAT='%R %U %S'
for f in hosts sans args; do
  t=$( { time { rc=0; "$bin" plan -o json -f "$dir/$f.yaml" >"$dir/$f.json" 2>"$dir/$f.err" || rc=$?; echo "$rc" >"$dir/$f.rc"; }; } 2>&1 )
  read -r wall user sys <<<"$t"
  valid=$(grep -o '"valid": [a-z]*' "$dir/$f.json" | sed -n 1p)
  printf 'plan -o json %-5s 100000 entries: wall %6.2f s, cpu %6.2f s, exit %s, %s\n' \
    "$f" "$wall" "$(awk "BEGIN { print $user + $sys }")" "$(cat "$dir/$f.rc")" "$valid"
done

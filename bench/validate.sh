#!/usr/bin/env bash
# Validation time against spec size.
# 1. Validation alone (spec::load_str: parse, source map, unknown fields, every rule, port
#    plans) for 10 000 and 100 000 hosts, certSANs and API server arguments, from the ignored
#    test in tests/validate_scale.rs (build profile: whatever `cargo test` uses, debug here).
# 2. The whole `hakube plan -o json` (validation, plan, 100 000 port plans as JSON) per spec.
# Usage: bash bench/validate.sh [N] [path/to/hakube]   (default N=100000, target/debug/hakube)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
bin=${2:-target/debug/hakube}

cargo test -q --test validate_scale -- --ignored --nocapture 2>/dev/null | grep '^validate'

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
header() {
  cat <<YAML
apiVersion: hakube.io/v1alpha1
kind: Cluster
metadata: {name: big}
spec:
  networks: {management: 172.16.0.0/12}
  loadBalancer: {vip: 172.16.0.100}
  hosts:
    - {name: lb1, address: 172.16.0.11, roles: [loadbalancer]}
    - {name: lb2, address: 172.16.0.12, roles: [loadbalancer]}
    - {name: cp1, address: 172.16.0.101, roles: [control-plane]}
    - {name: cp2, address: 172.16.0.102, roles: [control-plane]}
    - {name: cp3, address: 172.16.0.103, roles: [control-plane]}
YAML
}
{ header; awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "    - {name: w%d, address: 172.%d.%d.%d, roles: [worker]}\n", i, 17 + int(i / 65536), int(i / 256) % 256, i % 256 }'; } >"$dir/hosts.yaml"
{ header; echo "  kubernetes:"; echo "    certSANs:"; awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "      - san%d.example.com\n", i }'; } >"$dir/sans.yaml"
{ header; echo "  kubernetes:"; echo "    apiServerExtraArgs:"; awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "      flag-%d: \"%d\"\n", i, i }'; } >"$dir/args.yaml"

# Wall time, and CPU time (user + sys), which a busy machine inflates less.
TIMEFORMAT='%R %U %S'
for f in hosts sans args; do
  t=$( { time { rc=0; "$bin" plan -o json -f "$dir/$f.yaml" >"$dir/$f.json" 2>"$dir/$f.err" || rc=$?; echo "$rc" >"$dir/$f.rc"; }; } 2>&1 )
  read -r wall user sys <<<"$t"
  valid=$(grep -o '"valid": [a-z]*' "$dir/$f.json" | sed -n 1p)
  printf 'plan -o json %-5s %7d entries: wall %6.2f s, cpu %6.2f s, exit %s, %s\n' \
    "$f" "$n" "$wall" "$(awk "BEGIN { print $user + $sys }")" "$(cat "$dir/$f.rc")" "$valid"
done

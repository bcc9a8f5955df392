#!/usr/bin/env bash
# Validation time against spec size: specs with 100 000 hosts, 100 000 certSANs and 100 000
# API server arguments, each checked by `hakube plan -o json` (validate, plan, port plans).
# Usage: bash bench/validate.sh [N] [path/to/hakube]   (default N=100000, target/debug/hakube)
set -euo pipefail
n=${1:-100000}
bin=${2:-target/debug/hakube}
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

for f in hosts sans args; do
  start=$(date +%s.%N)
  code=0
  "$bin" plan -o json -f "$dir/$f.yaml" >"$dir/$f.json" 2>"$dir/$f.err" || code=$?
  end=$(date +%s.%N)
  valid=$(grep -o '"valid": [a-z]*' "$dir/$f.json" | sed -n 1p)
  printf '%-6s %7d entries  %6.2f s  exit %d  %s\n' "$f" "$n" "$(awk "BEGIN { print $end - $start }")" "$code" "$valid"
done

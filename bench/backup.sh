#!/usr/bin/env bash
# Benchmark of `hakube backup` and `hakube restore` on the lab (root), with a ~200 MB etcd
# database: snapshot transfer against plain `etcdctl snapshot save` from the same follower in the
# same run (three rounds each, alternating; medians), the backup's total time with its
# verification, and a full restore of the 3-member cluster after two members lost their data
# (RTO). Prints a table.
# Usage: bash bench/backup.sh [--debug]   (a release build unless --debug)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--debug" ]; then
  cargo build --bins -q; H=$PWD/target/debug/hakube; BUILD=debug
else
  cargo build --release --bins -q; H=$PWD/target/release/hakube; BUILD=release
fi
LAB=bkt9; NET=10.159.0
S=/var/lib/hakube-lab/$LAB/cluster.yaml
P=/var/lib/hakube-lab/$LAB/.hakube/$LAB/pki/etcd
TMP=$(mktemp -d)
cleanup() { $H lab down --name $LAB >/dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT
$H lab down --name $LAB >/dev/null 2>&1 || true

ETCDCTL=/usr/local/bin/etcdctl; [ -x $ETCDCTL ] || ETCDCTL=etcdctl
ctl() { ETCDCTL_API=3 $ETCDCTL --cacert=$P/ca.crt --cert=$P/hakube-operator.crt --key=$P/hakube-operator.key "$@"; }
now() { date +%s%N; }
secs() { awk -v n="$1" 'BEGIN{printf "%.2f", n/1e9}'; }
med3() { sort -n | sed -n 2p; }
EPS=https://$NET.101:2379,https://$NET.102:2379,https://$NET.103:2379

$H lab up --name $LAB --subnet $NET.0/24 >/dev/null
$H apply -f $S >/dev/null

# ~200 MB: 200 values of 1 MB (etcd takes requests up to 1.5 MiB; the quota is 2 GiB).
head -c 750000 /dev/urandom | base64 -w0 > "$TMP/value"
for i in $(seq 1 200); do ctl --endpoints=$EPS put /bench/value-$i < "$TMP/value" >/dev/null; done
db=$(ctl --endpoints=$EPS endpoint status -w json | python3 -c 'import json,sys; print(max(e["Status"]["dbSize"] for e in json.load(sys.stdin)))')
# A follower, as hakube picks one (the first member that is not the leader).
follower=$(ctl --endpoints=$EPS endpoint status -w json | python3 -c '
import json,sys
for e in json.load(sys.stdin):
    s=e["Status"]
    if s["leader"]!=s["header"]["member_id"]: print(e["Endpoint"]); break')

: > "$TMP/etcdctl"; : > "$TMP/hakube"
for round in 1 2 3; do
  t0=$(now); ctl --endpoints=$follower snapshot save "$TMP/etcdctl.db" >/dev/null 2>&1; t1=$(now)
  size=$(stat -c %s "$TMP/etcdctl.db"); rm -f "$TMP/etcdctl.db"
  echo "$((t1-t0)) $size" >> "$TMP/etcdctl"
  $H backup -f $S --keep-last 1 --keep-daily 0 --keep-weekly 0 -o json > "$TMP/b.json" 2>"$TMP/b.err"
  python3 -c '
import json,sys
r=json.load(open(sys.argv[1]))
print(r["transferMs"]*1000000, r["snapshotBytes"], r["verifyMs"]*1000000, r["totalMs"]*1000000, r["source"]["endpoint"])' "$TMP/b.json" >> "$TMP/hakube"
done
ec_ns=$(awk '{print $1}' "$TMP/etcdctl" | med3); ec_b=$(awk '{print $2}' "$TMP/etcdctl" | head -1)
hk_ns=$(awk '{print $1}' "$TMP/hakube" | med3); hk_b=$(awk '{print $2}' "$TMP/hakube" | head -1)
hk_ver=$(awk '{print $3}' "$TMP/hakube" | med3); hk_tot=$(awk '{print $4}' "$TMP/hakube" | med3)
hk_src=$(awk '{print $5}' "$TMP/hakube" | sort | uniq -c | tr '\n' ' ')
mibs() { awk -v b="$1" -v n="$2" 'BEGIN{printf "%.1f", b/1048576/(n/1e9)}'; }
ec_tp=$(mibs "$ec_b" "$ec_ns"); hk_tp=$(mibs "$hk_b" "$hk_ns")
ratio=$(awk -v a="$hk_tp" -v b="$ec_tp" 'BEGIN{printf "%.2f", a/b}')

# Disaster: two members lose their data (quorum gone), then a full restore of the last backup.
backup=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["file"])' "$TMP/b.json")
for h in master2 master3; do
  $H lab fault stop $h etcd --name $LAB >/dev/null
  $H lab exec --name $LAB $h -- sh -c 'rm -rf /var/lib/etcd/*'
done
t0=$(now)
$H restore "$backup" -f $S --yes -o json > "$TMP/r.json" 2>"$TMP/r.err" || { cat "$TMP/r.err"; exit 1; }
t1=$(now)
rto=$((t1-t0))
read -r down steps < <(python3 -c '
import json,sys
r=json.load(open(sys.argv[1]))
assert r["outcome"]=="restored", r
print(r["downtimeMs"]*1000000, ", ".join("%s %.1f" % (s["step"], s["ms"]/1000) for s in r["steps"]))' "$TMP/r.json")
keys=$(ctl --endpoints=$EPS get /bench/ --prefix --keys-only | grep -c value- || true)

printf '\n%-58s %12s %14s\n' "$BUILD build; etcd database $(awk -v b="$db" 'BEGIN{printf "%.1f MiB", b/1048576}')" "measured" "goal"
printf '%-58s %10ss %14s\n' "etcdctl snapshot save, follower (median of 3)" "$(secs "$ec_ns")" "-"
printf '%-58s %8s MiB/s %14s\n' "  throughput" "$ec_tp" "-"
printf '%-58s %10ss %14s\n' "hakube backup: snapshot transfer (median of 3)" "$(secs "$hk_ns")" "-"
printf '%-58s %8s MiB/s %14s\n' "  throughput" "$hk_tp" ">= $(awk -v b="$ec_tp" 'BEGIN{printf "%.1f", 0.9*b}')"
printf '%-58s %11sx %14s\n' "  against etcdctl" "$ratio" ">= 0.90x"
printf '%-58s %10ss %14s\n' "hakube backup: verification (trailer, status, trial restore)" "$(secs "$hk_ver")" "-"
printf '%-58s %10ss %14s\n' "hakube backup: total, verified and archived" "$(secs "$hk_tot")" "-"
printf '%-58s %10ss %14s\n' "hakube restore, 3 members, quorum lost (RTO)" "$(secs "$rto")" "<= 30s"
printf '%-58s %10ss %14s\n' "  of it, API servers stopped until /readyz through the VIP" "$(secs "$down")" "-"
echo "backup source: $hk_src"
echo "restore steps (s): $steps"
echo "keys back after the restore: $keys of 200"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F)"

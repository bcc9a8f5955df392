# The rest is the same on every host. Nothing secret is printed: the key stays in its file.
set -eu
umask 077

log() { echo "hakube-backup: $*"; }
fail() {
    echo "hakube-backup: FAILED: $*" >&2
    exit 1
}

# etcdctl and etcdutl of etcd's own release: next to etcd, else in PATH.
tool() {
    if [ -x "$ETCD_BIN_DIR/$1" ]; then
        echo "$ETCD_BIN_DIR/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        fail "$1 is not installed (looked next to etcd in $ETCD_BIN_DIR and in PATH); install it from etcd's release"
    fi
}
ETCDCTL=$(tool etcdctl)
ETCDUTL=$(tool etcdutl)
# $1: the command timeout. etcdctl retries a refused connection until it, so a status gets a
# short one (a stopped member must fail the run, not hang it) and a snapshot a long one.
ctl() {
    t=$1
    shift
    ETCDCTL_API=3 "$ETCDCTL" --endpoints="$ENDPOINT" --cacert="$CACERT" --cert="$CERT" \
        --key="$KEY" --dial-timeout=5s --command-timeout="$t" "$@"
}

mkdir -p "$BACKUP_DIR"
chmod 700 "$BACKUP_DIR"
exec 9>"$BACKUP_DIR/.lock"
if command -v flock >/dev/null 2>&1; then
    flock -n 9 || fail "another backup holds $BACKUP_DIR/.lock"
fi
# What an interrupted run left.
rm -f "$BACKUP_DIR"/*.partial "$BACKUP_DIR"/*.partial.part

START=$(date -u +%s)
NAME="$CLUSTER-$MEMBER-$(date -u -d "@$START" +%Y%m%dT%H%M%SZ).db"
PARTIAL="$BACKUP_DIR/$NAME.partial"
trap 'rm -f "$PARTIAL" "$PARTIAL.part"' EXIT

# Room for the snapshot: twice the database's size must be free.
if ! EP=$(ctl 15s endpoint status -w json 2>&1); then
    fail "the local etcd member at $ENDPOINT does not answer: $(printf '%s' "$EP" | tail -n 2)"
fi
DB=$(printf '%s' "$EP" | sed -n 's/.*"dbSize":\([0-9]*\).*/\1/p')
[ -n "$DB" ] || fail "cannot read the database size from etcdctl endpoint status: $EP"
FREE=$(df -Pk "$BACKUP_DIR" | awk 'NR == 2 { print $4 }')
NEED=$((DB * 2 / 1024 + 1024))
[ "$FREE" -ge "$NEED" ] ||
    fail "only $FREE KiB free in $BACKUP_DIR, $NEED KiB needed (twice the $DB-byte database); free space there or lower spec.backup.schedule.keep"

log "snapshot of member $MEMBER ($ENDPOINT, database $DB bytes) to $PARTIAL"
if ! OUT=$(ctl 2h snapshot save "$PARTIAL" 2>&1); then
    fail "etcdctl snapshot save from $ENDPOINT: $(printf '%s' "$OUT" | tail -n 3)"
fi

# 1. etcd appends the SHA-256 of the database to a snapshot it sends.
SIZE=$(stat -c %s "$PARTIAL")
if [ "$SIZE" -le 32 ] || [ $(((SIZE - 32) % 512)) -ne 0 ]; then
    fail "the snapshot has $SIZE bytes, not a database and etcd's 32-byte SHA-256 trailer: it is truncated"
fi
WANT=$(tail -c 32 "$PARTIAL" | od -An -v -tx1 | tr -d ' \n')
GOT=$(head -c $((SIZE - 32)) "$PARTIAL" | sha256sum | cut -d' ' -f1)
[ "$WANT" = "$GOT" ] || fail "the snapshot's SHA-256 trailer does not match its content: it is damaged"

# 2. etcdutl reads it: revision, keys, hash.
if ! ST=$("$ETCDUTL" snapshot status "$PARTIAL" -w json 2>&1); then
    fail "etcdutl snapshot status: $(printf '%s' "$ST" | tail -n 3)"
fi
num() { printf '%s' "$ST" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
REV=$(num revision)
KEYS=$(num totalKey)
HASH=$(num hash)
[ -n "$REV" ] && [ -n "$KEYS" ] || fail "etcdutl snapshot status did not report the revision and keys: $ST"

SHA=$(sha256sum "$PARTIAL" | cut -d' ' -f1)
mv "$PARTIAL" "$BACKUP_DIR/$NAME"
sync
NOW=$(date -u +%s)
printf '{"format":"hakube-host-backup/1","cluster":"%s","member":"%s","file":"%s","createdAt":"%s","createdUnix":%s,"verifiedAt":"%s","verifiedUnix":%s,"revision":%s,"totalKeys":%s,"hash":%s,"size":%s,"sha256":"%s","checks":["trailer","status"]}\n' \
    "$CLUSTER" "$MEMBER" "$NAME" "$(date -u -d "@$START" +%Y-%m-%dT%H:%M:%SZ)" "$START" \
    "$(date -u -d "@$NOW" +%Y-%m-%dT%H:%M:%SZ)" "$NOW" "$REV" "$KEYS" "${HASH:-0}" "$SIZE" "$SHA" \
    >"$BACKUP_DIR/last-verified.json.partial"
chmod 644 "$BACKUP_DIR/last-verified.json.partial"
mv "$BACKUP_DIR/last-verified.json.partial" "$BACKUP_DIR/last-verified.json"
log "verified $NAME: revision $REV, $KEYS keys, $SIZE bytes, sha256 $SHA"

# Keep the newest $KEEP of this member's snapshots; nothing else in the folder is touched.
ls -1 "$BACKUP_DIR" | grep -E "^$CLUSTER-$MEMBER-[0-9]{8}T[0-9]{6}Z\.db\$" | sort -r |
    tail -n +$((KEEP + 1)) | while read -r old; do
    rm -f "$BACKUP_DIR/$old"
    log "removed $old (keeping the newest $KEEP)"
done

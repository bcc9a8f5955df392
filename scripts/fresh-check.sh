#!/usr/bin/env bash
# `make fresh-check`: proves that the README's setup works on a fresh Debian 12 machine.
#
# It builds a clean bookworm root with debootstrap (variant minbase: Debian's "required" packages
# and apt, nothing else; a cloud image has more, such as ca-certificates, python3 or curl, and
# setup.sh must not rely on any of them), binds the Rust toolchain (read-only) and the cargo
# registry cache (copy-on-write) in, clones HEAD of this repository into it (committed work only)
# and runs there, timing each stage:
#   scripts/setup.sh, scripts/setup.sh again (it must install nothing), cargo fmt --check,
#   cargo build --all-targets, and the tests that need no lab (FRESH_TESTS).
# Added to the root: /usr/sbin/policy-rc.d (exit 101), as in Debian's container images, so that
# package scripts do not start haproxy, sshd or prometheus on this machine's network; and this
# machine's local CAs (/usr/local/share/ca-certificates), which any machine on its network has.
#
# Needs root. The debootstrap root is cached in $FRESH_CACHE (FRESH_REBUILD=1 makes it again);
# each run works on an overlay over it, so every check starts from a pristine root. Everything
# runs in its own mount and PID namespaces: its mounts and processes end with it, even on kill -9,
# and the run folder (with its build, several GB) is removed at the end (FRESH_KEEP=1 keeps it).
# FRESH_SETUP_ONLY=1 stops after setup.sh (for working on it).
set -euo pipefail

CACHE=${FRESH_CACHE:-/var/cache/hakube-fresh}
SUITE=bookworm
TESTS=${FRESH_TESTS:---lib --test validate --test render --test cli --test tools --test spec_fuzz}
RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_DIR=${CARGO_HOME:-$HOME/.cargo}

die() { echo "fresh-check: $*" >&2; exit 1; }

# ---- inside the namespaces ------------------------------------------------------------------
if [ "${1-}" = "--inside" ]; then
  run=$2
  repo=$3
  rev=$4
  root=$run/root
  timings=$run/timings
  trap 'exit 130' INT TERM # we are PID 1 here: without a handler these would be ignored

  teardown() {
    local rc=$?
    # Unmount everything below the root, deepest first (the namespace would drop them too).
    findmnt -rn -o TARGET | grep -E "^($root|$CACHE/root\.new)(/|$)" | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m"
    done
    exit "$rc"
  }
  trap teardown EXIT

  stage() { # stage NAME COMMAND...: run it, record how long it took
    local name=$1 t0=$SECONDS
    shift
    printf '\n\033[1m== %s\033[0m\n' "$name"
    # A subshell outside any condition, so that `set -e` holds inside the stage's functions.
    set +e
    (
      set -e
      "$@"
    )
    local rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
      printf '%s\t%s\tok\n' "$name" $((SECONDS - t0)) >>"$timings"
    else
      printf '%s\t%s\tFAILED (exit %s)\n' "$name" $((SECONDS - t0)) "$rc" >>"$timings"
      exit "$rc"
    fi
  }

  # Debian's mirror as this machine's apt sources name it (deb822 or one-line format).
  mirror() { # mirror main|security
    local pat='/debian/?$' files
    [ "$1" = security ] && pat='/debian-security/?$'
    files=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    # shellcheck disable=SC2086
    grep -hoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+' $files /dev/null |
      grep -oE 'https?://[^[:space:]]+' | grep -E "$pat" | head -1
  }

  make_root() {
    local main sec new=$CACHE/root.new
    main=$(mirror main) || true
    sec=$(mirror security) || true
    [ -n "$main" ] || die "no Debian mirror in /etc/apt/sources.list(.d); set one there first"
    command -v debootstrap >/dev/null || {
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    rm -rf "$new"
    echo "debootstrap --variant=minbase $SUITE from $main"
    debootstrap --variant=minbase "$SUITE" "$new" "$main" >"$CACHE/debootstrap.log" 2>&1 ||
      die "debootstrap failed; see $CACHE/debootstrap.log"
    # The sources a fresh Debian 12 machine has: the release, its updates and security.
    rm -f "$new/etc/apt/sources.list"
    {
      printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$main" "$SUITE" "$SUITE"
      [ -z "$sec" ] || printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$sec" "$SUITE"
    } >"$new/etc/apt/sources.list.d/debian.sources"
    printf '#!/bin/sh\n# fresh-check: no service starts in this root\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
    chmod 0755 "$new/usr/sbin/policy-rc.d"
    rm -rf "$CACHE/root"
    mv "$new" "$CACHE/root"
  }

  mount_all() {
    local d
    mkdir -p "$run/upper" "$run/work" "$root" "$run/reg-upper" "$run/reg-work"
    mount -t overlay overlay -o "lowerdir=$CACHE/root,upperdir=$run/upper,workdir=$run/work" "$root"
    mount -t proc proc "$root/proc"
    mount -t sysfs -o ro sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    touch "$root/etc/resolv.conf"
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
    # The toolchain read-only; the registry cache copy-on-write (cargo writes its locks there).
    for d in .rustup .cargo/bin .cargo/registry; do mkdir -p "$root/root/$d"; done
    mount --bind "$RUSTUP_DIR" "$root/root/.rustup"
    mount -o remount,bind,ro "$root/root/.rustup"
    mount --bind "$CARGO_DIR/bin" "$root/root/.cargo/bin"
    mount -o remount,bind,ro "$root/root/.cargo/bin"
    mount -t overlay overlay \
      -o "lowerdir=$CARGO_DIR/registry,upperdir=$run/reg-upper,workdir=$run/reg-work" \
      "$root/root/.cargo/registry"
    # The local CAs every machine on this network has (a TLS proxy may sit between it and the
    # package registries); ca-certificates adds them to the system bundle once setup.sh
    # installs it. They are the site's, not something hakube's setup installs.
    if [ -d /usr/local/share/ca-certificates ]; then
      cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    fi
  }

  clone() {
    git clone -q --no-hardlinks "$repo" "$root/root/hakube"
    git -C "$root/root/hakube" -c advice.detachedHead=false checkout -q "$rev"
    git -C "$root/root/hakube" log -1 --format='%h %s'
  }

  # A clean environment, as a root login on a fresh machine has (plus the toolchain's folders).
  in_root() {
    chroot "$root" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
      PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo CARGO_TARGET_DIR=/root/target \
      CARGO_TERM_COLOR=never \
      /bin/bash -c "cd /root/hakube && $1"
  }

  setup_again() {
    local out
    out=$(in_root 'bash scripts/setup.sh' 2>&1) || { echo "$out"; return 1; }
    echo "$out"
    if grep -q 'installing' <<<"$out"; then
      echo "fresh-check: the second setup.sh installed something again: a requirement is checked by the wrong file" >&2
      return 1
    fi
  }

  if [ "${FRESH_REBUILD-}" = 1 ] || [ ! -x "$CACHE/root/usr/bin/apt-get" ]; then
    stage "debootstrap $SUITE minbase (cached in $CACHE/root)" make_root
  else
    printf 'debootstrap (cached)\t0\tok\n' >>"$timings"
  fi
  stage "mounts: overlay root, toolchain, registry cache" mount_all
  stage "git clone of HEAD" clone
  stage "scripts/setup.sh" in_root 'bash scripts/setup.sh'
  stage "scripts/setup.sh again (installs nothing)" setup_again
  [ "${FRESH_SETUP_ONLY-}" = 1 ] && exit 0
  stage "cargo fmt --check" in_root 'cargo fmt --check'
  stage "cargo build --all-targets" in_root 'cargo build --all-targets'
  stage "cargo test $TESTS" in_root "cargo test $TESTS"
  exit 0
fi

# ---- on the host ----------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mounts)"
[ -d "$RUSTUP_DIR/toolchains" ] || die "no Rust toolchain in $RUSTUP_DIR (install Rust stable with rustup first)"
[ -d "$CARGO_DIR/bin" ] || die "no cargo in $CARGO_DIR/bin"
command -v unshare >/dev/null || die "unshare is missing (apt-get install util-linux)"
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
rev=$(git -C "$repo" rev-parse HEAD)
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] ||
  echo "fresh-check: note: uncommitted changes in $repo are not checked (it clones HEAD $rev)" >&2

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -n 9 || die "another fresh-check is running (lock $CACHE/lock)"
# A run killed with SIGKILL left its folder (its mounts and processes died with its namespaces).
for stale in "$CACHE"/run.*; do
  [ -d "$stale" ] || continue
  if findmnt -rn -o TARGET | grep -qE "^$stale(/|$)"; then
    echo "fresh-check: something is still mounted below $stale; not removing it" >&2
  else
    rm -rf "$stale"
  fi
done
run=$(mktemp -d "$CACHE/run.XXXXXX")

finish() {
  local rc=$? total=0 name secs what
  if [ -s "$run/timings" ]; then
    printf '\n\033[1m== fresh-check: time per stage\033[0m\n'
    while IFS=$'\t' read -r name secs what; do
      printf '%6ss  %-60s %s\n' "$secs" "$name" "$what"
      total=$((total + secs))
    done <"$run/timings"
    printf '%6ss  total\n' "$total"
  fi
  if findmnt -rn -o TARGET | grep -qE "^$run(/|$)"; then
    echo "fresh-check: something is still mounted below $run; not removing it" >&2
  elif [ "${FRESH_KEEP-}" = 1 ]; then
    echo "fresh-check: kept $run"
  else
    rm -rf "$run"
  fi
  [ "$rc" -eq 0 ] && echo "fresh-check: passed" || echo "fresh-check: FAILED (exit $rc)" >&2
  exit "$rc"
}
trap finish EXIT

# A private mount namespace and a PID namespace whose init is the inner script: when it ends, the
# kernel ends every process in it and drops every mount.
FRESH_CACHE=$CACHE RUSTUP_HOME=$RUSTUP_DIR CARGO_HOME=$CARGO_DIR \
  unshare --mount --propagation private --pid --fork --kill-child \
  bash "$0" --inside "$run" "$repo" "$rev"

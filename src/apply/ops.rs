//! Typed host operations: each carries the script it runs and the line it shows, so that a
//! phase says *what* it does (`Systemctl::Reload("haproxy")`) and dry-run, logs and tests all
//! read the same value.

use crate::transport::quote;
use std::fmt;

/// A systemd unit name, as hakube's units spell it.
pub type Unit = &'static str;

pub const ETCD: Unit = "etcd";
pub const HAPROXY: Unit = "haproxy";
pub const KEEPALIVED: Unit = "keepalived";
pub const LAB_APISERVER: Unit = "hakube-lab-apiserver";
pub const KUBELET: Unit = "kubelet";
pub const CONTAINERD: Unit = "containerd";
/// Not a unit: etcd's own serving certificates changed. etcd (since 3.2) reads its certificate
/// and key again on every TLS handshake, so they need no restart, only a check that the member
/// serves them; a restart of the leader would move leadership and fail writes in flight.
pub const ETCD_TLS: Unit = "etcd-tls";

/// One change made on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Systemctl(Systemctl),
    Apt(Apt),
    /// `modprobe -a` of the listed modules.
    Modprobe(Vec<String>),
    /// Load one sysctl.d file now.
    SysctlLoad(String),
    /// Turn swap off now and at boot (the kubelet refuses to run with swap).
    SwapOff,
    /// A step with no type of its own (kubeadm's, membership files); `display` never holds a
    /// secret.
    Script {
        script: String,
        display: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Systemctl {
    DaemonReload,
    /// Enable at boot and start now; a no-op for a running unit.
    EnableStart(Unit),
    /// Enable at boot only (the kubelet: kubeadm starts it when it has a config).
    Enable(Unit),
    Start(Unit),
    Stop(Unit),
    Restart(Unit),
    Reload(Unit),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apt {
    /// Install exactly these packages (`name` or `name=version`); `hold` pins them against
    /// `apt-get upgrade`.
    Install {
        packages: Vec<String>,
        hold: Vec<String>,
    },
    /// Fetch a repository's signing key, refuse it unless its primary key has `fingerprint`,
    /// and store it dearmored as `keyring`.
    Key {
        url: String,
        fingerprint: String,
        keyring: String,
    },
    Update,
}

impl Apt {
    pub fn install(packages: Vec<String>) -> Apt {
        Apt::Install {
            packages,
            hold: vec![],
        }
    }
}

impl Op {
    pub fn script(&self) -> String {
        match self {
            Op::Systemctl(s) => s.script(),
            Op::Apt(Apt::Install { packages, hold }) => {
                let mut s = format!(
                    "DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
                    join_quoted(packages)
                );
                if !hold.is_empty() {
                    s.push_str(&format!(" && apt-mark hold {}", join_quoted(hold)));
                }
                s
            }
            Op::Apt(Apt::Key {
                url,
                fingerprint,
                keyring,
            }) => format!(
                "set -e; t=$(mktemp); trap 'rm -f \"$t\"' EXIT; \
                 curl -fsSL --retry 3 {u} -o \"$t\"; \
                 f=$(gpg --show-keys --with-colons \"$t\" | awk -F: '$1==\"fpr\" {{print $10; exit}}'); \
                 if [ \"$f\" != {fp} ]; then echo \"the key at {url} has fingerprint ${{f:-none}}, not the pinned {fingerprint}\" >&2; exit 1; fi; \
                 install -d -m 0755 \"$(dirname {k})\"; \
                 gpg --dearmor --batch --yes -o {k} \"$t\"; chmod 0644 {k}",
                u = quote(url),
                fp = quote(fingerprint),
                k = quote(keyring),
            ),
            Op::Apt(Apt::Update) => "DEBIAN_FRONTEND=noninteractive apt-get update -q".into(),
            Op::Modprobe(m) => format!("modprobe -a {}", join_quoted(m)),
            Op::SysctlLoad(p) => format!("sysctl -q -p {}", quote(p)),
            Op::SwapOff => {
                "swapoff -a && sed -i.hakube-prev '/\\sswap\\s/ s/^[^#]/#&/' /etc/fstab".into()
            }
            Op::Script { script, .. } => script.clone(),
        }
    }

    pub fn script_with_display(script: impl Into<String>, display: impl Into<String>) -> Op {
        Op::Script {
            script: script.into(),
            display: display.into(),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Systemctl(s) => write!(f, "{s}"),
            Op::Apt(Apt::Install { packages, hold }) => {
                write!(f, "apt-get install -y {}", packages.join(" "))?;
                if !hold.is_empty() {
                    write!(f, " && apt-mark hold {}", hold.join(" "))?;
                }
                Ok(())
            }
            Op::Apt(Apt::Key {
                url, fingerprint, ..
            }) => write!(
                f,
                "fetch {url}, check its fingerprint is {fingerprint}, install it"
            ),
            Op::Apt(Apt::Update) => write!(f, "apt-get update"),
            Op::Modprobe(m) => write!(f, "modprobe -a {}", m.join(" ")),
            Op::SysctlLoad(p) => write!(f, "sysctl -p {p}"),
            Op::SwapOff => write!(f, "swapoff -a (and comment swap out of /etc/fstab)"),
            Op::Script { display, .. } => write!(f, "{display}"),
        }
    }
}

impl Systemctl {
    fn script(self) -> String {
        match self {
            Systemctl::DaemonReload => "systemctl daemon-reload".into(),
            // `enable` prints symlink chatter on stderr, and a failed enable must not hide a
            // start that works (the lab's units have no [Install] targets to link).
            Systemctl::EnableStart(u) => {
                format!("systemctl enable {u} >/dev/null 2>&1; systemctl start {u}")
            }
            Systemctl::Enable(u) => format!("systemctl enable {u}"),
            Systemctl::Start(u) => format!("systemctl start {u}"),
            Systemctl::Stop(u) => format!("systemctl stop {u}"),
            Systemctl::Restart(u) => format!("systemctl restart {u}"),
            Systemctl::Reload(u) => format!("systemctl reload {u}"),
        }
    }
}

impl fmt::Display for Systemctl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Systemctl::DaemonReload => write!(f, "systemctl daemon-reload"),
            Systemctl::EnableStart(u) => write!(f, "systemctl enable --now {u}"),
            Systemctl::Enable(u) => write!(f, "systemctl enable {u}"),
            Systemctl::Start(u) => write!(f, "systemctl start {u}"),
            Systemctl::Stop(u) => write!(f, "systemctl stop {u}"),
            Systemctl::Restart(u) => write!(f, "systemctl restart {u}"),
            Systemctl::Reload(u) => write!(f, "systemctl reload {u}"),
        }
    }
}

impl From<Systemctl> for Op {
    fn from(s: Systemctl) -> Op {
        Op::Systemctl(s)
    }
}

impl From<Apt> for Op {
    fn from(a: Apt) -> Op {
        Op::Apt(a)
    }
}

fn join_quoted(v: &[String]) -> String {
    v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_and_display_agree() {
        let op: Op = Systemctl::EnableStart(ETCD).into();
        assert_eq!(
            op.script(),
            "systemctl enable etcd >/dev/null 2>&1; systemctl start etcd"
        );
        assert_eq!(op.to_string(), "systemctl enable --now etcd");
        let op: Op = Apt::Install {
            packages: vec!["kubelet=1.31.2-*".into(), "curl".into()],
            hold: vec!["kubelet".into()],
        }
        .into();
        assert_eq!(
            op.script(),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y 'kubelet=1.31.2-*' 'curl' && apt-mark hold 'kubelet'"
        );
        assert_eq!(
            op.to_string(),
            "apt-get install -y kubelet=1.31.2-* curl && apt-mark hold kubelet"
        );
    }

    #[test]
    fn paths_are_quoted() {
        let op = Op::SysctlLoad("/etc/sysctl.d/a b.conf".into());
        assert_eq!(op.script(), "sysctl -q -p '/etc/sysctl.d/a b.conf'");
    }
}

//! Breaking things and putting them back: on a lab through its fault primitives (`hakube lab
//! fault`), on real hosts over SSH (`systemctl`, static pod manifests, an nftables rule set).
//! A [`Guard`] restores whatever was injected on every exit path: the normal one, Ctrl-C, an
//! error of the drill, and a panic.

use crate::spec::Cluster;
use crate::transport::{self, BoxFut, Transport, quote, ssh::Ssh};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One thing a drill breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// `systemctl stop SERVICE`; put back with `systemctl start`.
    Stop { host: String, service: String },
    /// A kubeadm static pod: its manifest moved out of `/etc/kubernetes/manifests` and back.
    StaticPod { host: String, pod: String },
    /// Every packet in and out of the host dropped; put back by removing the rules.
    Partition { host: String },
    /// Load next to the cluster's processes (a soak under load); put back by stopping it.
    Load { host: String, load: Load },
}

/// The loads of `drill soak --load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// Busy loops, twice the host's core count.
    Cpu,
    /// Synchronous 64 KiB writes in a loop, next to etcd's data directory.
    Disk { etcd: bool },
    /// 50 ms ± 20 ms delay on the host's interface (netem; skipped where the kernel lacks it).
    Jitter,
}

impl Action {
    pub fn host(&self) -> &str {
        match self {
            Action::Stop { host, .. }
            | Action::StaticPod { host, .. }
            | Action::Partition { host }
            | Action::Load { host, .. } => host,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Action::Stop { host, service } => format!("stop {service} on {host}"),
            Action::StaticPod { host, pod } => {
                format!("stop the {pod} static pod on {host} (move its manifest away)")
            }
            Action::Partition { host } => format!("partition {host} (drop all its traffic)"),
            Action::Load { host, load } => match load {
                Load::Cpu => format!("load the CPU of {host} (2 busy loops per core)"),
                Load::Disk { .. } => format!("load the disk of {host} (fsync'd writes)"),
                Load::Jitter => format!("delay {host}'s packets by 50 ms ± 20 ms"),
            },
        }
    }

    /// A fault the drill may go on without (the host cannot take it), with a warning.
    pub fn optional(&self) -> bool {
        matches!(
            self,
            Action::Load {
                load: Load::Jitter,
                ..
            }
        )
    }

    pub fn undo(&self) -> String {
        match self {
            Action::Stop { host, service } => format!("start {service} on {host}"),
            Action::StaticPod { host, pod } => format!("put the {pod} manifest back on {host}"),
            Action::Partition { host } => format!("heal {host}"),
            Action::Load { host, .. } => format!("stop the load on {host}"),
        }
    }
}

/// How faults are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The lab's fault primitives when the spec belongs to a lab, SSH otherwise.
    Auto,
    /// `hakube lab fault ...` (the spec must belong to a lab).
    Lab,
    /// SSH and the hosts' own tools, as on a real cluster (needs --yes, even on a lab).
    Ssh,
}

/// How an injector reaches the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The lab's fault primitives.
    Lab,
    /// SSH and the hosts' own tools.
    Ssh,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Lab => "lab",
            Kind::Ssh => "ssh",
        })
    }
}

pub trait Injector: Send + Sync {
    fn kind(&self) -> Kind;
    /// Break it. Called with how long the drill means to hold the fault.
    fn inject<'a>(&'a self, a: &'a Action, hold: Duration) -> BoxFut<'a, Result<()>>;
    /// Put it back. Safe to call when nothing (or only part) was injected.
    fn restore<'a>(&'a self, a: &'a Action) -> BoxFut<'a, Result<()>>;
    /// The command that restores it by hand, for the message when restoring fails.
    fn by_hand(&self, a: &Action) -> String;
}

/// The lab's own fault primitives, run as `hakube lab fault ... --name LAB` (the drill needs
/// root there anyway). Each runs in its own process group, so a Ctrl-C at the terminal reaches
/// only the drill, which then restores.
pub struct LabInjector {
    pub lab: String,
    pub exe: PathBuf,
    /// Loads run over SSH on a lab too: its hosts have sshd, and SSH is not cut by a load.
    pub ssh: SshInjector,
}

impl LabInjector {
    fn args(a: &Action, undo: bool) -> Result<Vec<String>> {
        Ok(match (a, undo) {
            (Action::Stop { host, service }, false) => {
                vec!["stop".into(), host.clone(), service.clone()]
            }
            (Action::Stop { host, service }, true) => {
                vec!["start".into(), host.clone(), service.clone()]
            }
            (Action::Partition { host }, false) => vec!["partition".into(), host.clone()],
            (Action::Partition { host }, true) => vec!["heal".into(), host.clone()],
            (Action::StaticPod { .. }, _) => bail!("a lab has no static pods"),
            (Action::Load { .. }, _) => bail!("loads go over SSH, also on a lab"),
        })
    }

    async fn fault(&self, args: Vec<String>) -> Result<()> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(["lab", "fault"])
            .args(&args)
            .args(["--name", &self.lab])
            .stdin(std::process::Stdio::null())
            .process_group(0);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .with_context(|| format!("`hakube lab fault {}` timed out", args.join(" ")))?
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        if !out.status.success() {
            bail!(
                "`hakube lab fault {} --name {}` failed: {}{}",
                args.join(" "),
                self.lab,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Injector for LabInjector {
    fn kind(&self) -> Kind {
        Kind::Lab
    }
    fn inject<'a>(&'a self, a: &'a Action, hold: Duration) -> BoxFut<'a, Result<()>> {
        if matches!(a, Action::Load { .. }) {
            return self.ssh.inject(a, hold);
        }
        Box::pin(async move { self.fault(Self::args(a, false)?).await })
    }
    fn restore<'a>(&'a self, a: &'a Action) -> BoxFut<'a, Result<()>> {
        if matches!(a, Action::Load { .. }) {
            return self.ssh.restore(a);
        }
        Box::pin(async move { self.fault(Self::args(a, true)?).await })
    }
    fn by_hand(&self, a: &Action) -> String {
        if matches!(a, Action::Load { .. }) {
            return self.ssh.by_hand(a);
        }
        match Self::args(a, true) {
            Ok(args) => format!("hakube lab fault {} --name {}", args.join(" "), self.lab),
            Err(e) => e.to_string(),
        }
    }
}

/// Where the SSH injector keeps its dead-man switches on a host.
const RUN_DIR: &str = "/run/hakube-drill";
const PARTITION_TABLE: &str = "hakube_drill_partition";
const MANIFESTS: &str = "/etc/kubernetes/manifests";
const PARKED: &str = "/etc/kubernetes/hakube-drill";
/// A dead-man switch restores the fault on the host itself this long after the planned hold,
/// in case the drill (or the network between it and the host) dies before it restores.
pub const DEADMAN_MARGIN: Duration = Duration::from_secs(60);

/// Real hosts over SSH. Every fault also leaves a dead-man switch on the host (a detached
/// `sleep N; restore` in its own session) that the normal restore cancels. A partition keeps
/// the operator's own SSH connection open (the address and port of `$SSH_CLIENT`), so that the
/// drill can still restore it over SSH.
pub struct SshInjector {
    c: Cluster,
    sessions: tokio::sync::Mutex<BTreeMap<String, Arc<Ssh>>>,
}

impl SshInjector {
    pub fn new(c: &Cluster) -> SshInjector {
        SshInjector {
            c: c.clone(),
            sessions: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    async fn session(&self, host: &str, fresh: bool) -> Result<Arc<Ssh>> {
        let mut s = self.sessions.lock().await;
        if !fresh && let Some(t) = s.get(host) {
            return Ok(t.clone());
        }
        let h = self
            .c
            .host(host)
            .with_context(|| format!("no host {host} in the spec"))?;
        let t = Arc::new(Ssh::connect(h, &self.c.base_dir, Duration::from_secs(10)).await?);
        s.insert(host.to_string(), t.clone());
        Ok(t)
    }

    /// Run a script on the host; on a broken session, connect again once.
    async fn run(&self, host: &str, script: &str, display: &str) -> Result<()> {
        let t = self.session(host, false).await?;
        let first = transport::run(
            t.as_ref() as &dyn Transport,
            script,
            display,
            Duration::from_secs(60),
        )
        .await;
        match first {
            Ok(_) => Ok(()),
            Err(e) if e.is_session() => {
                let t = self.session(host, true).await?;
                transport::run(
                    t.as_ref() as &dyn Transport,
                    script,
                    display,
                    Duration::from_secs(60),
                )
                .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn id(a: &Action) -> String {
    match a {
        Action::Stop { service, .. } => format!("stop-{service}"),
        Action::StaticPod { pod, .. } => format!("pod-{pod}"),
        Action::Partition { .. } => "partition".into(),
        Action::Load { load, .. } => match load {
            Load::Cpu => "load-cpu".into(),
            Load::Disk { .. } => "load-disk".into(),
            Load::Jitter => "load-jitter".into(),
        },
    }
}

/// Where the disk load writes: beside etcd's data directory (same file system), or /var/tmp.
fn disk_load_file(c: &Cluster, etcd: bool) -> String {
    let dir = if etcd {
        std::path::Path::new(&c.etcd.data_dir)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/var/tmp".into())
    } else {
        "/var/tmp".into()
    };
    format!("{dir}/.hakube-soak-fsync")
}

/// The interface that carries `addr`, in shell.
fn iface_of(addr: &str) -> String {
    format!(
        "dev=$(ip -o -4 addr show | awk -v a={} '{{split($4, p, \"/\"); if (p[1] == a) {{print $2; exit}}}}')\n",
        quote(addr)
    )
}

/// The shell that undoes `a` on its host (idempotent).
pub fn restore_script(c: &Cluster, a: &Action) -> String {
    match a {
        Action::Load { host, load } => {
            let mut s = format!(
                "f={RUN_DIR}/{id}.pgid; if [ -f $f ]; then kill -TERM -$(cat $f) 2>/dev/null || true; rm -f $f; fi\n",
                id = id(a)
            );
            match load {
                Load::Cpu => {}
                Load::Disk { etcd } => s.push_str(&format!("rm -f {}\n", disk_load_file(c, *etcd))),
                Load::Jitter => {
                    let addr = c
                        .host(host)
                        .map(|h| h.address.to_string())
                        .unwrap_or_default();
                    s.push_str(&iface_of(&addr));
                    s.push_str("if [ -n \"$dev\" ] && tc qdisc show dev \"$dev\" 2>/dev/null | grep -q netem; then tc qdisc del dev \"$dev\" root; fi\n");
                }
            }
            s
        }
        Action::Stop { service, .. } => format!("systemctl start {}", quote(service)),
        Action::StaticPod { pod, .. } => format!(
            "if [ -f {PARKED}/{pod}.yaml ]; then mv -f {PARKED}/{pod}.yaml {MANIFESTS}/{pod}.yaml; fi",
            pod = pod
        ),
        Action::Partition { .. } => {
            format!("nft delete table inet {PARTITION_TABLE} 2>/dev/null || true")
        }
    }
}

/// Start a detached `sleep SECS; restore` in its own session; its PID goes to a file that
/// [`cancel_deadman`] reads.
fn deadman(c: &Cluster, a: &Action, secs: u64) -> String {
    let body = format!("sleep {secs}; {}", restore_script(c, a));
    format!(
        "mkdir -p {RUN_DIR}\nnohup setsid sh -c {} >/dev/null 2>&1 </dev/null &\necho $! > {RUN_DIR}/{}.pid\n",
        quote(&body),
        id(a)
    )
}

fn cancel_deadman(a: &Action) -> String {
    let f = format!("{RUN_DIR}/{}.pid", id(a));
    format!(
        "if [ -f {f} ]; then p=$(cat {f}); kill -TERM -$p 2>/dev/null || kill -TERM $p 2>/dev/null || true; rm -f {f}; fi\n"
    )
}

/// The shell that injects `a` on its host, dead-man switch first.
pub fn inject_script(c: &Cluster, a: &Action, hold: Duration) -> String {
    let secs = (hold + DEADMAN_MARGIN).as_secs();
    let mut s = String::from("set -e\n");
    match a {
        Action::Load { host, load } => {
            // Each load runs in a session of its own (its PGID kept for the restore) and ends
            // by itself with the dead-man switch's deadline.
            let body = match load {
                // No `timeout` here: it moves its child to a process group of its own, out of
                // reach of the restore's group kill. The dead-man switch ends them instead.
                Load::Cpu => {
                    ": hakube-soak; i=0; n=$((2 * $(nproc))); while [ $i -lt $n ]; do (while :; do :; done) & i=$((i + 1)); done; wait".to_string()
                }
                Load::Disk { etcd } => format!(
                    ": hakube-soak; while :; do dd if=/dev/zero of={f} bs=64k count=16 oflag=dsync conv=fsync 2>/dev/null; done",
                    f = disk_load_file(c, *etcd)
                ),
                Load::Jitter => {
                    let addr = c.host(host).map(|h| h.address.to_string()).unwrap_or_default();
                    s.push_str(&iface_of(&addr));
                    s.push_str(&format!(
                        "[ -n \"$dev\" ] || {{ echo 'no interface carries {addr}' >&2; exit 1; }}\n\
                         command -v tc >/dev/null || {{ echo 'tc is missing (apt-get install iproute2)' >&2; exit 1; }}\n"
                    ));
                    s.push_str(&deadman(c, a, secs));
                    s.push_str(
                        "tc qdisc replace dev \"$dev\" root netem delay 50ms 20ms distribution normal 2>/tmp/.hakube-netem.err || { echo \"netem is not available here: $(cat /tmp/.hakube-netem.err)\" >&2; exit 1; }\n",
                    );
                    return s;
                }
            };
            s.push_str(&deadman(c, a, secs));
            s.push_str(&format!(
                "mkdir -p {RUN_DIR}\nnohup setsid sh -c {} >/dev/null 2>&1 </dev/null &\necho $! > {RUN_DIR}/{}.pgid\n",
                quote(&body),
                id(a)
            ));
        }
        Action::Stop { service, .. } => {
            s.push_str(&deadman(c, a, secs));
            s.push_str(&format!("systemctl stop {}\n", quote(service)));
        }
        Action::StaticPod { pod, .. } => {
            s.push_str(&format!(
                "[ -f {MANIFESTS}/{pod}.yaml ] || {{ echo 'no static pod manifest {MANIFESTS}/{pod}.yaml' >&2; exit 1; }}\n"
            ));
            s.push_str(&deadman(c, a, secs));
            s.push_str(&format!(
                "mkdir -p {PARKED}\nmv -f {MANIFESTS}/{pod}.yaml {PARKED}/{pod}.yaml\n"
            ));
        }
        Action::Partition { .. } => {
            // The operator's address and the SSH port, from the session's environment (looked
            // up the process tree, since sudo drops it).
            s.push_str(concat!(
                "command -v nft >/dev/null || { echo 'nft is missing (apt-get install nftables)' >&2; exit 1; }\n",
                "op=''; p=$$\n",
                "while [ -z \"$op\" ] && [ \"${p:-0}\" -gt 1 ]; do\n",
                "  op=$(tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | sed -n 's/^SSH_CLIENT=//p' || true)\n",
                "  p=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$p/status 2>/dev/null || echo 0)\n",
                "done\n",
                "set -- $op\n",
                "[ -n \"${1:-}\" ] && [ -n \"${3:-}\" ] || { echo 'cannot find SSH_CLIENT: refusing to cut off the SSH session' >&2; exit 1; }\n",
                "case $1 in *:*) fam=ip6;; *) fam=ip;; esac\n",
            ));
            s.push_str(&deadman(c, a, secs));
            s.push_str(&format!(
                "nft -f - <<EOF\n\
                 table inet {PARTITION_TABLE} {{\n\
                 \x20 chain input {{ type filter hook input priority -310; policy drop; iif \"lo\" accept; $fam saddr $1 tcp dport $3 accept; }}\n\
                 \x20 chain output {{ type filter hook output priority -310; policy drop; oif \"lo\" accept; $fam daddr $1 tcp sport $3 accept; }}\n\
                 }}\nEOF\n"
            ));
        }
    }
    s
}

impl Injector for SshInjector {
    fn kind(&self) -> Kind {
        Kind::Ssh
    }
    fn inject<'a>(&'a self, a: &'a Action, hold: Duration) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            self.run(a.host(), &inject_script(&self.c, a, hold), &a.describe())
                .await
        })
    }
    fn restore<'a>(&'a self, a: &'a Action) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let script = format!("{}{}", cancel_deadman(a), restore_script(&self.c, a));
            self.run(a.host(), &script, &a.undo()).await
        })
    }
    fn by_hand(&self, a: &Action) -> String {
        format!("ssh {} {}", a.host(), quote(&restore_script(&self.c, a)))
    }
}

/// Holds what was injected and restores it: explicitly with [`Guard::restore`], and otherwise
/// when dropped (on a thread of its own with its own runtime, so it works during a panic too).
pub struct Guard {
    inj: Arc<dyn Injector>,
    armed: Vec<Action>,
    /// Optional faults the hosts could not take, with why.
    pub skipped: Vec<String>,
}

/// How often a restore is tried before the drill gives up and says how to do it by hand.
const RESTORE_TRIES: u32 = 3;

impl Guard {
    pub fn new(inj: Arc<dyn Injector>) -> Guard {
        Guard {
            inj,
            armed: vec![],
            skipped: vec![],
        }
    }

    /// Inject every action. Each is armed before it is tried, so a half-done one is restored.
    pub async fn inject(&mut self, actions: &[Action], hold: Duration) -> Result<()> {
        for a in actions {
            self.armed.push(a.clone());
            match self.inj.inject(a, hold).await {
                Err(e) if a.optional() => self
                    .skipped
                    .push(format!("skipped: {}: {e:#}", a.describe())),
                r => r?,
            }
        }
        Ok(())
    }

    pub fn is_armed(&self) -> bool {
        !self.armed.is_empty()
    }

    /// Restore everything, last first. Errors carry the command to run by hand.
    pub async fn restore(&mut self) -> Result<()> {
        let r = restore_all(self.inj.as_ref(), &self.armed).await;
        self.armed.clear();
        r
    }
}

async fn restore_all(inj: &dyn Injector, actions: &[Action]) -> Result<()> {
    let mut failed = Vec::new();
    for a in actions.iter().rev() {
        let mut last = None;
        for attempt in 0..RESTORE_TRIES {
            match inj.restore(a).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            if attempt + 1 < RESTORE_TRIES {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt + 1))).await;
            }
        }
        if let Some(e) = last {
            failed.push(format!(
                "could not {}: {e:#}\n  help: restore it by hand: {}",
                a.undo(),
                inj.by_hand(a)
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("\n"))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed.is_empty() {
            return;
        }
        let actions = std::mem::take(&mut self.armed);
        let inj = self.inj.clone();
        eprintln!(
            "drill: restoring after an unexpected exit: {}",
            actions
                .iter()
                .map(Action::undo)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let r = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(restore_all(inj.as_ref(), &actions))
        })
        .join();
        match r {
            Ok(Ok(())) => eprintln!("drill: restored"),
            Ok(Err(e)) => eprintln!("drill: {e:#}"),
            Err(_) => eprintln!("drill: the restore thread panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records calls; fails the first `fail` restores.
    struct Fake {
        log: Mutex<Vec<String>>,
        fail: Mutex<u32>,
    }

    impl Injector for Fake {
        fn kind(&self) -> Kind {
            Kind::Lab
        }
        fn inject<'a>(&'a self, a: &'a Action, _: Duration) -> BoxFut<'a, Result<()>> {
            Box::pin(async move {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("inject {}", a.host()));
                if a.host() == "bad" {
                    bail!("injection failed half way");
                }
                Ok(())
            })
        }
        fn restore<'a>(&'a self, a: &'a Action) -> BoxFut<'a, Result<()>> {
            Box::pin(async move {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("restore {}", a.host()));
                let mut f = self.fail.lock().unwrap();
                if *f > 0 {
                    *f -= 1;
                    bail!("flaky");
                }
                Ok(())
            })
        }
        fn by_hand(&self, a: &Action) -> String {
            format!("fix {}", a.host())
        }
    }

    fn fake(fail: u32) -> Arc<Fake> {
        Arc::new(Fake {
            log: Mutex::new(vec![]),
            fail: Mutex::new(fail),
        })
    }

    fn part(h: &str) -> Action {
        Action::Partition { host: h.into() }
    }

    #[test]
    fn dropping_the_guard_restores_even_a_half_done_injection() {
        let f = fake(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        {
            let mut g = Guard::new(f.clone());
            let r = rt.block_on(g.inject(&[part("a"), part("bad"), part("c")], Duration::ZERO));
            assert!(r.is_err());
        }
        assert_eq!(
            *f.log.lock().unwrap(),
            ["inject a", "inject bad", "restore bad", "restore a"]
        );
    }

    #[test]
    fn restore_retries_then_says_how_to_fix_it_by_hand() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let f = fake(1);
        let mut g = Guard::new(f.clone());
        rt.block_on(g.inject(&[part("a")], Duration::ZERO)).unwrap();
        rt.block_on(g.restore()).unwrap();
        assert!(!g.is_armed());
        assert_eq!(f.log.lock().unwrap().len(), 3);
        let f = fake(10);
        let mut g = Guard::new(f.clone());
        rt.block_on(g.inject(&[part("a")], Duration::ZERO)).unwrap();
        let e = rt.block_on(g.restore()).unwrap_err().to_string();
        assert!(e.contains("could not heal a") && e.contains("fix a"), "{e}");
    }

    fn cluster() -> Cluster {
        let y = "apiVersion: hakube.io/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  hosts:\n    - {name: lb1, address: 10.0.0.11, roles: [loadbalancer]}\n    - {name: lb2, address: 10.0.0.12, roles: [loadbalancer]}\n    - {name: master2, address: 10.0.0.102, roles: [control-plane]}\n  networks: {management: 10.0.0.0/24}\n  loadBalancer: {vip: 10.0.0.100}\n  kubernetes: {bootstrap: lab}\n";
        crate::spec::load_str(y, "cluster.yaml", std::path::Path::new("/tmp"))
            .cluster
            .expect("valid spec")
    }

    /// `sh -n`: the shell parses it.
    fn parses(script: &str) {
        let o = std::process::Command::new("sh")
            .args(["-n", "-c", script])
            .output()
            .expect("sh");
        assert!(
            o.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[test]
    fn loads_start_after_their_deadman_switch_and_stop_by_process_group() {
        let c = cluster();
        for (host, load) in [
            ("lb1", Load::Cpu),
            ("master2", Load::Disk { etcd: true }),
            ("master2", Load::Jitter),
        ] {
            let a = Action::Load {
                host: host.into(),
                load,
            };
            let s = inject_script(&c, &a, Duration::from_secs(60));
            parses(&s);
            let r = restore_script(&c, &a);
            parses(&r);
            // The dead-man switch restores 60 s after the hold.
            assert!(s.contains("sleep 120; "), "{s}");
            match load {
                Load::Cpu => {
                    assert!(s.contains("n=$((2 * $(nproc)))") && !s.contains("timeout"));
                    assert!(s.find("setsid").unwrap() < s.rfind("load-cpu.pgid").unwrap());
                    assert!(r.contains("kill -TERM -$(cat $f)"), "{r}");
                }
                Load::Disk { .. } => {
                    assert!(s.contains("of=/var/lib/.hakube-soak-fsync"), "{s}");
                    assert!(r.contains("rm -f /var/lib/.hakube-soak-fsync"), "{r}");
                }
                Load::Jitter => {
                    assert!(s.contains("a='10.0.0.102'"), "{s}");
                    assert!(s.contains("netem delay 50ms 20ms"), "{s}");
                    assert!(r.contains("grep -q netem"), "{r}");
                }
            }
        }
        assert!(
            Action::Load {
                host: "lb1".into(),
                load: Load::Jitter
            }
            .optional()
        );
        assert!(!part("lb1").optional());
    }

    #[test]
    fn scripts_leave_a_deadman_switch_and_keep_ssh_open() {
        let c = cluster();
        let a = part("master2");
        let s = inject_script(&c, &a, Duration::from_secs(5));
        assert!(s.contains("sleep 65; nft delete table inet hakube_drill_partition"));
        assert!(s.contains("$fam saddr $1 tcp dport $3 accept"));
        // The dead-man switch is in place before anything is dropped.
        assert!(s.find("setsid").unwrap() < s.find("nft -f -").unwrap());
        let stop = Action::Stop {
            host: "lb1".into(),
            service: "haproxy".into(),
        };
        assert!(inject_script(&c, &stop, Duration::ZERO).ends_with("systemctl stop 'haproxy'\n"));
        assert_eq!(restore_script(&c, &stop), "systemctl start 'haproxy'");
    }
}

//! Each phase through the scripted [`Fake`] transport, without root or a lab: what it runs on a
//! fresh host, that a converged host costs nothing, and what a failing command does.

use crate::apply::ctx::Found;
use crate::apply::facts::Facts;
use crate::apply::report::Recorder;
use crate::apply::{Ctx, Options, Phase, files, prefetch_hashes};
use crate::spec::Cluster;
use crate::state::State;
use crate::transport::Transport;
use crate::transport::fake::Fake;
use std::collections::BTreeMap;
use std::sync::Arc;

const SEED: &str = include_str!("../../../examples/seed.yaml");

struct World {
    hosts: BTreeMap<String, Arc<Fake>>,
    facts: BTreeMap<String, Facts>,
    dir: tempfile::TempDir,
    spec: String,
}

impl World {
    /// Every host of the runbook's spec, fresh: nothing installed, nothing running.
    fn fresh() -> World {
        Self::with_spec(|_| SEED.to_string())
    }

    /// Fresh hosts of the spec that `spec` writes (given the spec's folder).
    fn with_spec(spec: impl FnOnce(&std::path::Path) -> String) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec(dir.path());
        let c = cluster(&spec, dir.path());
        let mut hosts = BTreeMap::new();
        let mut facts = BTreeMap::new();
        for h in &c.hosts {
            hosts.insert(h.name.clone(), Arc::new(Fake::new(&h.name)));
            facts.insert(h.name.clone(), Facts::default());
        }
        World {
            hosts,
            facts,
            dir,
            spec,
        }
    }

    fn host(&self, n: &str) -> &Fake {
        &self.hosts[n]
    }

    /// As a host is after a successful apply: every wanted file in place, services running.
    fn converge(&mut self, c: &Cluster, files: &[crate::render::RenderedFile]) {
        for f in files {
            if let Some(h) = self.hosts.get(&f.host) {
                h.put(&f.path, f.data());
            }
        }
        for h in &c.hosts {
            let f = self.facts.get_mut(&h.name).expect("facts");
            for b in [
                "haproxy",
                "keepalived",
                "curl",
                "gpg",
                "kubeadm",
                "containerd",
            ] {
                f.binaries.insert(b.into(), format!("/usr/bin/{b}"));
            }
            for s in [
                "haproxy",
                "keepalived",
                "etcd",
                "hakube-lab-apiserver",
                "containerd",
                "kubelet",
            ] {
                f.services.insert(s.into(), (true, true));
            }
            f.kubeadm_done = true;
            f.etcd_data = true;
        }
    }

    async fn ctx(&self, dry_run: bool) -> (Ctx, Arc<Recorder>) {
        let c = cluster(&self.spec, self.dir.path());
        // Kept in the temporary folder: every context sees the same CAs and secrets.
        let state = State::open_or_init(&c).expect("state");
        let files = files::desired(&c, &state, None).expect("files");
        let hosts: BTreeMap<String, Arc<dyn Transport>> = self
            .hosts
            .iter()
            .map(|(n, f)| (n.clone(), f.clone() as Arc<dyn Transport>))
            .collect();
        let hashes = prefetch_hashes(&hosts, &files, 4).await.expect("hashes");
        let rec = Arc::new(Recorder::default());
        let opts = Options {
            dry_run,
            ..Options::default()
        };
        let found = Found {
            facts: self.facts.clone(),
            hashes,
        };
        let ctx = Ctx::new(c, opts, hosts, found, files, state, rec.clone());
        (ctx, rec)
    }
}

fn cluster(spec: &str, base: &std::path::Path) -> Cluster {
    let loaded = crate::spec::load_str(spec, "cluster.yaml", base);
    loaded.cluster.expect("the spec is valid")
}

/// What `kubeadm init` leaves on the first control plane that apply reads back.
fn kubeadm_initialised(w: &World) {
    w.host("master1").put(
        "/etc/kubernetes/admin.conf",
        b"apiVersion: v1\nclusters:\n- cluster:\n    server: https://10.1.1.101:6443\n  name: k\n",
    );
}

/// The commands a host saw reported, in order: `host|message`.
fn commands(rec: &Recorder) -> Vec<String> {
    rec.lines()
        .iter()
        .filter_map(|l| {
            let p: Vec<&str> = l.splitn(4, '|').collect();
            (p[2] == "Command").then(|| format!("{}|{}", p[1], p[3]))
        })
        .collect()
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} missing from:\n{}", lines.join("\n")))
}

async fn run(p: &dyn Phase, ctx: &Ctx) -> anyhow::Result<()> {
    p.run(ctx).await
}

// --- prepare -------------------------------------------------------------------------------

#[tokio::test]
async fn prepare_installs_pinned_packages_and_kernel_settings_on_a_fresh_host() {
    let mut w = World::fresh();
    w.facts.get_mut("worker1").expect("w1").swap_on = true;
    let (ctx, rec) = w.ctx(false).await;
    run(&super::prepare::Prepare, &ctx).await.expect("prepare");
    let cmds = commands(&rec);
    let base = position(&cmds, "worker1|apt-get install -y curl gpg ca-certificates");
    let key = position(
        &cmds,
        "worker1|fetch https://pkgs.k8s.io/core:/stable:/v1.37/deb/Release.key, check its fingerprint is DE15B14486CD377B9E876E1A234654DA9A296436",
    );
    let update = position(&cmds, "worker1|apt-get update");
    let containerd = position(&cmds, "worker1|apt-get install -y containerd");
    let runtime = position(&cmds, "worker1|systemctl enable --now containerd");
    let apt = position(
        &cmds,
        "worker1|apt-get install -y kubelet=1.37.0-* kubeadm=1.37.0-* kubectl=1.37.0-* && apt-mark hold kubelet kubeadm kubectl",
    );
    let kubelet = position(&cmds, "worker1|systemctl enable kubelet");
    let modprobe = position(&cmds, "worker1|modprobe -a overlay br_netfilter");
    let sysctl = position(
        &cmds,
        "worker1|sysctl -p /etc/sysctl.d/90-hakube-kubernetes.conf",
    );
    let swap = position(&cmds, "worker1|swapoff -a");
    let order = [
        base, key, update, containerd, runtime, apt, kubelet, modprobe, sysctl, swap,
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{cmds:?}");
    position(&cmds, "lb1|apt-get install -y haproxy keepalived curl");
    assert_eq!(
        w.host("worker1").written(),
        vec![
            "/etc/apt/sources.list.d/hakube-kubernetes.list",
            "/etc/containerd/config.toml",
            "/etc/crictl.yaml",
            "/etc/modules-load.d/hakube-kubernetes.conf",
            "/etc/sysctl.d/90-hakube-kubernetes.conf"
        ]
    );
    let list = w
        .host("worker1")
        .file("/etc/apt/sources.list.d/hakube-kubernetes.list")
        .expect("list");
    assert!(String::from_utf8_lossy(&list).contains(
        "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.37/deb/ /"
    ));
    assert!(
        w.host("lb1")
            .ran()
            .iter()
            .any(|s| s.contains("apt-get install -y 'haproxy' 'keepalived' 'curl'")),
        "the script carries the quoted packages"
    );
}

#[tokio::test]
async fn prepare_does_nothing_on_a_converged_host() {
    let mut w = World::fresh();
    let (ctx, _) = w.ctx(false).await;
    let files = ctx.files.clone();
    let c = ctx.c.clone();
    w.converge(&c, &files);
    let (ctx, rec) = w.ctx(false).await;
    run(&super::prepare::Prepare, &ctx).await.expect("prepare");
    assert_eq!(commands(&rec), Vec::<String>::new());
    for h in w.hosts.values() {
        assert_eq!(h.written(), Vec::<String>::new(), "{}", h.host());
    }
}

#[tokio::test]
async fn prepare_stops_on_a_failing_install_and_names_the_host_and_command() {
    let w = World::fresh();
    w.host("worker2").on("apt-get install", 100, "");
    let (ctx, _) = w.ctx(false).await;
    let e = run(&super::prepare::Prepare, &ctx)
        .await
        .expect_err("apt-get failed");
    let msg = format!("{e:#}");
    assert!(msg.contains("worker2"), "{msg}");
    assert!(msg.contains("apt-get install"), "{msg}");
    assert!(
        !w.host("worker2")
            .ran()
            .iter()
            .any(|s| s.contains("modprobe")),
        "nothing after the failed install"
    );
}

// --- load balancers ------------------------------------------------------------------------

fn vip_on(w: &World, holder: &str) {
    for lb in ["lb1", "lb2"] {
        let mut out = "2: eth0    inet 10.1.1.11/24 brd 10.1.1.255 scope global eth0\n".to_string();
        if lb == holder {
            out.push_str("2: eth0    inet 10.1.1.100/24 scope global secondary eth0\n");
        }
        w.host(lb).on("ip -o addr show", 0, &out);
    }
}

#[tokio::test]
async fn load_balancers_validate_then_start_one_at_a_time_on_fresh_hosts() {
    let w = World::fresh();
    vip_on(&w, "lb1");
    for lb in ["lb1", "lb2"] {
        w.host(lb).on("test -d /run/haproxy", 1, "");
    }
    let (ctx, rec) = w.ctx(false).await;
    run(&super::load_balancers::LoadBalancers, &ctx)
        .await
        .expect("lbs");
    let cmds = commands(&rec);
    let check1 = position(&cmds, "lb1|haproxy -c /etc/haproxy/haproxy.cfg");
    let start1 = position(&cmds, "lb1|systemctl enable --now haproxy");
    let ka1 = position(&cmds, "lb1|systemctl enable --now keepalived");
    let check2 = position(&cmds, "lb2|haproxy -c /etc/haproxy/haproxy.cfg");
    assert!(check1 < start1 && start1 < ka1 && ka1 < check2, "{cmds:?}");
    position(&cmds, "lb1|install -d /run/haproxy");
    let written = w.host("lb1").written();
    for p in [
        "/etc/haproxy/haproxy.cfg",
        "/etc/keepalived/keepalived.conf",
        crate::render::HAPROXY_ENV,
    ] {
        assert!(written.iter().any(|x| x == p), "{p} not in {written:?}");
    }
    assert!(
        !written.iter().any(|p| p.starts_with("/etc/sysctl.d/")),
        "kernel settings belong to prepare: {written:?}"
    );
    assert!(
        rec.lines()
            .iter()
            .any(|l| l.contains("VIP 10.1.1.100 has one holder"))
    );
}

#[tokio::test]
async fn load_balancers_touch_nothing_on_converged_hosts() {
    let mut w = World::fresh();
    let (ctx, _) = w.ctx(false).await;
    let (files, c) = (ctx.files.clone(), ctx.c.clone());
    w.converge(&c, &files);
    vip_on(&w, "lb2");
    let (ctx, rec) = w.ctx(false).await;
    run(&super::load_balancers::LoadBalancers, &ctx)
        .await
        .expect("lbs");
    assert_eq!(commands(&rec), Vec::<String>::new());
    for lb in ["lb1", "lb2"] {
        assert_eq!(
            w.host(lb).ran(),
            vec!["ip -o addr show"],
            "{lb} only looked"
        );
    }
}

#[tokio::test]
async fn a_rejected_haproxy_config_is_rolled_back_and_nothing_reloads() {
    let w = World::fresh();
    w.host("lb1").on(
        "haproxy -c",
        0,
        "[ALERT] parsing [/etc/haproxy/haproxy.cfg:12] : unknown keyword 'bogus'",
    );
    let (ctx, _) = w.ctx(false).await;
    let e = run(&super::load_balancers::LoadBalancers, &ctx)
        .await
        .expect_err("rejected");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("lb1: haproxy -c rejected /etc/haproxy/haproxy.cfg"),
        "{msg}"
    );
    assert!(msg.contains("unknown keyword 'bogus'"), "{msg}");
    let ran = w.host("lb1").ran();
    assert!(
        ran.iter().any(|s| s.contains(".hakube-prev")),
        "rolled back: {ran:?}"
    );
    assert!(
        !ran.iter()
            .any(|s| s.contains("systemctl") && !s.contains("daemon-reload")),
        "no unit was started or reloaded: {ran:?}"
    );
    assert!(w.host("lb2").ran().is_empty(), "lb2 was never touched");
}

// --- etcd ----------------------------------------------------------------------------------

#[tokio::test]
async fn etcd_dry_run_on_fresh_hosts_forms_the_cluster_and_writes_nothing() {
    let w = World::fresh();
    let (ctx, rec) = w.ctx(true).await;
    run(&super::etcd::Etcd, &ctx).await.expect("etcd");
    let lines = rec.lines();
    for m in ["master1", "master2", "master3"] {
        position(
            &lines,
            &format!("{m}|Change|would create /etc/etcd/etcd.env"),
        );
        position(
            &lines,
            &format!("{m}|Command|would run: systemctl enable --now etcd"),
        );
        assert!(w.host(m).written().is_empty());
        assert!(w.host(m).ran().is_empty(), "{:?}", w.host(m).ran());
    }
    position(
        &lines,
        "Wait|would wait for every etcd member to serve a linearizable read",
    );
}

// --- control plane and workers (kubeadm) -----------------------------------------------------

const SECRETS: &str = "c0ffee-key\nabcdef.0123456789abcdef\nsha256:1234\n";

#[tokio::test]
async fn kubeadm_control_planes_init_then_join_one_at_a_time_with_secrets_kept_out_of_logs() {
    let w = World::fresh();
    w.host("master1").on("upload-certs", 0, SECRETS);
    kubeadm_initialised(&w);
    for m in ["master2", "master3"] {
        w.host(m).on("curl -sfk", 0, "ok");
    }
    let (ctx, rec) = w.ctx(false).await;
    run(&super::control_plane::ControlPlane, &ctx)
        .await
        .expect("control plane");
    let cmds = commands(&rec);
    let init = position(&cmds, "master1|kubeadm init --config");
    let up = position(&cmds, "master1|kubeadm init phase upload-certs");
    let j2 = position(&cmds, "master2|kubeadm join --config");
    let j3 = position(&cmds, "master3|kubeadm join --config");
    assert!(init < up && up < j2 && j2 < j3, "{cmds:?}");
    let ok2 = position(&rec.lines(), "master2|Ok|");
    let join3 = position(&rec.lines(), "master3|Command|kubeadm join");
    assert!(ok2 < join3, "master3 waits for master2's /readyz");
    let admin = ctx.c.base_dir.join("ha-cluster-admin.conf");
    let text = std::fs::read_to_string(&admin).expect("admin kubeconfig next to the spec");
    assert!(text.contains("server: https://10.1.1.100:6443"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&admin)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let joined = w.host("master2").ran().join("\n");
    assert!(joined.contains("abcdef.0123456789abcdef") && joined.contains("c0ffee-key"));
    assert!(
        !rec.lines()
            .iter()
            .any(|l| l.contains("abcdef.0123") || l.contains("c0ffee")),
        "no secret reaches the reporter"
    );
    assert!(
        w.hosts
            .keys()
            .filter(|h| h.starts_with("worker"))
            .all(|h| w.host(h).ran().is_empty()),
        "workers are the workers phase's"
    );
}

#[tokio::test]
async fn kubeadm_join_secrets_that_cannot_be_read_stop_before_any_join() {
    let w = World::fresh();
    w.host("master1").on("upload-certs", 0, "only-one-line\n");
    kubeadm_initialised(&w);
    let (ctx, _) = w.ctx(false).await;
    let e = run(&super::control_plane::ControlPlane, &ctx)
        .await
        .expect_err("bad secrets");
    assert!(format!("{e:#}").contains("master1: could not read the join secrets"));
    assert!(
        !w.host("master2")
            .ran()
            .iter()
            .any(|s| s.contains("kubeadm join"))
    );
}

#[tokio::test]
async fn workers_get_their_join_file_then_join_with_a_fresh_token() {
    let w = World::fresh();
    w.host("master1").on(
        "kubeadm token create",
        0,
        "abcdef.0123456789abcdef\nsha256:1234\n",
    );
    let (ctx, rec) = w.ctx(false).await;
    run(&super::workers::Workers, &ctx).await.expect("workers");
    for n in ["worker1", "worker2", "worker3"] {
        assert_eq!(
            w.host(n).written(),
            vec!["/etc/kubernetes/hakube/kubeadm-join.yaml"]
        );
        let ran = w.host(n).ran().join("\n");
        assert!(ran.contains("kubeadm join --config"), "{ran}");
        assert!(ran.contains("abcdef.0123456789abcdef"), "{ran}");
        assert!(!ran.contains("upload-certs"));
    }
    let cmds = commands(&rec);
    let token = position(&cmds, "master1|kubeadm token create");
    assert!(token < position(&cmds, "worker1|kubeadm join"));
    assert!(
        !w.host("master1")
            .ran()
            .iter()
            .any(|s| s.contains("upload-certs"))
    );
}

#[tokio::test]
async fn workers_that_joined_cost_nothing() {
    let mut w = World::fresh();
    let (ctx, _) = w.ctx(false).await;
    let (files, c) = (ctx.files.clone(), ctx.c.clone());
    w.converge(&c, &files);
    let (ctx, rec) = w.ctx(false).await;
    run(&super::workers::Workers, &ctx).await.expect("workers");
    assert_eq!(commands(&rec), Vec::<String>::new());
    assert!(w.host("master1").ran().is_empty());
}

#[tokio::test]
async fn kubeadm_dry_run_runs_nothing_and_lists_the_sequence() {
    let w = World::fresh();
    let (ctx, rec) = w.ctx(true).await;
    run(&super::control_plane::ControlPlane, &ctx)
        .await
        .expect("control plane");
    run(&super::workers::Workers, &ctx).await.expect("workers");
    let cmds = commands(&rec);
    let a = position(&cmds, "master1|would run: kubeadm init --config");
    let b = position(&cmds, "master2|would run: kubeadm join");
    let c = position(&cmds, "master3|would run: kubeadm join");
    let d = position(&cmds, "worker1|would run: kubeadm join");
    assert!(a < b && b < c && c < d, "{cmds:?}");
    for h in w.hosts.values() {
        assert!(h.ran().is_empty(), "{} ran {:?}", h.host(), h.ran());
        assert!(h.written().is_empty());
    }
}

// --- a bare host to a kubeadm cluster, in dry-run ----------------------------------------------

/// The runbook's spec with a local flannel-style manifest for the pod network.
fn with_cni(dir: &std::path::Path) -> String {
    let manifest =
        "kind: ConfigMap\ndata:\n  net-conf.json: |\n    {\"Network\": \"10.244.0.0/16\"}\n";
    std::fs::write(dir.join("pod-network.yaml"), manifest).expect("manifest");
    let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest.as_bytes()));
    SEED.replace(
        "    bootstrap: kubeadm\n",
        &format!(
            "    bootstrap: kubeadm\n    cni:\n      name: flannel\n      version: v0.25.6\n      manifest: pod-network.yaml\n      sha256: {sum}\n"
        ),
    )
}

#[tokio::test]
async fn a_bare_host_dry_run_lists_repository_runtime_packages_kubelet_init_cni_kubeconfig_then_joins()
 {
    let w = World::with_spec(with_cni);
    assert!(w.spec.contains("cni:"), "the seed spec changed shape");
    let (ctx, rec) = w.ctx(true).await;
    for p in [
        &super::prepare::Prepare as &dyn Phase,
        &super::control_plane::ControlPlane,
        &super::workers::Workers,
    ] {
        if let Err(e) = run(p, &ctx).await {
            panic!("{}: {e:#}", p.name());
        }
    }
    let lines = rec.lines();
    let steps = [
        "master1|Change|would create /etc/apt/sources.list.d/hakube-kubernetes.list",
        "master1|Command|would run: fetch https://pkgs.k8s.io/core:/stable:/v1.37/deb/Release.key",
        "master1|Change|would create /etc/containerd/config.toml",
        "master1|Command|would run: systemctl enable --now containerd",
        "master1|Command|would run: apt-get install -y kubelet=1.37.0-*",
        "master1|Command|would run: systemctl enable kubelet",
        "master1|Wait|would wait for the container runtime's socket",
        "master1|Command|would run: kubeadm init --config",
        "master1|Command|would run: flannel v0.25.6 pod network",
        "master1|Command|would run: copy /etc/kubernetes/admin.conf to",
        "master2|Command|would run: kubeadm join",
        "master2|Wait|would wait for its API server /readyz",
        "master3|Command|would run: kubeadm join",
        "worker1|Change|would create /etc/kubernetes/hakube/kubeadm-join.yaml",
        "worker1|Command|would run: kubeadm join",
    ];
    let at: Vec<usize> = steps.iter().map(|s| position(&lines, s)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "out of order:\n{}",
        lines.join("\n")
    );
    for n in ["worker1", "worker2", "worker3"] {
        position(
            &lines,
            &format!("{n}|Change|would create /etc/kubernetes/hakube/kubeadm-join.yaml"),
        );
    }
    position(
        &lines,
        "master1|Change|would create /etc/kubernetes/hakube/cni.yaml",
    );
    for h in w.hosts.values() {
        assert!(h.written().is_empty(), "{} was written to", h.host());
    }
}

//! kubeadm's certificates through the scripted [`Fake`] transport: kubeadm's JSON read into
//! findings, and the renewal sequence per control plane (no kubeadm runs here).

use super::*;
use crate::apply::report::Recorder;
use crate::apply::{Found, Options};
use crate::state::State;
use crate::transport::fake::Fake;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `kubeadm certs check-expiration -o json` in kubeadm's format (see the module's sources);
/// the values are chosen for these tests: one expired, one inside 30 days, one externally
/// managed, super-admin.conf and the front-proxy CA missing, the rest a year or more away.
const SAMPLE: &str = include_str!("../testdata/kubeadm-check-expiration.json");
const SEED: &str = include_str!("../../../examples/seed.yaml");
const DAY: u64 = 86400;

fn by_name<'a>(v: &'a [OnHost], name: &str) -> &'a OnHost {
    v.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} missing from {v:?}"))
}

#[test]
fn kubeadms_json_is_read_as_it_is_printed() {
    let v = parse_expiration("master1", SAMPLE).expect("the sample parses");
    assert_eq!(v.len(), 14, "11 certificates and 3 CAs");
    assert!(v.iter().all(|c| c.host == "master1"));
    let admin = by_name(&v, "admin.conf");
    assert_eq!(admin.seconds_left, Some(31375000));
    assert_eq!(admin.not_after.as_deref(), Some("2027-11-30T09:12:44Z"));
    assert!(!admin.is_ca);
    let gone = by_name(&v, "super-admin.conf");
    assert!(gone.missing);
    assert_eq!((gone.seconds_left, gone.not_after.clone()), (None, None));
    assert!(by_name(&v, "etcd-ca").is_ca);
    assert!(by_name(&v, "scheduler.conf").externally_managed);
    assert_eq!(
        by_name(&v, "apiserver-kubelet-client").seconds_left,
        Some(-3600)
    );
}

#[test]
fn findings_follow_the_threshold() {
    let v = parse_expiration("master1", SAMPLE).expect("parses");
    let f = findings(&v, Duration::from_secs(30 * DAY));
    let text: Vec<String> = f
        .iter()
        .map(|f| format!("{:?}: {} / {}", f.severity, f.what, f.fix))
        .collect();
    assert_eq!(f.len(), 4, "{text:#?}");
    let find = |needle: &str| {
        f.iter()
            .find(|f| f.what.contains(needle))
            .unwrap_or_else(|| panic!("no finding about {needle}: {text:#?}"))
    };
    let expired = find("apiserver-kubelet-client on master1 expired on 2026-12-02T04:00:00Z");
    assert_eq!(expired.severity, Severity::Critical);
    assert!(
        expired.fix.contains("kubeadm certs renew all"),
        "{}",
        expired.fix
    );
    let soon = find("front-proxy-client on master1 expires");
    assert_eq!(soon.severity, Severity::Warning);
    assert!(soon.what.contains("12 days left"), "{}", soon.what);
    let ext = find("scheduler.conf on master1 expires");
    assert_eq!(ext.severity, Severity::Warning);
    assert!(ext.fix.contains("external CA"), "{}", ext.fix);
    let ca = find("front-proxy-ca on master1: kubeadm reports it missing");
    assert_eq!(ca.severity, Severity::Warning);
    // super-admin.conf exists only where `kubeadm init` ran: its absence is no finding.
    assert!(!text.iter().any(|t| t.contains("super-admin")), "{text:#?}");
    // Inside a day only the expired one and the missing CA remain.
    let f = findings(&v, Duration::from_secs(DAY));
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].severity, Severity::Critical);
}

#[tokio::test]
async fn a_garbage_answer_names_host_and_command() {
    let t = Fake::new("master2");
    t.on("check-expiration", 0, "Error: unknown flag: --output\n");
    let e = format!("{:#}", expiration(&t).await.expect_err("garbage"));
    assert!(e.contains("master2"), "{e}");
    assert!(e.contains(CHECK_EXPIRATION), "{e}");
    assert!(e.contains("unknown flag"), "{e}");

    let t = Fake::new("master3");
    t.on(
        "check-expiration",
        0,
        r#"{"kind":"UpgradePlan","apiVersion":"output.kubeadm.k8s.io/v1alpha3"}"#,
    );
    let e = format!("{:#}", expiration(&t).await.expect_err("wrong kind"));
    assert!(e.contains("master3") && e.contains("UpgradePlan"), "{e}");

    let t = Fake::new("master1");
    t.on("check-expiration", 1, "");
    let e = format!("{:#}", expiration(&t).await.expect_err("failed"));
    assert!(e.contains("master1") && e.contains(CHECK_EXPIRATION), "{e}");
}

fn client_cert_pem(days: i64) -> String {
    let mut p = rcgen::CertificateParams::new(vec!["kubernetes-admin".into()]).expect("params");
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().expect("key");
    p.self_signed(&key).expect("cert").pem()
}

#[test]
fn a_kubeconfigs_client_certificate_is_checked() {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("seed-admin.conf");
    let data = base64::engine::general_purpose::STANDARD.encode(client_cert_pem(5));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: kubernetes-admin\n  user:\n    \
             client-certificate-data: {data}\n    client-key-data: c2VjcmV0\n- name: token-user\n  user:\n    token: abc\n"
        ),
    )
    .expect("write");
    let v = kubeconfig_certs(&path, "operator").expect("reads");
    assert_eq!(v.len(), 1, "the token user has no certificate: {v:?}");
    assert!(v[0].name.ends_with("seed-admin.conf user kubernetes-admin"));
    let left = v[0].seconds_left.expect("present");
    assert!((4 * DAY as i64..=5 * DAY as i64).contains(&left), "{left}");
    let f = findings(&v, Duration::from_secs(30 * DAY));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Warning);
    assert!(f[0].fix.contains("admin.conf"), "{}", f[0].fix);
    assert!(findings(&v, Duration::from_secs(DAY)).is_empty());

    std::fs::write(
        &path,
        "users:\n- name: a\n  user:\n    client-certificate-data: '%%'\n",
    )
    .expect("write");
    let e = format!(
        "{:#}",
        kubeconfig_certs(&path, "operator").expect_err("bad")
    );
    assert!(
        e.contains("seed-admin.conf") && e.contains("not base64"),
        "{e}"
    );
}

#[tokio::test]
async fn check_reads_every_control_plane_and_names_the_one_it_cannot() {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("tmp");
    let c = cluster(dir.path());
    let data = base64::engine::general_purpose::STANDARD.encode(client_cert_pem(400));
    std::fs::write(
        crate::apply::phase::control_plane::admin_kubeconfig_path(&c),
        format!("users:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {data}\n"),
    )
    .expect("write");
    let (kubeadm, kubeconfigs, problems) = check_with(&c, |h| async move {
        let f = Fake::new(&h.name);
        match h.name.as_str() {
            "master1" => {
                f.on("check-expiration", 0, SAMPLE);
            }
            "master2" => {
                f.on("check-expiration", 0, "<html>502</html>");
            }
            _ => bail!("{}: connection refused (scripted)", h.name),
        }
        Ok(Arc::new(f) as Arc<dyn Transport>)
    })
    .await;
    assert_eq!(kubeadm.len(), 14);
    assert!(kubeadm.iter().all(|k| k.host == "master1"));
    assert_eq!(kubeconfigs.len(), 1);
    assert!(
        kubeconfigs[0]
            .seconds_left
            .is_some_and(|s| s > 399 * DAY as i64)
    );
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].what.contains("on master2 could not be read"));
    assert!(
        problems[0].what.contains(CHECK_EXPIRATION),
        "{}",
        problems[0].what
    );
    assert!(problems[1].what.contains("master3: connection refused"));
    assert!(problems.iter().all(|p| p.severity == Severity::Warning));

    // The table shows where each came from.
    let r = super::super::Report {
        kept: vec![],
        served: vec![],
        findings: findings(&kubeadm, Duration::from_secs(30 * DAY)),
        kubeadm,
        kubeconfigs,
        within_seconds: 30 * DAY,
    };
    let text = super::super::render_text(&r);
    assert!(text.contains("kubeadm on master1"), "{text}");
    assert!(text.contains("MISSING"), "{text}");
    assert!(text.contains("kubeconfig (operator)"), "{text}");
    assert!(
        text.contains("critical: apiserver-kubelet-client on master1 expired"),
        "{text}"
    );
    assert_eq!(r.exit_code(), 2);
}

struct World {
    hosts: BTreeMap<String, Arc<Fake>>,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tmp");
        let c = cluster(dir.path());
        let hosts = c
            .hosts
            .iter()
            .map(|h| (h.name.clone(), Arc::new(Fake::new(&h.name))))
            .collect();
        World { hosts, dir }
    }

    fn ctx(&self, dry_run: bool) -> (Ctx, Arc<Recorder>) {
        let c = cluster(self.dir.path());
        let state = State::open_or_init(&c).expect("state");
        let hosts = self
            .hosts
            .iter()
            .map(|(n, f)| (n.clone(), f.clone() as Arc<dyn Transport>))
            .collect();
        let rec = Arc::new(Recorder::default());
        let opts = Options {
            dry_run,
            ..Options::default()
        };
        let found = Found {
            facts: BTreeMap::new(),
            hashes: BTreeMap::new(),
        };
        let ctx = Ctx::new(c, opts, hosts, found, vec![], state, rec.clone());
        (ctx, rec)
    }
}

fn cluster(dir: &Path) -> Cluster {
    crate::spec::load_str(SEED, "cluster.yaml", dir)
        .cluster
        .expect("the seed is valid")
}

/// Every control plane's certificates a year away.
fn all_fine() -> String {
    SAMPLE
        .replace("\"residualTime\": -3600", "\"residualTime\": 31375000")
        .replace("\"residualTime\": 1036800", "\"residualTime\": 31375000")
}

/// What a control plane goes through, as the reporter says it (`host|kind|message`).
fn sequence(h: &Host, c: &Cluster, first: bool) -> Vec<String> {
    let n = &h.name;
    let pods = "kube-apiserver, kube-controller-manager, kube-scheduler";
    let m = "/etc/kubernetes/manifests";
    let out = "/etc/kubernetes/hakube/manifests-moved";
    let mut v = vec![
        format!("{n}|Info|due: apiserver-kubelet-client, front-proxy-client"),
        format!("{n}|Command|would run: kubeadm certs renew all"),
        format!(
            "{n}|Command|would run: mv {m}/kube-apiserver.yaml {m}/kube-controller-manager.yaml \
             {m}/kube-scheduler.yaml {out}/ (the kubelet stops {pods})"
        ),
        format!("{n}|Wait|would wait for the kubelet to stop {pods}"),
        format!(
            "{n}|Command|would run: mv {out}/kube-apiserver.yaml {out}/kube-controller-manager.yaml \
             {out}/kube-scheduler.yaml {m}/ (the kubelet starts {pods})"
        ),
        format!(
            "{n}|Wait|would wait for https://{}:{}/readyz = 200",
            h.address, c.kubernetes.api_server_port
        ),
        format!("{n}|Wait|would wait for every HAProxy to rate it UP"),
        format!("{n}|Wait|would wait for {pods} running again"),
    ];
    if first {
        v.push(format!(
            "{n}|Command|would run: copy /etc/kubernetes/admin.conf to {} (0600), server https://{}",
            crate::apply::phase::control_plane::admin_kubeconfig_path(c).display(),
            c.control_plane_endpoint()
        ));
    }
    v
}

fn events(rec: &Recorder) -> Vec<String> {
    rec.lines()
        .iter()
        .filter_map(|l| l.split_once('|').map(|(_, rest)| rest.to_string()))
        .collect()
}

#[tokio::test]
async fn dry_run_lists_each_control_plane_fully_before_the_next() {
    let w = World::new();
    w.hosts["master1"].on("check-expiration", 0, SAMPLE);
    w.hosts["master2"].on("check-expiration", 0, SAMPLE);
    w.hosts["master3"].on("check-expiration", 0, &all_fine());
    let (ctx, rec) = w.ctx(true);
    renew(&ctx, Some(Duration::from_secs(30 * DAY)))
        .await
        .expect("dry-run");
    let cps: Vec<&Host> = ctx.c.control_planes().collect();
    let mut want = sequence(cps[0], &ctx.c, true);
    want.extend(sequence(cps[1], &ctx.c, false));
    want.push(format!(
        "{}|Ok|no certificate kubeadm renews expires within 30days",
        cps[2].name
    ));
    assert_eq!(events(&rec), want);
    // The dry-run only read: nothing but the listing and check-expiration ran on any host.
    for (n, f) in &w.hosts {
        assert!(
            f.ran()
                .iter()
                .all(|s| *s == list_moved() || s == CHECK_EXPIRATION),
            "{n} ran {:?}",
            f.ran()
        );
    }
}

#[tokio::test]
async fn all_renews_on_every_control_plane_without_reading_first() {
    let w = World::new();
    let (ctx, rec) = w.ctx(true);
    renew(&ctx, None).await.expect("dry-run");
    let ev = events(&rec);
    let renews: Vec<&String> = ev
        .iter()
        .filter(|l| l.ends_with("would run: kubeadm certs renew all"))
        .collect();
    assert_eq!(renews.len(), 3, "{ev:#?}");
    assert_eq!(
        ev.iter()
            .filter(|l| l.contains("copy /etc/kubernetes/admin.conf"))
            .count(),
        1
    );
    assert!(
        w.hosts
            .values()
            .all(|f| f.ran().iter().all(|s| *s == list_moved()))
    );
}

#[tokio::test]
async fn a_failing_step_stops_before_the_next_control_plane() {
    let w = World::new();
    for n in ["master1", "master2", "master3"] {
        w.hosts[n].on("check-expiration", 0, SAMPLE);
    }
    w.hosts["master1"].on(RENEW_ALL, 1, "");
    let (ctx, _rec) = w.ctx(false);
    let e = format!(
        "{:#}",
        renew(&ctx, Some(Duration::from_secs(30 * DAY)))
            .await
            .expect_err("the renewal fails")
    );
    assert!(e.contains("master1") && e.contains(RENEW_ALL), "{e}");
    assert!(e.contains("master2, master3 not touched"), "{e}");
    assert_eq!(
        w.hosts["master1"].ran(),
        vec![list_moved().as_str(), CHECK_EXPIRATION, RENEW_ALL],
        "no manifest was moved"
    );
    assert!(w.hosts["master2"].ran().is_empty());
    assert!(w.hosts["master3"].ran().is_empty());
}

#[test]
fn stacked_etcd_under_kubeadm_is_restarted_with_the_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = cluster(dir.path());
    assert_eq!(static_pods(&c).len(), 3);
    c.etcd.management = EtcdManagement::Kubeadm;
    assert_eq!(static_pods(&c).last(), Some(&"etcd"));
    let op = move_out(&static_pods(&c));
    assert!(
        op.script().starts_with("set -e; install -d -m 0700 "),
        "{}",
        op.script()
    );
    assert!(
        op.script()
            .contains("'/etc/kubernetes/manifests/etcd.yaml'")
    );
    assert_eq!(
        crictl_ps(&["kube-apiserver", "etcd"]),
        "crictl ps -q --name '^(kube-apiserver|etcd)$'"
    );
}

#[tokio::test]
async fn manifests_left_out_by_an_interrupted_run_go_back_first() {
    let w = World::new();
    w.hosts["master2"].on(
        "manifests-moved",
        0,
        "kube-apiserver.yaml\nkube-scheduler.yaml\n",
    );
    for n in ["master1", "master2", "master3"] {
        w.hosts[n].on("check-expiration", 0, &all_fine());
    }
    let (ctx, rec) = w.ctx(true);
    renew(&ctx, Some(Duration::from_secs(30 * DAY)))
        .await
        .expect("dry-run");
    let h = ctx
        .c
        .hosts
        .iter()
        .find(|h| h.name == "master2")
        .expect("m2");
    let ev = events(&rec);
    let m2: Vec<&String> = ev.iter().filter(|l| l.starts_with("master2|")).collect();
    assert_eq!(
        m2,
        vec![
            "master2|Warn|kube-apiserver, kube-scheduler left in /etc/kubernetes/hakube/manifests-moved by an interrupted run; moving them back",
            "master2|Command|would run: mv /etc/kubernetes/hakube/manifests-moved/kube-apiserver.yaml /etc/kubernetes/hakube/manifests-moved/kube-scheduler.yaml /etc/kubernetes/manifests/ (the kubelet starts kube-apiserver, kube-scheduler)",
            &format!(
                "master2|Wait|would wait for https://{}:{}/readyz = 200",
                h.address, ctx.c.kubernetes.api_server_port
            ),
            "master2|Wait|would wait for every HAProxy to rate it UP",
            "master2|Wait|would wait for kube-apiserver, kube-scheduler running again",
            "master2|Ok|no certificate kubeadm renews expires within 30days",
        ]
    );
    assert!(!ev.iter().any(|l| l.contains("renew all")), "{ev:#?}");
}

#[tokio::test]
async fn with_kubeadms_etcd_the_other_members_are_gated_first_and_etcd_restarts_too() {
    let w = World::new();
    let (mut ctx, rec) = w.ctx(true);
    ctx.c.etcd.management = EtcdManagement::Kubeadm;
    renew(&ctx, None).await.expect("dry-run");
    let ev = events(&rec);
    let cps: Vec<Host> = ctx.c.control_planes().cloned().collect();
    let port = ctx.c.kubernetes.api_server_port;
    let at = |needle: &str| {
        ev.iter()
            .position(|l| l == needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from {ev:#?}"))
    };
    // master2's turn: master1 and master3 ready first, then its renewal.
    let gate = at(&format!(
        "{}|Info|etcd is kubeadm's (stacked): every other control plane must be ready before this member stops",
        cps[1].name
    ));
    let m1 = at(&format!(
        "{}|Wait|would wait for https://{}:{port}/readyz = 200",
        cps[0].name, cps[0].address
    ));
    assert!(m1 < gate, "master1's own gate comes during its turn");
    let after = &ev[gate..];
    let pos = |needle: &str| {
        after
            .iter()
            .position(|l| l == needle)
            .unwrap_or_else(|| panic!("{needle:?} missing after the gate: {after:#?}"))
    };
    let r1 = pos(&format!(
        "{}|Wait|would wait for https://{}:{port}/readyz = 200",
        cps[0].name, cps[0].address
    ));
    let r3 = pos(&format!(
        "{}|Wait|would wait for https://{}:{port}/readyz = 200",
        cps[2].name, cps[2].address
    ));
    let renew = pos(&format!(
        "{}|Command|would run: kubeadm certs renew all",
        cps[1].name
    ));
    assert!(r1 < renew && r3 < renew, "{after:#?}");
    assert!(
        ev.iter().any(|l| l.contains("/etc/kubernetes/manifests/etcd.yaml")
            && l.contains("the kubelet stops kube-apiserver, kube-controller-manager, kube-scheduler, etcd")),
        "{ev:#?}"
    );
}

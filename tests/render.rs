//! Rendering: snapshots of every file for the seed, determinism, and shape per version.

use hakube::render::{self, RenderedFile, Secrets};
use hakube::spec::{self, Cluster};
use std::path::Path;

const SEED: &str = include_str!("../examples/seed.yaml");

fn cluster(src: &str) -> Cluster {
    let l = spec::load_str(src, "cluster.yaml", Path::new("/nonexistent"));
    l.cluster
        .unwrap_or_else(|| panic!("invalid: {:?}", l.diagnostics.items))
}

fn files(src: &str) -> Vec<RenderedFile> {
    let secrets = Secrets {
        stats_password: "snapshot-password".into(),
    };
    render::render(&cluster(src), &secrets).expect("renders")
}

fn get<'a>(f: &'a [RenderedFile], host: &str, path: &str) -> &'a RenderedFile {
    f.iter()
        .find(|x| x.host == host && x.path == path)
        .unwrap_or_else(|| panic!("{host}:{path} not rendered"))
}

#[test]
fn seed_snapshots() {
    let f = files(SEED);
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for x in &f {
            let name = format!(
                "seed__{}__{}",
                x.host,
                x.path.trim_start_matches('/').replace('/', "_")
            );
            insta::assert_snapshot!(name, &x.content);
        }
    });
    // The list itself: which files, where, with which mode.
    let listing: Vec<String> = f
        .iter()
        .map(|x| format!("{:04o} {} {}", x.mode, x.host, x.path))
        .collect();
    insta::assert_snapshot!("seed__file_list", listing.join("\n"));
}

#[test]
fn rendering_is_deterministic() {
    let a = files(SEED);
    let b = files(SEED);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.host, &x.path, &x.content),
            (&y.host, &y.path, &y.content)
        );
    }
}

#[test]
fn secrets_stay_out_of_configs() {
    let f = files(SEED);
    for x in &f {
        if x.content.contains("snapshot-password") {
            assert!(
                x.secret,
                "{} {} holds the password but is not marked secret",
                x.host, x.path
            );
            assert_eq!(x.mode, 0o600, "{} {}", x.host, x.path);
        }
    }
    let cfg = &get(&f, "lb1", "/etc/haproxy/haproxy.cfg").content;
    assert!(!cfg.contains("snapshot-password"));
    assert!(!cfg.contains("admin if TRUE"));
    assert!(!cfg.contains("bind *:"), "nothing binds every interface");
    assert!(
        cfg.contains("bind 10.1.1.11:9000"),
        "stats on lb1's own address"
    );
}

#[test]
fn haproxy_checks_readyz_over_tls() {
    let f = files(SEED);
    let cfg = &get(&f, "lb2", "/etc/haproxy/haproxy.cfg").content;
    for needle in [
        "option httpchk",
        "http-check connect ssl",
        "http-check send meth GET uri /readyz",
        "http-check expect status 200",
        "verify none",
        "inter 400ms fastinter 200ms",
        "fall 2 rise 2",
        "on-marked-down shutdown-sessions",
        "option                  redispatch",
        "prometheus-exporter",
        "server master3 10.1.1.103:6443",
        "bind 10.1.1.100:6443",
    ] {
        assert!(cfg.contains(needle), "missing {needle:?}");
    }
    assert!(!cfg.contains("tcp-check"));
}

#[test]
fn keepalived_roles_peers_and_script() {
    let f = files(SEED);
    let k1 = &get(&f, "lb1", "/etc/keepalived/keepalived.conf").content;
    let k2 = &get(&f, "lb2", "/etc/keepalived/keepalived.conf").content;
    assert!(k1.contains("state MASTER") && k1.contains("priority 110"));
    assert!(k2.contains("state BACKUP") && k2.contains("priority 100"));
    assert!(k1.contains("unicast_src_ip 10.1.1.11") && k1.contains("        10.1.1.12\n"));
    assert!(k2.contains("unicast_src_ip 10.1.1.12") && k2.contains("        10.1.1.11\n"));
    for k in [k1, k2] {
        assert!(
            k.contains("enable_script_security") && k.contains("script_user keepalived_script")
        );
        assert!(k.contains("vrrp_version 3") && k.contains("advert_int 0.2"));
        assert!(!k.contains("auth_pass"), "VRRPv3 has no auth");
        assert!(k.contains("10.1.1.100/24"));
        assert!(
            k.contains("weight -20"),
            "weight exceeds the priority spread of 10"
        );
    }
    // Both track scripts ask HAProxy's own loopback health endpoint, never an API server: one
    // fails on any non-2xx answer (no API server UP), the other only when HAProxy is silent.
    let hap = &get(&f, "lb1", "/etc/haproxy/haproxy.cfg").content;
    assert!(hap.contains(
        "bind 127.0.0.1:8406\n    mode http\n    monitor-uri /healthz\n    monitor fail if { nbsrv(k8s-api) lt 1 }"
    ));
    for (name, fail_on_503) in [("check_apiserver.sh", true), ("check_haproxy.sh", false)] {
        let s = get(&f, "lb1", &format!("/etc/keepalived/{name}"));
        assert_eq!(s.mode, 0o755);
        assert!(s.content.starts_with("#!/bin/sh"), "{name}");
        assert!(
            s.content.contains("http://127.0.0.1:8406/healthz"),
            "{name}"
        );
        assert_eq!(s.content.contains("--fail"), fail_on_503, "{name}");
    }
    let k = &get(&f, "lb1", "/etc/keepalived/keepalived.conf").content;
    let haproxy_script = k
        .split("vrrp_script chk_haproxy {")
        .nth(1)
        .and_then(|x| x.split('}').next())
        .unwrap_or_default();
    assert!(
        haproxy_script.contains("fall 1") && !haproxy_script.contains("weight"),
        "a dead HAProxy puts the instance in FAULT at once: {haproxy_script}"
    );
    assert!(k.contains("chk_haproxy\n        chk_apiserver"));
    let sysctl = &get(&f, "lb1", "/etc/sysctl.d/90-hakube-loadbalancer.conf").content;
    assert!(sysctl.contains("net.ipv4.ip_nonlocal_bind = 1"));
}

#[test]
fn vrrp_v2_keeps_auth_and_marks_it_secret() {
    let src = SEED.replace("version: 3 ", "version: 2 ").replace(
        "advertInterval: 200ms",
        "advertInterval: 1s\n      authPass: s3cret",
    );
    let f = files(&src);
    let k = get(&f, "lb1", "/etc/keepalived/keepalived.conf");
    assert!(k.content.contains("auth_pass s3cret") && k.content.contains("advert_int 1\n"));
    assert!(!k.content.contains("vrrp_version"));
    assert!(k.secret && k.mode == 0o600);
}

#[test]
fn etcd_units_per_control_plane() {
    let f = files(SEED);
    let e = &get(&f, "master2", "/etc/etcd/etcd.env").content;
    for needle in [
        "ETCD_NAME=master2",
        "ETCD_LISTEN_PEER_URLS=https://10.1.1.102:2380",
        "ETCD_ADVERTISE_CLIENT_URLS=https://10.1.1.102:2379",
        "ETCD_INITIAL_CLUSTER=master1=https://10.1.1.101:2380,master2=https://10.1.1.102:2380,master3=https://10.1.1.103:2380",
        "ETCD_INITIAL_CLUSTER_STATE=new",
        "ETCD_HEARTBEAT_INTERVAL=100",
        "ETCD_ELECTION_TIMEOUT=1000",
        "ETCD_QUOTA_BACKEND_BYTES=2147483648",
        "ETCD_CLIENT_CERT_AUTH=true",
        "ETCD_PEER_CLIENT_CERT_AUTH=true",
    ] {
        assert!(e.contains(needle), "missing {needle}");
    }
    let u = &get(&f, "master2", "/etc/systemd/system/etcd.service").content;
    assert!(
        u.contains("EnvironmentFile=/etc/etcd/etcd.env")
            && u.contains("ExecStart=/usr/local/bin/etcd")
    );
    assert!(
        !f.iter()
            .any(|x| x.host.starts_with("lb") && x.path.contains("etcd"))
    );
    assert!(
        !f.iter()
            .any(|x| x.host.starts_with("worker") && x.path.contains("etcd"))
    );
}

#[test]
fn kubeadm_v1beta4_shape() {
    let f = files(SEED);
    let init = &get(&f, "master1", "/etc/kubernetes/hakube/kubeadm-init.yaml").content;
    assert!(init.contains("apiVersion: kubeadm.k8s.io/v1beta4"));
    assert!(
        init.contains("kind: InitConfiguration") && init.contains("kind: ClusterConfiguration")
    );
    assert!(init.contains("controlPlaneEndpoint: 10.1.1.100:6443"));
    assert!(
        init.contains("  - name: audit-log-maxage\n    value: \"30\""),
        "extraArgs as a name/value list"
    );
    assert!(init.contains("external:") && init.contains("https://10.1.1.103:2379"));
    // advertiseAddress only in localAPIEndpoint, never under apiServer.
    let cc = init
        .split("kind: ClusterConfiguration")
        .nth(1)
        .unwrap_or_default();
    assert!(!cc.contains("advertiseAddress"));
    let join = &get(&f, "master3", "/etc/kubernetes/hakube/kubeadm-join.yaml").content;
    assert!(join.contains("kind: JoinConfiguration") && join.contains("controlPlane:"));
    assert!(
        join.contains("advertiseAddress: \"10.1.1.103\"")
            && join.contains("certificateKey: ${HAKUBE_CERTIFICATE_KEY}")
    );
    let wjoin = &get(&f, "worker2", "/etc/kubernetes/hakube/kubeadm-join.yaml").content;
    assert!(
        !wjoin.contains("controlPlane:") && wjoin.contains("apiServerEndpoint: 10.1.1.100:6443")
    );
}

#[test]
fn kubeadm_v1beta3_and_stacked_etcd_shape() {
    let src = SEED
        .replace("version: v1.37.0", "version: v1.30.2")
        .replace("management: hakube", "management: kubeadm");
    let f = files(&src);
    let init = &get(&f, "master1", "/etc/kubernetes/hakube/kubeadm-init.yaml").content;
    assert!(init.contains("apiVersion: kubeadm.k8s.io/v1beta3"));
    assert!(
        init.contains("    audit-log-maxage: \"30\""),
        "extraArgs as a map in v1beta3"
    );
    assert!(init.contains("local:") && init.contains("election-timeout"));
    assert!(
        !init.contains("initial-cluster"),
        "kubeadm sets initial-cluster per join itself"
    );
    assert!(
        !f.iter().any(|x| x.path == "/etc/etcd/etcd.env"),
        "kubeadm manages etcd"
    );
}

#[test]
fn tcp_check_reproduces_the_runbook() {
    let src = SEED
        .replace("type: https", "type: tcp")
        .replace("interval: 400ms", "interval: 10s")
        .replace(
            "timeout: 2s           # a slow /readyz is not a dead API server\n      connectTimeout: 1s",
            "timeout: 10s\n      connectTimeout: 10s",
        );
    let f = files(&src);
    let cfg = &get(&f, "lb1", "/etc/haproxy/haproxy.cfg").content;
    assert!(cfg.contains("option tcp-check") && cfg.contains("inter 10s"));
    assert!(!cfg.contains("httpchk\n"));
}

#[test]
fn write_tree_is_idempotent_and_removes_stale_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = files(SEED);
    let n = render::write_tree(&f, dir.path()).expect("write");
    assert_eq!(n, f.len());
    assert_eq!(render::write_tree(&f, dir.path()).expect("rewrite"), 0);
    let env = dir.path().join("lb1/etc/haproxy/hakube.env");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&env).expect("env").permissions().mode() & 0o777,
        0o600
    );
    // Drop the ingress: nothing else changes, and stale files from a removed host vanish.
    let fewer: Vec<RenderedFile> = f.iter().filter(|x| x.host != "worker3").cloned().collect();
    render::write_tree(&fewer, dir.path()).expect("write fewer");
    assert!(
        !dir.path()
            .join("worker3/etc/kubernetes/hakube/kubeadm-join.yaml")
            .exists()
    );
    let unrelated = dir.path().join("notes.txt");
    std::fs::write(&unrelated, "mine").expect("write");
    render::write_tree(&f, dir.path()).expect("write again");
    assert!(
        unrelated.exists(),
        "files hakube did not write are left alone"
    );
}

#[test]
fn nopreempt_starts_every_lb_as_backup() {
    let src = SEED.replace(
        "priorities: { lb1: 110, lb2: 100 }",
        "priorities: { lb1: 110, lb2: 100 }\n      preempt: false",
    );
    assert_ne!(src, SEED, "test setup");
    let f = files(&src);
    for lb in ["lb1", "lb2"] {
        let k = &get(&f, lb, "/etc/keepalived/keepalived.conf").content;
        assert!(
            k.contains("state BACKUP") && k.contains("    nopreempt\n"),
            "{lb}"
        );
    }
    let seed = files(SEED);
    let k = &get(&seed, "lb1", "/etc/keepalived/keepalived.conf").content;
    assert!(k.contains("state MASTER") && !k.contains("nopreempt"));
}

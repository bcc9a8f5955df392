//! Validation, case by case: each broken spec must produce the right diagnostic, at the right
//! place, and every problem must be reported in one run.

use hakube::spec::{self, Bootstrap, KubeadmApi, Loaded, Severity};
use std::path::Path;

const SEED: &str = include_str!("../examples/seed.yaml");

fn load(src: &str) -> Loaded {
    spec::load_str(src, "cluster.yaml", Path::new("/nonexistent"))
}

/// The seed with `from` replaced by `to`; panics if `from` is not there, so a stale test fails.
fn seed_with(pairs: &[(&str, &str)]) -> String {
    let mut s = SEED.to_string();
    for (from, to) in pairs {
        assert!(s.contains(from), "test setup: {from:?} not in the seed");
        s = s.replacen(from, to, 1);
    }
    s
}

fn find<'a>(l: &'a Loaded, sev: Severity, path: &str, msg: &str) -> &'a spec::Diagnostic {
    l.diagnostics
        .items
        .iter()
        .find(|d| d.severity == sev && d.path == path && d.message.contains(msg))
        .unwrap_or_else(|| {
            let all: Vec<String> = l
                .diagnostics
                .items
                .iter()
                .map(|d| format!("{:?} {} {}", d.severity, d.path, d.message))
                .collect();
            panic!(
                "no {sev:?} at {path} containing {msg:?}; got:\n{}",
                all.join("\n")
            )
        })
}

fn line_of(src: &str, needle: &str) -> usize {
    src.lines()
        .position(|l| l.contains(needle))
        .expect("needle in source")
        + 1
}

#[test]
fn seed_is_valid_and_clean() {
    let l = load(SEED);
    let c = l.cluster.as_ref().expect("seed must be valid");
    assert_eq!(l.diagnostics.count(Severity::Error), 0);
    assert_eq!(
        l.diagnostics.count(Severity::Warning),
        0,
        "{:?}",
        l.diagnostics.items
    );
    assert_eq!(c.load_balancers().count(), 2);
    assert_eq!(c.control_planes().count(), 3);
    assert_eq!(c.workers().count(), 3);
    assert_eq!(c.lb.vip.to_string(), "10.1.1.100");
    assert_eq!(c.kubernetes.kubeadm_api, KubeadmApi::V1Beta4);
    assert_eq!(c.kubernetes.bootstrap, Bootstrap::Kubeadm);
    assert_eq!(
        c.networks.storage.map(|n| n.to_string()).as_deref(),
        Some("10.2.1.0/24")
    );
    assert!(
        c.kubernetes
            .cert_sans
            .contains(&"k8s-api.company.local".to_string())
    );
}

#[test]
fn duplicate_host_name_and_address() {
    let src = seed_with(&[(
        "{ name: lb2,     address: 10.1.1.12,",
        "{ name: lb1,     address: 10.1.1.11,",
    )]);
    let l = load(&src);
    assert!(l.cluster.is_none());
    let d = find(
        &l,
        Severity::Error,
        "spec.hosts[1].name",
        "duplicate host name \"lb1\"",
    );
    assert_eq!(d.location.map(|x| x.line), Some(line_of(SEED, "name: lb2")));
    find(
        &l,
        Severity::Error,
        "spec.hosts[1].address",
        "duplicate address 10.1.1.11",
    );
}

#[test]
fn host_outside_management_network() {
    let l = load(&seed_with(&[(
        "address: 10.1.1.201",
        "address: 10.9.9.201",
    )]));
    let d = find(
        &l,
        Severity::Error,
        "spec.hosts[5].address",
        "outside the management network 10.1.1.0/24",
    );
    let loc = d.location.expect("located");
    assert_eq!(loc.line, line_of(SEED, "worker1"));
    // Points at the value itself.
    let line = SEED.lines().nth(loc.line - 1).unwrap_or_default();
    assert!(line[loc.column - 1..].starts_with("10.9.9.201") || line.contains("worker1"));
}

#[test]
fn vip_outside_cidr_or_owned_by_a_host() {
    let l = load(&seed_with(&[("vip: 10.1.1.100", "vip: 192.168.7.7")]));
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vip",
        "outside the management network",
    );
    assert_eq!(
        d.location.map(|x| x.line),
        Some(line_of(SEED, "vip: 10.1.1.100"))
    );
    let l = load(&seed_with(&[("vip: 10.1.1.100", "vip: 10.1.1.102")]));
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vip",
        "also the address of host master2",
    );
    let l = load(&seed_with(&[("vip: 10.1.1.100", "vip: not-an-ip")]));
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vip",
        "is not an IP address",
    );
}

#[test]
fn overlapping_networks() {
    let l = load(&seed_with(&[(
        "services: 10.96.0.0/12",
        "services: 10.244.128.0/20",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.networks.services",
        "overlaps the pods network",
    );
    let l = load(&seed_with(&[(
        "storage: 10.2.1.0/24",
        "storage: 10.1.0.0/16",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.networks.storage",
        "overlaps the management network",
    );
    let l = load(&seed_with(&[(
        "pods: 10.244.0.0/16",
        "pods: 10.244.0.1/16",
    )]));
    let d = find(&l, Severity::Error, "spec.networks.pods", "host bits set");
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("10.244.0.0/16")
    );
}

fn with_control_planes(n: usize) -> String {
    let mut s = SEED.to_string();
    let cps = [
        "    - { name: master1, address: 10.1.1.101, roles: [control-plane] }\n",
        "    - { name: master2, address: 10.1.1.102, roles: [control-plane] }\n",
        "    - { name: master3, address: 10.1.1.103, roles: [control-plane] }\n",
    ];
    for c in cps {
        s = s.replace(c, "");
    }
    let mut add = String::new();
    for i in 0..n {
        add.push_str(&format!(
            "    - {{ name: cp{i}, address: 10.1.1.{}, roles: [control-plane] }}\n",
            110 + i
        ));
    }
    s.replace(
        "    - { name: worker1",
        &format!("{add}    - {{ name: worker1"),
    )
}

#[test]
fn control_plane_counts() {
    let l = load(&with_control_planes(0));
    find(&l, Severity::Error, "spec.hosts", "no control-plane host");
    let l = load(&with_control_planes(2));
    let d = find(
        &l,
        Severity::Error,
        "spec.hosts",
        "2 control planes are worse than 1",
    );
    assert!(d.help.as_deref().unwrap_or_default().contains("use 3"));
    let l = load(&with_control_planes(4));
    find(&l, Severity::Error, "spec.hosts", "4 control planes");
    let l = load(&with_control_planes(1));
    assert!(l.cluster.is_some());
    find(
        &l,
        Severity::Warning,
        "spec.hosts",
        "single control plane is a single point of failure",
    );
    let l = load(&with_control_planes(5));
    assert!(l.cluster.is_some());
    assert_eq!(l.diagnostics.count(Severity::Error), 0);
}

#[test]
fn single_load_balancer_is_a_spof_warning() {
    let src = seed_with(&[
        (
            "    - { name: lb2,     address: 10.1.1.12,  roles: [loadbalancer] }\n",
            "",
        ),
        (
            "priorities: { lb1: 110, lb2: 100 }",
            "priorities: { lb1: 110 }",
        ),
    ]);
    let l = load(&src);
    assert!(l.cluster.is_some(), "{:?}", l.diagnostics.items);
    find(
        &l,
        Severity::Warning,
        "spec.hosts",
        "single load balancer (lb1) is a single point of failure",
    );
}

#[test]
fn vrrp_router_id_and_priorities() {
    for bad in ["0", "256", "-3"] {
        let l = load(&seed_with(&[("routerId: 51", &format!("routerId: {bad}"))]));
        find(
            &l,
            Severity::Error,
            "spec.loadBalancer.vrrp.routerId",
            "outside 1-255",
        );
    }
    let l = load(&seed_with(&[(
        "{ lb1: 110, lb2: 100 }",
        "{ lb1: 100, lb2: 100 }",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vrrp.priorities.lb2",
        "priority 100 is also given to lb1",
    );
    let l = load(&seed_with(&[(
        "{ lb1: 110, lb2: 100 }",
        "{ lb1: 110, lbb2: 100 }",
    )]));
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vrrp.priorities.lbb2",
        "not a loadbalancer host",
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("did you mean lb2")
    );
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vrrp.priorities",
        "no priority for load balancer lb2",
    );
}

#[test]
fn auth_pass_is_truncated_by_keepalived() {
    let l = load(&seed_with(&[
        ("version: 3 ", "version: 2 "),
        (
            "advertInterval: 200ms",
            "advertInterval: 1s\n      authPass: mypassword",
        ),
    ]));
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vrrp.authPass",
        "only the first 8",
    );
    assert_eq!(
        d.location.map(|x| x.line),
        Some(line_of(SEED, "advertInterval") + 1)
    );
    let l = load(&seed_with(&[(
        "advertInterval: 200ms",
        "advertInterval: 200ms\n      authPass: short",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vrrp.authPass",
        "VRRPv3 has no authentication",
    );
    let l = load(&seed_with(&[("version: 3 ", "version: 2 ")]));
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vrrp.advertInterval",
        "VRRPv2 adverts are whole seconds",
    );
}

#[test]
fn kubernetes_versions_pick_the_kubeadm_api() {
    let c = |v: &str| {
        load(&seed_with(&[(
            "version: v1.37.0",
            &format!("version: {v}"),
        )]))
    };
    let l = c("v1.30.4");
    assert_eq!(
        l.cluster.as_ref().map(|c| c.kubernetes.kubeadm_api),
        Some(KubeadmApi::V1Beta3)
    );
    find(
        &l,
        Severity::Warning,
        "spec.kubernetes.version",
        "no longer maintained",
    );
    let l = c("1.31.0");
    assert_eq!(
        l.cluster.as_ref().map(|c| c.kubernetes.kubeadm_api),
        Some(KubeadmApi::V1Beta4)
    );
    let l = c("v1.28.0");
    find(
        &l,
        Severity::Error,
        "spec.kubernetes.version",
        "older than the oldest version hakube supports",
    );
    let l = c("v1.40.0");
    find(
        &l,
        Severity::Error,
        "spec.kubernetes.version",
        "newer than the newest",
    );
    let l = c("latest");
    find(
        &l,
        Severity::Error,
        "spec.kubernetes.version",
        "not a Kubernetes release version",
    );
    let l = c("v1.36.0-rc.1");
    find(
        &l,
        Severity::Error,
        "spec.kubernetes.version",
        "not a Kubernetes release version",
    );
}

#[test]
fn colocated_lb_and_control_plane_port_clash() {
    let src = colocated(&[]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.apiPort",
        "would both bind port 6443",
    );
    assert!(d.help.as_deref().unwrap_or_default().contains("8443"));
    // Without an explicit port, hakube moves HAProxy to 8443 and says so.
    let l = load(&src.replace("    apiPort: 6443\n", ""));
    let c = l.cluster.as_ref().expect("valid");
    assert_eq!(c.lb.api_port, 8443);
    find(&l, Severity::Info, "spec.loadBalancer.apiPort", "8443");
}

#[test]
fn sans_are_completed_and_reported() {
    let l = load(SEED);
    let c = l.cluster.as_ref().expect("valid");
    for a in ["10.1.1.100", "10.1.1.101", "10.1.1.102", "10.1.1.103"] {
        assert!(c.kubernetes.cert_sans.iter().any(|s| s == a), "{a} missing");
    }
    find(
        &l,
        Severity::Info,
        "spec.kubernetes.certSANs",
        "10.1.1.100, 10.1.1.101",
    );
}

#[test]
fn per_node_and_managed_api_server_args_are_refused() {
    let l = load(&seed_with(&[(
        "audit-log-maxage: \"30\"",
        "audit-log-maxage: \"30\"\n      advertise-address: 10.1.1.101",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.kubernetes.apiServerExtraArgs.advertise-address",
        "differs per node",
    );
}

#[test]
fn etcd_timings() {
    let l = load(&seed_with(&[(
        "electionTimeout: 1000ms",
        "electionTimeout: 300ms",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.etcd.electionTimeout",
        "less than 5 x the heartbeat",
    );
    let l = load(&seed_with(&[(
        "quotaBackendBytes: 2GiB",
        "quotaBackendBytes: 2 parsecs",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.etcd.quotaBackendBytes",
        "unknown unit",
    );
    let l = load(&seed_with(&[(
        "management: hakube",
        "management: kubeadmm",
    )]));
    let d = find(
        &l,
        Severity::Error,
        "spec.etcd.management",
        "unknown etcd management",
    );
    assert!(d.help.as_deref().unwrap_or_default().contains("kubeadm"));
}

#[test]
fn tcp_check_and_slow_intervals_are_warned() {
    let l = load(&seed_with(&[
        ("type: https", "type: tcp"),
        ("interval: 400ms", "interval: 10s"),
    ]));
    assert!(l.cluster.is_some());
    find(
        &l,
        Severity::Warning,
        "spec.loadBalancer.healthCheck.type",
        "TCP check passes while the API server is up but not ready",
    );
    find(
        &l,
        Severity::Warning,
        "spec.loadBalancer.healthCheck.interval",
        "stays in rotation for up to 20s",
    );
}

#[test]
fn unknown_field_suggests_the_right_one() {
    let src = seed_with(&[("routerId: 51", "routerID: 51")]);
    let l = load(&src);
    let d = &l.diagnostics.items[0];
    assert_eq!(d.severity, Severity::Error);
    assert!(
        d.message.contains("unknown field `routerID`"),
        "{}",
        d.message
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("did you mean `routerId`")
    );
    assert_eq!(d.location.map(|x| x.line), Some(line_of(SEED, "routerId")));
}

#[test]
fn unknown_role_suggests_the_right_one() {
    let l = load(&seed_with(&[(
        "roles: [control-plane] }",
        "roles: [master] }",
    )]));
    let d = find(
        &l,
        Severity::Error,
        "spec.hosts[2].roles[0]",
        "unknown role \"master\"",
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("did you mean `control-plane`")
    );
}

#[test]
fn every_error_is_reported_in_one_run() {
    let src = seed_with(&[
        ("address: 10.1.1.201", "address: 10.9.9.201"),
        ("vip: 10.1.1.100", "vip: 10.1.1.102"),
        ("routerId: 51", "routerId: 300"),
        ("services: 10.96.0.0/12", "services: 10.244.0.0/24"),
        ("version: v1.37.0", "version: v1.20.0"),
        ("electionTimeout: 1000ms", "electionTimeout: 100ms"),
    ]);
    let l = load(&src);
    assert!(l.cluster.is_none());
    let paths: Vec<&str> = l
        .diagnostics
        .items
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.path.as_str())
        .collect();
    for p in [
        "spec.hosts[5].address",
        "spec.loadBalancer.vip",
        "spec.loadBalancer.vrrp.routerId",
        "spec.networks.services",
        "spec.kubernetes.version",
        "spec.etcd.electionTimeout",
    ] {
        assert!(paths.contains(&p), "{p} not reported; got {paths:?}");
    }
    // Sorted by position in the file, and every one located.
    let lines: Vec<usize> = l
        .diagnostics
        .items
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.location.expect("located").line)
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn syntax_errors_are_located() {
    let l = load("apiVersion: hakube.io/v1alpha1\nkind: Cluster\nmetadata: {name: x\nspec: []\n");
    assert!(l.cluster.is_none());
    let d = &l.diagnostics.items[0];
    assert!(d.location.is_some(), "{d:?}");
    let l = load("");
    assert!(l.cluster.is_none());
    assert_eq!(l.diagnostics.count(Severity::Error), 1);
}

#[test]
fn wrong_types_are_reported_not_panicked() {
    let l = load(&seed_with(&[("apiPort: 6443", "apiPort: 99999")]));
    assert!(l.cluster.is_none());
    let d = &l.diagnostics.items[0];
    assert_eq!(
        d.location.map(|x| x.line),
        Some(line_of(SEED, "apiPort: 6443"))
    );
}

#[test]
fn the_track_port_must_not_collide() {
    let src = seed_with(&[(
        "priorities: { lb1: 110, lb2: 100 }",
        "priorities: { lb1: 110, lb2: 100 }\n      trackPort: 8405",
    )]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.metrics.port",
        "would both bind port 8405",
    );
    assert!(d.message.contains("health endpoint for keepalived"));
    let c = load(SEED).cluster.expect("valid");
    assert_eq!(c.lb.vrrp.track_port, 8406, "the default");
}

/// A spec string with a character its file's grammar reads differently: refused where it is
/// written, naming the character, its position and why.
fn refused_at(src: &str, path: &str, msg: &str, needle: &str) -> spec::Diagnostic {
    let l = load(src);
    assert!(l.cluster.is_none(), "{path} was accepted");
    let d = find(&l, Severity::Error, path, msg).clone();
    assert_eq!(
        d.location.map(|x| x.line),
        Some(line_of(src, needle)),
        "{path}: {d}"
    );
    d
}

#[test]
fn strings_are_checked_against_the_grammar_they_reach() {
    let lb1 = "{ name: lb1,     address: 10.1.1.11,  roles: [loadbalancer] }";
    let src = seed_with(&[(
        lb1,
        "{ name: lb1,     address: 10.1.1.11,  roles: [loadbalancer], interface: \"eth0#1\" }",
    )]);
    let d = refused_at(
        &src,
        "spec.hosts[0].interface",
        "'#' at character 5 starts a comment in keepalived.conf: keepalived would read only \"eth0\"",
        "eth0#1",
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("ip -br link")
    );
    let src = seed_with(&[(
        lb1,
        "{ name: lb1,     address: 10.1.1.11,  roles: [loadbalancer], interface: veth0@if3 }",
    )]);
    refused_at(
        &src,
        "spec.hosts[0].interface",
        "'@' at character 6",
        "veth0@if3",
    );
    let src = seed_with(&[
        ("version: 3 ", "version: 2 "),
        (
            "advertInterval: 200ms",
            "advertInterval: 1s\n      authPass: \"ab!cd\"",
        ),
    ]);
    refused_at(
        &src,
        "spec.loadBalancer.vrrp.authPass",
        "'!' at character 3 starts a comment in keepalived.conf",
        "ab!cd",
    );
    let src = seed_with(&[(
        "priorities: { lb1: 110, lb2: 100 }",
        "priorities: { lb1: 110, lb2: 100 }\n      scriptUser: \"ka script\"",
    )]);
    refused_at(
        &src,
        "spec.loadBalancer.vrrp.scriptUser",
        "a space at character 3 separates words in keepalived.conf",
        "ka script",
    );
    let src = seed_with(&[("user: admin", "user: \"ad:min\"")]);
    refused_at(
        &src,
        "spec.loadBalancer.stats.user",
        "stats auth user:password",
        "ad:min",
    );
    let src = seed_with(&[("user: admin", "user: \"a$(id)\"")]);
    refused_at(
        &src,
        "spec.loadBalancer.stats.user",
        "'$' at character 2 expands a variable when sh reads the environment file",
        "a$(id)",
    );
    let src = seed_with(&[(
        "quotaBackendBytes: 2GiB",
        "quotaBackendBytes: 2GiB\n    binary: /opt/%i/etcd\n    dataDir: var/lib/etcd",
    )]);
    refused_at(
        &src,
        "spec.etcd.binary",
        "'%' at character 6 starts a specifier (%n, %h, …) in the systemd unit",
        "/opt/%i/etcd",
    );
    refused_at(
        &src,
        "spec.etcd.dataDir",
        "is not an absolute path",
        "var/lib/etcd",
    );
    let src = seed_with(&[(
        "clusterName: ha-cluster",
        "clusterName: ha-cluster\n    criSocket: \"unix:///run/${HAKUBE_BOOTSTRAP_TOKEN}.sock\"",
    )]);
    refused_at(
        &src,
        "spec.kubernetes.criSocket",
        "apply fills ${HAKUBE_…} in kubeadm-join.yaml",
        "criSocket",
    );
    let src = seed_with(&[("clusterName: ha-cluster", "clusterName: \"ha cluster\"")]);
    refused_at(
        &src,
        "spec.kubernetes.clusterName",
        "is not a DNS name",
        "ha cluster",
    );
    let src = seed_with(&[(
        "audit-log-maxage: \"30\"",
        "\"audit-log-maxage=30\": \"30\"",
    )]);
    refused_at(
        &src,
        "spec.kubernetes.apiServerExtraArgs.audit-log-maxage=30",
        "'=' at character 17 separates the flag from its value",
        "audit-log-maxage=30",
    );
    let src = seed_with(&[(
        "audit-log-path: /var/log/kubernetes/audit/audit.log",
        "audit-log-path: audit.log",
    )]);
    refused_at(
        &src,
        "spec.kubernetes.apiServerExtraArgs.audit-log-path",
        "is not an absolute path",
        "audit-log-path",
    );
}

#[test]
fn allowed_punctuation_stays_allowed() {
    let src = seed_with(&[
        ("user: admin", "user: \"ad#min,1\""),
        (
            "{ name: lb1,     address: 10.1.1.11,  roles: [loadbalancer] }",
            "{ name: lb1,     address: 10.1.1.11,  roles: [loadbalancer], interface: br-lan.100 }",
        ),
        (
            "audit-log-path: /var/log/kubernetes/audit/audit.log",
            "audit-log-path: \"-\"",
        ),
    ]);
    let l = load(&src);
    let c = l
        .cluster
        .unwrap_or_else(|| panic!("{:?}", l.diagnostics.items));
    assert_eq!(c.lb.stats.user, "ad#min,1");
    assert_eq!(c.hosts[0].interface.as_deref(), Some("br-lan.100"));
}

#[test]
fn priorities_keep_the_track_weight_in_keepalived_range() {
    let l = load(&seed_with(&[(
        "{ lb1: 110, lb2: 100 }",
        "{ lb1: 254, lb2: 2 }",
    )]));
    let c = l.cluster.expect("254 and 2 are accepted");
    let w = c.lb.vrrp.track_weight;
    assert_eq!(
        w, -253,
        "the widest spread needs keepalived's largest weight"
    );
    // The LB at 254 failing drops to 1 (keepalived's floor), below the healthy one at 2.
    assert!((254 + w).max(1) < 2);
    assert_eq!(load(SEED).cluster.expect("seed").lb.vrrp.track_weight, -20);
    let src = seed_with(&[("{ lb1: 110, lb2: 100 }", "{ lb1: 110, lb2: 1 }")]);
    refused_at(
        &src,
        "spec.loadBalancer.vrrp.priorities.lb2",
        "keepalived's floor",
        "lb2: 1 }",
    );
}

#[test]
fn numbers_fit_what_haproxy_and_etcd_accept() {
    for (from, to, path, msg) in [
        (
            "interval: 400ms",
            "interval: 25d",
            "spec.loadBalancer.healthCheck.interval",
            "more than HAProxy accepts",
        ),
        (
            "timeout: 2s",
            "timeout: 1500us",
            "spec.loadBalancer.healthCheck.timeout",
            "not a whole number of milliseconds",
        ),
        (
            "fall: 2",
            "fall: 4294967295",
            "spec.loadBalancer.healthCheck.fall",
            "more than HAProxy accepts",
        ),
        (
            "electionTimeout: 1000ms",
            "electionTimeout: 60s",
            "spec.etcd.electionTimeout",
            "more than etcd accepts",
        ),
        (
            "heartbeatInterval: 100ms",
            "heartbeatInterval: 100500us",
            "spec.etcd.heartbeatInterval",
            "cut to 100 ms",
        ),
        (
            "port: 8405",
            "port: 0",
            "spec.loadBalancer.metrics.port",
            "port 0",
        ),
    ] {
        let src = seed_with(&[(from, to)]);
        refused_at(&src, path, msg, to);
    }
}

// --- Port plan (issue #10, item 4) ---

/// `d` points at the line of `src` that holds `needle`.
fn located(d: &spec::Diagnostic, src: &str, needle: &str) {
    assert_eq!(
        d.location.map(|x| x.line),
        Some(line_of(src, needle)),
        "{} should point at {needle:?}",
        d.path
    );
}

/// The seed with master1 also a load balancer.
fn colocated(extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        (
            "{ name: master1, address: 10.1.1.101, roles: [control-plane] }",
            "{ name: master1, address: 10.1.1.101, roles: [control-plane, loadbalancer] }",
        ),
        (
            "{ lb1: 110, lb2: 100 }",
            "{ lb1: 110, lb2: 100, master1: 90 }",
        ),
    ];
    pairs.extend_from_slice(extra);
    seed_with(&pairs)
}

fn errors(l: &Loaded) -> Vec<String> {
    l.diagnostics
        .items
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{} {}", d.path, d.message))
        .collect()
}

#[test]
fn the_port_plan_covers_every_listener_by_role() {
    use hakube::spec::ports::{BindAddress, Owner};
    let c = load(SEED).cluster.expect("valid");
    let has = |host: &str, owner: Owner, addr: &str, port: u16| {
        let h = c.host(host).expect("host");
        let p = c.port_plan(h);
        p.listeners
            .iter()
            .any(|l| l.owner == owner && l.address.to_string() == addr && l.port == port)
    };
    // Every host: the sshd hakube connects to.
    assert!(has("lb1", Owner::Sshd, "*", 22) && has("worker3", Owner::Sshd, "*", 22));
    // Load balancer: HAProxy.
    assert!(has("lb1", Owner::HaproxyApi, "10.1.1.100", 6443));
    assert!(has("lb1", Owner::HaproxyTrack, "127.0.0.1", 8406));
    assert!(has("lb1", Owner::HaproxyStats, "10.1.1.11", 9000));
    assert!(has("lb1", Owner::HaproxyMetrics, "10.1.1.11", 8405));
    assert!(has("lb1", Owner::HaproxyIngressHttp, "10.1.1.100", 80));
    assert!(has("lb1", Owner::HaproxyIngressHttps, "10.1.1.100", 443));
    assert!(!has("lb1", Owner::Kubelet, "*", 10250));
    // Control plane: etcd on its address and loopback, metrics on loopback (etcd.env.j2),
    // the API server everywhere, and the kubeadm node components.
    assert!(has("master1", Owner::EtcdClient, "10.1.1.101", 2379));
    assert!(has("master1", Owner::EtcdClient, "127.0.0.1", 2379));
    assert!(has("master1", Owner::EtcdPeer, "10.1.1.101", 2380));
    assert!(has("master1", Owner::EtcdMetrics, "127.0.0.1", 2381));
    assert!(has("master1", Owner::ApiServer, "*", 6443));
    assert!(has("master1", Owner::KubeScheduler, "127.0.0.1", 10259));
    assert!(has(
        "master1",
        Owner::KubeControllerManager,
        "127.0.0.1",
        10257
    ));
    assert!(has("master1", Owner::Kubelet, "*", 10250));
    assert!(has("master1", Owner::KubeProxyMetrics, "127.0.0.1", 10249));
    assert!(has("master1", Owner::KubeProxyHealthz, "*", 10256));
    assert!(has("master1", Owner::NodePortHttp, "*", 30080));
    // Worker: kubelet, kube-proxy, node ports; no etcd, no scheduler.
    assert!(has("worker2", Owner::Kubelet, "*", 10250));
    assert!(has("worker2", Owner::NodePortHttps, "*", 30443));
    assert!(!has("worker2", Owner::EtcdClient, "10.1.1.202", 2379));
    assert!(!has("worker2", Owner::KubeScheduler, "127.0.0.1", 10259));
    // The lab bootstrap runs no kubelet.
    let lab = load(&seed_with(&[("bootstrap: kubeadm", "bootstrap: lab")]))
        .cluster
        .expect("valid");
    let m1 = lab.host("master1").expect("master1");
    assert!(
        lab.port_plan(m1)
            .listeners
            .iter()
            .all(|l| l.owner != Owner::Kubelet)
    );
    // Wildcards overlap everything; loopback and the host address do not overlap.
    let lo = BindAddress::Ip("127.0.0.1".parse().expect("ip"));
    let host = BindAddress::Ip("10.1.1.101".parse().expect("ip"));
    assert!(BindAddress::Any.overlaps(lo) && host.overlaps(BindAddress::Any));
    assert!(!lo.overlaps(host));
    assert_eq!(c.port_plans().len(), c.hosts.len());
}

#[test]
fn a_port_clash_names_both_users_and_points_at_the_written_field() {
    let src = colocated(&[
        ("apiPort: 6443", "apiPort: 8443"),
        ("port: 9000", "port: 2379"),
    ]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.stats.port",
        "would both bind port 2379/tcp",
    );
    assert!(d.message.contains("on host master1:"), "{}", d.message);
    assert!(d.message.contains("HAProxy's stats page"));
    assert!(d.message.contains("etcd clients"));
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("spec.etcd.clientPort")
    );
    located(d, &src, "port: 2379");
    // Only master1 has both; lb1 and lb2 do not run etcd.
    assert_eq!(errors(&l).len(), 1, "{:?}", errors(&l));
}

#[test]
fn loopback_and_the_host_address_do_not_clash_but_loopback_twice_does() {
    // keepalived's track endpoint (127.0.0.1) and etcd's peers (the host address) on 2380.
    let track = |port: &str| {
        colocated(&[
            ("apiPort: 6443", "apiPort: 8443"),
            (
                "priorities: { lb1: 110, lb2: 100, master1: 90 }",
                &format!(
                    "priorities: {{ lb1: 110, lb2: 100, master1: 90 }}\n      trackPort: {port}"
                ),
            ),
        ])
    };
    let l = load(&track("2380"));
    assert!(l.cluster.is_some(), "{:?}", errors(&l));
    // etcd's metrics listen on 127.0.0.1:2381 too.
    let src = track("2381");
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vrrp.trackPort",
        "would both bind port 2381/tcp",
    );
    assert!(
        d.message.contains("etcd's metrics and /health (127.0.0.1)"),
        "{}",
        d.message
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("always uses port 2381")
    );
    located(d, &src, "trackPort: 2381");
}

#[test]
fn the_vip_clashes_with_a_listener_on_every_address() {
    // lb2 is also a worker: the kubelet binds every address, the VIP included.
    let src = seed_with(&[
        (
            "{ name: lb2,     address: 10.1.1.12,  roles: [loadbalancer] }",
            "{ name: lb2,     address: 10.1.1.12,  roles: [loadbalancer, worker] }",
        ),
        ("httpPort: 80", "httpPort: 10250"),
    ]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.ingress.httpPort",
        "the HTTP ingress frontend (the VIP 10.1.1.100) and the kubelet (every address) would both bind port 10250/tcp",
    );
    assert!(d.message.starts_with("on host lb2:"), "{}", d.message);
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("the kubelet always uses port 10250")
    );
    // lb1 is no worker: no clash there.
    assert_eq!(errors(&l).len(), 1, "{:?}", errors(&l));
}

#[test]
fn sshd_is_a_listener_too() {
    let src = seed_with(&[("httpsPort: 443", "httpsPort: 22")]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.ingress.httpsPort",
        "on hosts lb1, lb2: sshd (every address) and the HTTPS ingress frontend (the VIP 10.1.1.100) would both bind port 22/tcp",
    );
    located(d, &src, "httpsPort: 22");
    // A host's own SSH port counts for that host only.
    let l = load(&seed_with(&[(
        "{ name: lb2,     address: 10.1.1.12,  roles: [loadbalancer] }",
        "{ name: lb2,     address: 10.1.1.12,  roles: [loadbalancer], ssh: { port: 9000 } }",
    )]));
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.stats.port",
        "would both bind port 9000/tcp",
    );
    assert!(d.message.starts_with("on host lb2:"), "{}", d.message);
}

#[test]
fn port_zero_is_no_port() {
    let src = seed_with(&[("port: 8405", "port: 0")]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.metrics.port",
        "on hosts lb1, lb2: HAProxy's metrics on port 0: the kernel would pick a random port",
    );
    located(d, &src, "port: 0");
}

#[test]
fn one_clash_on_every_control_plane_is_one_error() {
    let src = seed_with(&[(
        "    bootstrap: kubeadm\n",
        "    bootstrap: kubeadm\n    apiServerPort: 2380\n",
    )]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.kubernetes.apiServerPort",
        "on hosts master1, master2, master3: etcd peers (the host's address) and the API server (every address) would both bind port 2380/tcp",
    );
    located(d, &src, "apiServerPort: 2380");
    assert_eq!(errors(&l).len(), 1, "{:?}", errors(&l));
}

#[test]
fn node_ports_are_checked_against_the_service_node_port_range() {
    let src = seed_with(&[("httpNodePort: 30080", "httpNodePort: 8080")]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.ingress.httpNodePort",
        "8080 is outside the default service node-port range 30000-32767",
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("service-node-port-range")
    );
    located(d, &src, "httpNodePort: 8080");
    // A range given to the API server is the one that counts.
    let src = seed_with(&[
        ("httpNodePort: 30080", "httpNodePort: 8080"),
        (
            "audit-log-maxage: \"30\"",
            "audit-log-maxage: \"30\"\n      service-node-port-range: 8000-8999",
        ),
    ]);
    let l = load(&src);
    let e = errors(&l);
    assert!(!e.iter().any(|m| m.contains("httpNodePort:")), "{e:?}");
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.ingress.httpsNodePort",
        "30443 is outside the service node-port range 8000-8999",
    );
    let l = load(&seed_with(&[(
        "audit-log-maxage: \"30\"",
        "audit-log-maxage: \"30\"\n      service-node-port-range: 9000-8000",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.kubernetes.apiServerExtraArgs.service-node-port-range",
        "\"9000-8000\" is not a port range",
    );
    // The two node ports are two listeners on every node.
    let l = load(&seed_with(&[(
        "httpNodePort: 30080",
        "httpNodePort: 30443",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.ingress.httpsNodePort",
        "the ingress HTTP NodePort (every address) and the ingress HTTPS NodePort (every address) would both bind port 30443/tcp",
    );
}

#[test]
fn a_host_port_inside_the_node_port_range_is_a_warning() {
    let src = seed_with(&[
        (
            "{ name: lb2,     address: 10.1.1.12,  roles: [loadbalancer] }",
            "{ name: lb2,     address: 10.1.1.12,  roles: [loadbalancer, worker] }",
        ),
        ("port: 8405", "port: 30100"),
    ]);
    let l = load(&src);
    assert!(l.cluster.is_some(), "{:?}", errors(&l));
    let d = find(
        &l,
        Severity::Warning,
        "spec.loadBalancer.metrics.port",
        "on host lb2: HAProxy's metrics on port 30100 is inside the default service node-port range 30000-32767",
    );
    located(d, &src, "port: 30100");
}

#[test]
fn kubeadm_etcd_ignores_custom_ports_so_they_are_refused() {
    let src = seed_with(&[
        ("management: hakube", "management: kubeadm"),
        (
            "quotaBackendBytes: 2GiB",
            "quotaBackendBytes: 2GiB\n    clientPort: 12379",
        ),
    ]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.etcd.clientPort",
        "kubeadm's stacked etcd always uses port 2379, not 12379",
    );
    located(d, &src, "clientPort: 12379");
}

// --- IPv6 (item 5): refused, one located message per field ---

#[test]
fn ipv6_is_refused_field_by_field() {
    let v6 = SEED
        .replace("10.1.1.0/24", "fd00:1::/64")
        .replace("10.1.1.", "fd00:1::")
        .replace("10.244.0.0/16", "fd00:244::/56")
        .replace("10.96.0.0/12", "fd00:96::/108");
    let l = load(&v6);
    assert!(l.cluster.is_none());
    let d = find(
        &l,
        Severity::Error,
        "spec.networks.management",
        "the management network fd00:1::/64 is IPv6; hakube supports IPv4 only",
    );
    located(d, &v6, "management: fd00");
    for (i, name) in ["lb1", "lb2", "master1", "master2", "master3", "worker1"]
        .iter()
        .enumerate()
    {
        let d = find(
            &l,
            Severity::Error,
            &format!("spec.hosts[{i}].address"),
            &format!("host {name} has the IPv6 address"),
        );
        located(d, &v6, &format!("name: {name},"));
    }
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vip",
        "the VIP fd00:1::100 is IPv6",
    );
    find(
        &l,
        Severity::Error,
        "spec.networks.pods",
        "fd00:244::/56 is IPv6",
    );
    find(
        &l,
        Severity::Error,
        "spec.networks.services",
        "fd00:96::/108 is IPv6",
    );
    // One message per field: no "outside the management network" on top.
    let e = errors(&l);
    assert!(!e.iter().any(|m| m.contains("outside")), "{e:?}");
    // Mixed families are refused as such; IPv6 storage is not rendered anywhere, so allowed.
    let l = load(&seed_with(&[(
        "pods: 10.244.0.0/16",
        "pods: fd00:244::/56",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.networks.pods",
        "the hosts are IPv4, and dual stack is not supported",
    );
    let l = load(&seed_with(&[(
        "storage: 10.2.1.0/24",
        "storage: fd00:2::/64",
    )]));
    assert!(l.cluster.is_some(), "{:?}", errors(&l));
    // An IPv6 host in an IPv4 cluster.
    let l = load(&seed_with(&[("address: 10.1.1.201", "address: fd00::201")]));
    find(
        &l,
        Severity::Error,
        "spec.hosts[5].address",
        "host worker1 has the IPv6 address fd00::201",
    );
    assert_eq!(errors(&l).len(), 1, "{:?}", errors(&l));
}

// --- Messages in the user's terms (item 6) ---

#[test]
fn every_unknown_field_is_reported_with_the_other_errors() {
    let src = seed_with(&[
        ("routerId: 51", "routerID: 51"),
        ("fall: 2", "falls: 2"),
        ("dnsDomain: cluster.local", "dnsdomain: cluster.local"),
        ("electionTimeout: 1000ms", "electionTimeout: 100ms"),
    ]);
    let l = load(&src);
    assert!(l.cluster.is_none());
    for (path, field, suggestion, needle) in [
        (
            "spec.loadBalancer.vrrp.routerID",
            "routerID",
            "routerId",
            "routerID: 51",
        ),
        (
            "spec.loadBalancer.healthCheck.falls",
            "falls",
            "fall",
            "falls: 2",
        ),
        (
            "spec.networks.dnsdomain",
            "dnsdomain",
            "dnsDomain",
            "dnsdomain:",
        ),
    ] {
        let d = find(
            &l,
            Severity::Error,
            path,
            &format!("unknown field `{field}`"),
        );
        assert!(
            d.help
                .as_deref()
                .unwrap_or_default()
                .contains(&format!("did you mean `{suggestion}`")),
            "{:?}",
            d.help
        );
        let loc = d.location.expect("located");
        assert_eq!(loc.line, line_of(&src, needle));
        // At the key itself.
        let line = src.lines().nth(loc.line - 1).unwrap_or_default();
        assert!(
            line[loc.column - 1..].starts_with(field),
            "{line:?} {loc:?}"
        );
    }
    // The semantic checks still ran.
    find(
        &l,
        Severity::Error,
        "spec.etcd.electionTimeout",
        "less than 5 x the heartbeat",
    );
}

#[test]
fn a_misspelt_required_field_is_one_error() {
    let src = seed_with(&[("    management: 10.1.1.0/24", "    managment: 10.1.1.0/24")]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.networks.managment",
        "unknown field `managment`",
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .starts_with("did you mean `management`?")
    );
    // Not also "missing field `management`".
    assert_eq!(errors(&l).len(), 1, "{:?}", errors(&l));
}

#[test]
fn an_unknown_field_in_a_host_and_through_an_alias_is_found() {
    let src = seed_with(&[
        (
            "{ name: worker3, address: 10.1.1.203, roles: [worker] }",
            "{ name: worker3, address: 10.1.1.203, role: [worker] }",
        ),
        (
            "  ssh:\n    user: root\n",
            "  ssh: &ssh\n    user: root\n    identity: k\n",
        ),
    ]);
    let l = load(&src);
    let d = find(
        &l,
        Severity::Error,
        "spec.hosts[7].role",
        "unknown field `role`",
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("did you mean `roles`")
    );
    find(
        &l,
        Severity::Error,
        "spec.ssh.identity",
        "unknown field `identity`",
    );
}

#[test]
fn a_duplicate_key_names_both_lines() {
    let src = seed_with(&[("routerId: 51", "routerId: 51\n      routerId: 52")]);
    let l = load(&src);
    assert!(l.cluster.is_none());
    let first = line_of(&src, "routerId: 51");
    let d = find(
        &l,
        Severity::Error,
        "spec.loadBalancer.vrrp.routerId",
        &format!(
            "`routerId` is given twice in the same block, on line {first} and on line {}",
            first + 1
        ),
    );
    assert_eq!(d.location.map(|x| x.line), Some(first + 1));
    assert!(!d.message.contains("DuplicateKeyPolicy"));
    // In a flow mapping too.
    let l = load(&seed_with(&[(
        "{ name: lb1,     address: 10.1.1.11,",
        "{ name: lb1,     address: 10.1.1.11, name: lb9,",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.hosts[0].name",
        "`name` is given twice",
    );
}

#[test]
fn a_second_document_says_one_cluster_per_file() {
    let src = format!("{SEED}---\n{SEED}");
    let l = load(&src);
    assert!(l.cluster.is_none());
    let d = &l.diagnostics.items[0];
    assert_eq!(d.severity, Severity::Error);
    assert!(d.message.contains("one cluster per file"), "{}", d.message);
    assert!(!d.message.contains("from_str_multiple"));
    assert_eq!(
        d.location.map(|x| x.line),
        Some(SEED.lines().count() + 1),
        "the line of the second `---`"
    );
    assert_eq!(l.diagnostics.count(Severity::Error), 1);
    // A trailing `---` (or `---` and a comment) holds no second cluster.
    let l = load(&format!("{SEED}---\n# nothing\n"));
    assert!(l.cluster.is_some(), "{:?}", errors(&l));
}

#[test]
fn an_empty_spec_says_it_is_empty() {
    for src in [
        "",
        "\n\n  \n",
        "# just a comment\n# and another\n",
        "---\n",
        "~\n",
    ] {
        let l = load(src);
        assert!(l.cluster.is_none());
        assert_eq!(l.diagnostics.count(Severity::Error), 1, "{src:?}");
        let d = &l.diagnostics.items[0];
        assert!(
            d.message.contains("the spec is empty"),
            "{src:?}: {}",
            d.message
        );
    }
    let l = load("- apiVersion: hakube.io/v1alpha1\n");
    assert!(l.diagnostics.items[0].message.contains("is a list"));
}

#[test]
fn versions_past_either_end_are_named_for_their_end() {
    let c = |v: &str| {
        load(&seed_with(&[(
            "version: v1.37.0",
            &format!("version: {v}"),
        )]))
    };
    for newer in ["v1.38.0", "v2.0.0", "3.1.4"] {
        let l = c(newer);
        let d = find(
            &l,
            Severity::Error,
            "spec.kubernetes.version",
            "is newer than the newest version hakube supports (1.37)",
        );
        assert!(!d.message.contains("older"));
    }
    for older in ["v1.28.9", "v0.9.0"] {
        find(
            &c(older),
            Severity::Error,
            "spec.kubernetes.version",
            "is older than the oldest version hakube supports (1.29)",
        );
    }
}

#[test]
fn one_hundred_thousand_sans_validate_in_one_linear_pass() {
    // Correctness only; bench/validate.sh measures the time.
    let n = 100_000;
    let mut list = String::new();
    for i in 0..n {
        // Every name twice, and the VIP once by hand.
        list.push_str(&format!("      - san{}.example.com\n", i % (n / 2)));
    }
    list.push_str("      - 10.1.1.100\n");
    let src = seed_with(&[(
        "      - k8s-api.company.local\n",
        &format!("      - k8s-api.company.local\n{list}"),
    )]);
    let l = load(&src);
    let c = l.cluster.as_ref().expect("valid");
    let sans = &c.kubernetes.cert_sans;
    // 1 + n/2 names, the VIP, and the three control planes added.
    assert_eq!(sans.len(), 1 + n / 2 + 1 + 3);
    assert_eq!(sans[1], "san0.example.com");
    assert_eq!(sans[n / 2], format!("san{}.example.com", n / 2 - 1));
    let unique: std::collections::HashSet<&String> = sans.iter().collect();
    assert_eq!(unique.len(), sans.len());
    find(
        &l,
        Severity::Info,
        "spec.kubernetes.certSANs",
        "added to the API server certificate SANs: 10.1.1.101, 10.1.1.102, 10.1.1.103",
    );
}

#[test]
fn certificate_validity_is_bounded_and_short_ones_warn() {
    let c = load(SEED).cluster.expect("valid");
    assert_eq!(
        c.pki.certificate_validity.as_secs(),
        365 * 86400,
        "the default"
    );
    let with = |v: &str| format!("{SEED}  pki:\n    certificateValidity: {v}\n");
    let src = with("10m");
    let l = load(&src);
    assert_eq!(
        l.cluster
            .as_ref()
            .map(|c| c.pki.certificate_validity.as_secs()),
        Some(600)
    );
    find(
        &l,
        Severity::Warning,
        "spec.pki.certificateValidity",
        "only 10m",
    );
    for bad in ["30s", "20y", "soon"] {
        let src = with(bad);
        let l = load(&src);
        assert!(l.cluster.is_none(), "{bad} accepted");
        let d = find(&l, Severity::Error, "spec.pki.certificateValidity", "");
        assert_eq!(d.location.map(|x| x.line), Some(line_of(&src, bad)), "{d}");
    }
}

#[test]
fn pinned_etcd_and_packages() {
    let sha = "ab".repeat(32);
    let pinned = format!(
        "    quotaBackendBytes: 2GiB\n    version: v3.5.1\n    source:\n      path: etcd.tar.gz\n      sha256: {}\n",
        sha.to_uppercase()
    );
    let l = load(&seed_with(&[("    quotaBackendBytes: 2GiB\n", &pinned)]));
    let c = l.cluster.as_ref().expect("valid");
    let i = c.etcd.install.as_ref().expect("pinned");
    assert_eq!(i.version, semver::Version::new(3, 5, 1));
    assert_eq!(i.sha256, sha, "lower-cased");
    assert_eq!(
        i.source,
        spec::EtcdSource::Path(Path::new("/nonexistent").join("etcd.tar.gz"))
    );
    assert_eq!(c.etcd.binary, "/opt/hakube/etcd/current/etcd");

    // Each mistake at its own path, all in one run.
    let bad = "    quotaBackendBytes: 2GiB\n    binary: /usr/bin/etcd\n    version: 3.5\n    source:\n      url: ftp://x\n      sha256: abc\n";
    let l = load(&seed_with(&[
        ("    quotaBackendBytes: 2GiB\n", bad),
        (
            "    apiPort: 6443\n",
            "    apiPort: 6443\n    packages: {haproxy: \"2.6; rm -rf /\", keepalived: 1:2.2.7-1+b2}\n",
        ),
    ]));
    assert!(l.cluster.is_none());
    find(
        &l,
        Severity::Error,
        "spec.etcd.version",
        "not an etcd release",
    );
    find(
        &l,
        Severity::Error,
        "spec.etcd.binary",
        "exclude each other",
    );
    find(
        &l,
        Severity::Error,
        "spec.etcd.source.url",
        "not an http(s) URL",
    );
    find(
        &l,
        Severity::Error,
        "spec.etcd.source.sha256",
        "64 hex digits",
    );
    find(
        &l,
        Severity::Error,
        "spec.loadBalancer.packages.haproxy",
        "not a Debian package version",
    );

    let l = load(&seed_with(&[(
        "    quotaBackendBytes: 2GiB\n",
        "    quotaBackendBytes: 2GiB\n    version: v3.5.1\n",
    )]));
    find(
        &l,
        Severity::Error,
        "spec.etcd.version",
        "needs the tarball",
    );
}

#[test]
fn access_is_direct_ssh_or_auto_and_defaults_to_auto() {
    use hakube::spec::Access;
    let access = |src: &str| load(src).cluster.map(|c| c.access);
    assert_eq!(access(SEED), Some(Access::Auto));
    let without = seed_with(&[("  access: auto", "")]);
    assert_eq!(access(&without), Some(Access::Auto));
    let ssh = seed_with(&[("access: auto", "access: ssh")]);
    assert_eq!(access(&ssh), Some(Access::Ssh));
    let direct = seed_with(&[("access: auto", "access: direct")]);
    assert_eq!(access(&direct), Some(Access::Direct));
    let src = seed_with(&[("access: auto", "access: dirct")]);
    let l = load(&src);
    assert!(l.cluster.is_none());
    let d = find(
        &l,
        Severity::Error,
        "spec.access",
        "unknown access \"dirct\"",
    );
    assert_eq!(
        d.location.map(|x| x.line),
        Some(line_of(&src, "access: dirct")),
        "{d:?}"
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or_default()
            .contains("did you mean direct"),
        "{d:?}"
    );
}

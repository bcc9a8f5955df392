//! Every rendered config passes the real tool that will load it: `haproxy -c`,
//! `keepalived --config-test` and `promtool`. Alert rules have `promtool test rules` unit tests
//! that fire and clear. Needs haproxy, keepalived and prometheus installed (`scripts/setup.sh`).

use hakube::render::{self, RenderedFile, Secrets, check};
use hakube::spec;
use std::path::Path;
use std::process::Command;

const SEED: &str = include_str!("../examples/seed.yaml");

fn render_to(src: &str, dir: &Path) -> Vec<RenderedFile> {
    let l = spec::load_str(src, "cluster.yaml", Path::new("/nonexistent"));
    let c = l
        .cluster
        .unwrap_or_else(|| panic!("invalid: {:?}", l.diagnostics.items));
    let f = render::render(
        &c,
        &Secrets {
            stats_password: "tool-check-pw".into(),
        },
    )
    .expect("render");
    render::write_tree(&f, dir).expect("write");
    f
}

fn variants() -> Vec<(&'static str, String)> {
    vec![
        ("seed", SEED.to_string()),
        (
            "vrrp-v2-auth",
            SEED.replace("version: 3 ", "version: 2 ")
                .replace("advertInterval: 200ms", "advertInterval: 1s\n      authPass: s3cret"),
        ),
        (
            "runbook-tcp-check",
            SEED.replace("type: https", "type: tcp").replace("interval: 1s", "interval: 10s"),
        ),
        (
            "single-lb-no-ingress-no-stats",
            SEED.replace("    - { name: lb2,     address: 10.1.1.12,  roles: [loadbalancer] }\n", "")
                .replace("priorities: { lb1: 110, lb2: 100 }", "priorities: { lb1: 110 }")
                .replace("    stats:\n      port: 9000", "    stats:\n      enabled: false\n      port: 9000")
                .replace(
                    "    ingress:\n      httpPort: 80\n      httpsPort: 443\n      httpNodePort: 30080\n      httpsNodePort: 30443\n",
                    "",
                ),
        ),
        (
            "colocated-lb-v1beta3-stacked",
            SEED.replace("    apiPort: 6443\n", "")
                .replace("roles: [control-plane] }", "roles: [control-plane, loadbalancer] }")
                .replace("priorities: { lb1: 110, lb2: 100 }", "priorities: { lb1: 110, lb2: 100, master1: 90, master2: 80, master3: 70 }")
                .replace("version: v1.37.0", "version: v1.30.2")
                .replace("management: hakube", "management: kubeadm"),
        ),
    ]
}

#[test]
fn every_rendered_config_passes_its_tool() {
    for (name, src) in variants() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = render_to(&src, dir.path());
        let results = check::check_tree(&files, dir.path());
        let tools: std::collections::BTreeSet<&str> =
            results.iter().map(|r| r.tool.as_str()).collect();
        for t in [
            "haproxy -c",
            "keepalived --config-test",
            "promtool check rules",
            "promtool check config",
        ] {
            assert!(tools.contains(t), "{name}: {t} did not run");
        }
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("{name}: {} {} ({}):\n{}", r.host, r.file, r.tool, r.output))
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    }
}

#[test]
fn the_checks_can_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = render_to(SEED, dir.path());
    let cfg = dir.path().join("lb1/etc/haproxy/haproxy.cfg");
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(&cfg, text.replace("balance leastconn", "balance sometimes")).expect("write");
    let kc = dir.path().join("lb2/etc/keepalived/keepalived.conf");
    let text = std::fs::read_to_string(&kc).expect("read");
    std::fs::write(
        &kc,
        text.replace("virtual_router_id 51", "virtual_router_id 300"),
    )
    .expect("write");
    std::fs::remove_file(dir.path().join("lb1/etc/keepalived/check_apiserver.sh")).expect("rm");
    let results = check::check_tree(&files, dir.path());
    let bad = |host: &str, tool: &str| {
        results
            .iter()
            .any(|r| r.host == host && r.tool == tool && !r.ok)
    };
    assert!(bad("lb1", "haproxy -c"), "a broken haproxy.cfg must fail");
    assert!(
        bad("lb2", "keepalived --config-test"),
        "a bad router id must fail"
    );
    assert!(
        bad("lb1", "keepalived --config-test"),
        "a missing track script must fail"
    );
}

#[test]
fn alert_rules_fire_and_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    render_to(SEED, dir.path());
    let mon = dir.path().join("_cluster/monitoring");
    std::fs::copy(
        "tests/promtool/alerts.test.yml",
        mon.join("alerts.test.yml"),
    )
    .expect("copy test");
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&mon)
        .output()
        .expect("promtool runs (apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

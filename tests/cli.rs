//! The command line as a user meets it: exit codes, JSON, messages, files written.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::Path;

const SEED: &str = include_str!("../examples/seed.yaml");

fn hakube() -> Command {
    Command::cargo_bin("hakube").expect("binary built")
}

fn spec_in(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("cluster.yaml");
    std::fs::write(&p, text).expect("write spec");
    p
}

#[test]
fn plan_on_the_seed_is_clean() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("VIP 10.1.1.100:6443"))
        .stdout(predicate::str::contains("etcd (3 members, quorum 2)"))
        .stdout(predicate::str::contains("Single points of failure: none."));
}

#[test]
fn plan_exit_codes_follow_severity() {
    let dir = tempfile::tempdir().expect("tmp");
    // Warnings only: one LB.
    let one_lb = SEED
        .replace(
            "    - { name: lb2,     address: 10.1.1.12,  roles: [loadbalancer] }\n",
            "",
        )
        .replace("{ lb1: 110, lb2: 100 }", "{ lb1: 110 }");
    let f = spec_in(dir.path(), &one_lb);
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("single load balancer (lb1)"))
        .stdout(predicate::str::contains(
            "load balancer lb1 (holds the only copy of the VIP)",
        ));
    // Errors: exit 2, with file:line:column and a fix.
    let bad = SEED.replace("routerId: 51", "routerId: 300");
    let f = spec_in(dir.path(), &bad);
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cluster.yaml:31:17: spec.loadBalancer.vrrp.routerId: VRRP router id 300 is outside 1-255"))
        .stderr(predicate::str::contains("help:"));
}

/// `plan -o json` on the seed, which must exit 0.
fn seed_plan_json() -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    let out = hakube()
        .args(["plan", "-o", "json", "-f"])
        .arg(&f)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_slice(&out.stdout).expect("valid JSON on stdout")
}

#[test]
fn plan_json_has_the_same_facts() {
    let v = seed_plan_json();
    assert_eq!(v["valid"], true);
    assert_eq!(v["plan"]["endpoint"], "10.1.1.100:6443");
    let layers = v["plan"]["layers"].as_array().expect("layers");
    let layer = |prefix: &str| {
        layers
            .iter()
            .find(|l| l["name"].as_str().unwrap_or_default().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} layer"))
    };
    let etcd = layer("etcd");
    assert_eq!(etcd["survives"], 1);
    assert_eq!(etcd["failover_ms"], serde_json::json!([1000, 2000]));
    // Host loss: 3 x 200ms + (256-100)/256 x 200ms = 721ms; no API server behind the holder:
    // up to one more track-script interval (1s).
    assert_eq!(layer("VIP")["failover_ms"], serde_json::json!([721, 1721]));
    // HAProxy exited on the holder: FAULT and a priority-0 advert, so only the backup's skew
    // (156/256 x 200ms = 121ms); hung: after up to one track-script interval and its 500ms wait.
    assert_eq!(
        layer("HAProxy")["failover_ms"],
        serde_json::json!([121, 1621])
    );
    // A silent API server: 2 checks that fail to connect within min(200ms, inter 400ms),
    // 200ms apart (fastinter), after up to one interval: 600-1000ms.
    let api = layer("API servers");
    assert_eq!(api["failover_ms"], serde_json::json!([0, 1000]));
    assert!(
        api["how"]
            .as_str()
            .unwrap_or_default()
            .contains("= 600ms-1.0s"),
        "{}",
        api["how"]
    );
}

#[test]
fn missing_spec_says_how_to_get_one() {
    let dir = tempfile::tempdir().expect("tmp");
    hakube()
        .current_dir(dir.path())
        .arg("plan")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot read the cluster spec cluster.yaml",
        ))
        .stderr(predicate::str::contains("hakube lab up"));
}

#[test]
fn render_writes_every_host_and_keeps_the_password_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    let out = dir.path().join("out");
    hakube()
        .args(["render", "-f"])
        .arg(&f)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("rendered 71 files for 8 hosts"));
    for h in [
        "lb1", "lb2", "master1", "master2", "master3", "worker1", "worker2", "worker3", "_cluster",
    ] {
        assert!(out.join(h).is_dir(), "{h} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    let pw = dir
        .path()
        .join(".hakube/ha-cluster/secrets/haproxy-stats.password");
    assert_eq!(
        std::fs::metadata(&pw)
            .expect("password file")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let password = std::fs::read_to_string(&pw)
        .expect("read")
        .trim()
        .to_string();
    assert!(password.len() >= 24);
    let env = std::fs::read_to_string(out.join("lb1/etc/haproxy/hakube.env")).expect("env");
    assert!(env.contains(&password));
    let cfg = std::fs::read_to_string(out.join("lb1/etc/haproxy/haproxy.cfg")).expect("cfg");
    assert!(!cfg.contains(&password));
    // Same spec, same bytes: a second render changes nothing.
    hakube()
        .args(["render", "-f"])
        .arg(&f)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("(0 changed)"));
}

#[test]
fn render_refuses_an_invalid_spec() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(
        dir.path(),
        &SEED.replace("vip: 10.1.1.100", "vip: 10.1.1.101"),
    );
    let out = dir.path().join("out");
    hakube()
        .args(["render", "-f"])
        .arg(&f)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nothing rendered"));
    assert!(!out.exists());
}

#[test]
fn help_covers_every_command() {
    for cmd in [
        vec!["--help"],
        vec!["plan", "--help"],
        vec!["render", "--help"],
        vec!["lab", "--help"],
    ] {
        hakube()
            .args(&cmd)
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage:"));
    }
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    // clap_complete's fish script lists flags but not a positional's values.
    for (shell, values) in [("bash", true), ("zsh", true), ("fish", false)] {
        let out = hakube().args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("replace-ca"), "{shell}");
        assert_eq!(script.contains("etcd-leader-loss"), values, "{shell}");
    }
    let dir = tempfile::tempdir().expect("tmp");
    hakube()
        .args(["man", "--out"])
        .arg(dir.path())
        .assert()
        .code(0);
    let page = std::fs::read_to_string(dir.path().join("hakube-apply.1")).expect("apply's page");
    assert!(page.contains("replace\\-ca"), "{page}");
    assert!(dir.path().join("hakube-drill.1").exists());
}

#[test]
fn status_without_operator_state_fails_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    hakube()
        .args(["status", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no operator state"))
        .stderr(predicate::str::contains("run `hakube apply"));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("cluster.yaml")]);
}

#[test]
fn a_binary_file_is_not_text_and_no_flag_is_suggested() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("cluster.yaml");
    std::fs::write(&f, b"\x7fELF\x02\x01\x01\x00\xff\xfe binary").expect("write");
    let out = hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a cluster spec"), "{err}");
    assert!(err.contains("not UTF-8 text"), "{err}");
    assert!(!err.contains("-f"), "{err}");
    std::fs::write(&f, b"\xff\xfea\x00:\x00").expect("write");
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "it is UTF-16 text; save it as UTF-8",
        ));
    // NUL bytes are valid UTF-8, but no text file has them.
    std::fs::write(&f, b"apiVersion: x\0\0\0").expect("write");
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("NUL byte"));
}

#[test]
fn an_empty_file_says_it_is_empty() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), "# TODO: write the cluster\n\n");
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cluster.yaml: the spec is empty: it holds no YAML, only whitespace or comments",
        ))
        .stderr(predicate::str::contains("examples/seed.yaml"));
}

#[test]
fn yaml_problems_are_said_in_the_users_terms() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(
        dir.path(),
        &SEED.replace("routerId: 51", "routerId: 51\n      routerId: 52"),
    );
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cluster.yaml:32:7: spec.loadBalancer.vrrp.routerId: `routerId` is given twice in the same block, on line 31 and on line 32",
        ))
        .stderr(predicate::str::contains("DuplicateKeyPolicy").not());
    let f = spec_in(dir.path(), &format!("{SEED}---\n{SEED}"));
    let line = SEED.lines().count() + 1;
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "cluster.yaml:{line}:1: a second YAML document starts here: hakube expects one cluster per file"
        )))
        .stderr(predicate::str::contains("from_str_multiple").not());
    // Two unknown fields, both reported, each with its suggestion.
    let f = spec_in(
        dir.path(),
        &SEED
            .replace("routerId: 51", "routerID: 51")
            .replace("rise: 2", "rize: 2"),
    );
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cluster.yaml:31:7: spec.loadBalancer.vrrp.routerID: unknown field `routerID`",
        ))
        .stderr(predicate::str::contains("did you mean `routerId`?"))
        .stderr(predicate::str::contains("unknown field `rize`"))
        .stderr(predicate::str::contains("did you mean `rise`?"));
}

#[test]
fn plan_json_has_every_hosts_port_plan() {
    let v = seed_plan_json();
    let plans = v["ports"].as_array().expect("ports");
    assert_eq!(plans.len(), 8);
    let lb1 = &plans[0];
    assert_eq!(lb1["host"], "lb1");
    assert!(
        lb1["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .any(|l| {
                l["address"] == "10.1.1.100"
                    && l["port"] == 6443
                    && l["protocol"] == "tcp"
                    && l["owner"] == "haproxy-api"
                    && l["description"] == "HAProxy's API frontend"
                    && l["field"] == "spec.loadBalancer.apiPort"
            })
    );
    let master1 = plans
        .iter()
        .find(|p| p["host"] == "master1")
        .expect("master1");
    assert!(
        master1["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .any(|l| { l["address"] == "127.0.0.1" && l["port"] == 2381 && l["field"].is_null() })
    );
}

#[test]
fn upgrade_without_operator_state_fails_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    hakube()
        .args(["upgrade", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--probe"));
    hakube()
        .args(["upgrade", "--dry-run", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stdout(predicate::str::contains("no operator state"));
    assert!(!dir.path().join(".hakube").exists());
}

#[test]
fn certs_renew_dry_run_without_operator_state_fails_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    // Help text is wrapped to the terminal: compare it with whitespace collapsed.
    let help = |cmd: &str| {
        let o = hakube()
            .args(["certs", cmd, "--help"])
            .output()
            .expect("help");
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let renew = help("renew");
    for s in [
        "--dry-run",
        "`kubeadm certs renew all`",
        "one control plane at a time (never all at once)",
    ] {
        assert!(renew.contains(s), "{s:?} missing from: {renew}");
    }
    let check = help("check");
    assert!(
        check.contains("kubeadm certs check-expiration -o json"),
        "{check}"
    );
    hakube()
        .args(["certs", "renew", "--dry-run", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no operator state"));
    assert!(!dir.path().join(".hakube").exists());
}

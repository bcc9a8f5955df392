//! hakube from behind a bastion (root only): every host but lb1 drops all traffic from the
//! operator's side of the lab bridge, and lb1 lets only SSH in. With `ssh.proxyJump: lb1` (and
//! no ssh_config, so the jump hop has only the spec's settings) and `access: ssh`, apply,
//! status, doctor, a backup and a drill pass; `auto` picks ssh by itself; `direct` sees etcd
//! down, which shows the firewall holds. A wrong jump user is blamed on the jump host, not on
//! the targets.

mod common;
use common::*;
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const NET: &str = "10.210.0";
const MASTERS: &str = "via master1, master2, master3";

/// Drop everything from the operator (the bridge's .1) on `host`; on the bastion, all but SSH.
fn firewall(lab: &Lab, host: &str, bastion: bool) {
    let op = lab.ip(1);
    let ssh = if bastion {
        format!("ip saddr {op} tcp dport 22 accept; ")
    } else {
        String::new()
    };
    let rules = format!(
        "table inet hkbastion {{ chain input {{ type filter hook input priority -10; policy accept; {ssh}ip saddr {op} drop; }}; }}"
    );
    let o = lab.exec(host, &format!("echo '{rules}' | nft -f -"));
    assert!(o.status.success(), "nft on {host}: {}", text(&o));
}

/// The lab's spec without its ssh_config, behind `jump`, with `access` (none: the default).
fn write_spec(lab: &Lab, original: &str, jump: &str, access: Option<&str>) {
    let mut out = String::new();
    for l in original.lines() {
        if l.trim_start().starts_with("configFile:") {
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if l.trim_start().starts_with("knownHostsFile:") {
            out.push_str(&format!("    proxyJump: {jump}\n"));
            if let Some(a) = access {
                out.push_str(&format!("  access: {a}\n"));
            }
        }
    }
    assert!(out.contains("proxyJump"), "{out}");
    std::fs::write(lab.spec(), out).expect("write the spec");
}

fn tcp_answers(addr: &str) -> bool {
    let a: SocketAddr = addr.parse().expect("address");
    TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok()
}

fn status(lab: &Lab) -> (i32, Value, String) {
    let o = lab.hakube(&["status", "-o", "json"]);
    (
        o.status.code().unwrap_or(-1),
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
        text(&o),
    )
}

#[test]
fn behind_a_bastion_everything_goes_through_ssh() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("bst1", NET);
    let original = std::fs::read_to_string(lab.spec()).expect("spec");
    let bastion = lab.ip(11);
    for h in ["lb2", "master1", "master2", "master3", "worker1", "worker2"] {
        firewall(&lab, h, false);
    }
    firewall(&lab, "lb1", true);
    // The firewall holds: only the bastion's SSH answers from here.
    assert!(tcp_answers(&format!("{bastion}:22")));
    for last in [12, 101, 201] {
        assert!(!tcp_answers(&format!("{}:22", lab.ip(last))), ".{last}:22");
    }

    // The jump hop logs in with the spec's user: a wrong one is the jump host's failure.
    write_spec(&lab, &original, &format!("nobody@{bastion}"), Some("ssh"));
    let o = lab.hakube(&["apply", "--dry-run"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "master1: cannot connect over SSH to {}: the jump host {bastion} (spec.ssh.proxyJump) failed: authentication failed",
            lab.ip(101)
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!("nobody@{bastion}: Permission denied")),
        "{t}"
    );

    write_spec(&lab, &original, &bastion, Some("ssh"));
    let o = lab.hakube(&["apply"]);
    assert!(
        o.status.success(),
        "apply through the bastion:\n{}",
        text(&o)
    );

    let (code, s, t) = status(&lab);
    assert_eq!(code, 0, "status through the bastion: {t}");
    assert_eq!(s["overall"], "healthy", "{s}");
    assert_eq!(s["reached"]["etcd"], MASTERS, "{s}");
    assert_eq!(s["reached"]["api"], MASTERS, "{s}");
    assert_eq!(s["reached"]["haproxy"], "via lb1, lb2", "{s}");
    let vip = s["reached"]["vip"].as_str().unwrap_or_default();
    assert!(vip == "via lb1" || vip == "via lb2", "{s}");
    let o = lab.hakube(&["status"]);
    assert!(
        text(&o).contains("reached through SSH (spec.access): VIP via lb"),
        "{}",
        text(&o)
    );

    let o = lab.hakube(&["doctor", "-o", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert!(o.status.success(), "doctor: {}", text(&o));
    assert_eq!(v["findings"], serde_json::json!([]), "{v}");

    // backup streams its snapshot from a member through that member's forward.
    let o = lab.hakube(&["backup", "-o", "json"]);
    assert!(
        o.status.success(),
        "backup through the bastion: {}",
        text(&o)
    );

    // The drill's client probe goes to the VIP through an LB's forward.
    let reports = tempfile::tempdir().expect("tempdir");
    let d = Background::drill(
        &lab,
        &[
            "lb-failover",
            "--duration",
            "3s",
            "--recovery-timeout",
            "90s",
        ],
        reports.path(),
    );
    let (code, v, log) = d.finish();
    assert_eq!(code, 0, "drill: {v}\n{log}");
    let sc = &v["scenarios"][0];
    assert_eq!(sc["outcome"], "passed", "{v}\n{log}");
    assert_eq!(sc["writes"]["lost"], serde_json::json!([]), "{sc}");
    assert!(log.contains("probes through SSH"), "{log}");

    // auto finds the hosts unreachable from here and goes through SSH by itself.
    write_spec(&lab, &original, &bastion, None);
    let (code, s, t) = status(&lab);
    assert_eq!(code, 0, "status with access auto: {t}");
    assert_eq!(s["reached"]["etcd"], MASTERS, "{s}");

    // With the lab's ssh_config kept, the jump host can be its alias there.
    let with_config = original.replace(
        "    knownHostsFile:",
        "    proxyJump: lb1\n    knownHostsFile:",
    );
    assert_ne!(with_config, original);
    std::fs::write(
        lab.spec(),
        with_config.replace("\n  hosts:", "\n  access: ssh\n  hosts:"),
    )
    .expect("write the spec");
    let (code, s, t) = status(&lab);
    assert_eq!(code, 0, "status through the alias lb1: {t}");
    assert_eq!(s["reached"]["etcd"], MASTERS, "{s}");

    // Without the tunnels, etcd is out of reach: the test above could fail.
    write_spec(&lab, &original, &bastion, Some("direct"));
    let (code, s, t) = status(&lab);
    assert_ne!(code, 0, "{t}");
    assert_eq!(s["reached"]["etcd"], "direct", "{s}");
    assert_eq!(verdict(&s, "etcd").0, "down", "{s}");
    let o = lab.etcdctl(&["endpoint", "health"]);
    assert!(!o.status.success(), "etcd answered directly: {}", text(&o));
}

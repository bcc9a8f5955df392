//! etcd member replacement by `apply` on a real lab (root only): a member whose data is gone is
//! removed, added back as a learner with a clean data dir, started with state `existing` and
//! promoted; with quorum lost, apply refuses and names the restore.

mod common;
use common::*;
use std::process::{Command, Output};
use std::time::Instant;

/// `etcdctl member list` as (name, id, is_learner).
fn members(lab: &Lab) -> Vec<(String, String, bool)> {
    let o = lab.etcdctl(&["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_string(),
                        m["ID"].to_string(),
                        m["isLearner"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn apply(lab: &Lab) -> Output {
    Command::new(HAKUBE)
        .arg("apply")
        .arg("-f")
        .arg(lab.spec())
        .output()
        .expect("run apply")
}

fn wipe(lab: &Lab, host: &str) {
    lab.fault(&["stop", host, "etcd"]);
    let o = lab.exec(
        host,
        "rm -rf /var/lib/etcd/* && ls -A /var/lib/etcd | wc -l",
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0",
        "{}",
        text(&o)
    );
}

#[test]
fn apply_replaces_a_member_that_lost_its_data_and_refuses_without_quorum() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tmemb", "10.141.0");
    lab.apply();
    let before = members(&lab);
    assert_eq!(before.len(), 3, "{before:?}");
    let old_id = before
        .iter()
        .find(|m| m.0 == "master2")
        .map(|m| m.1.clone())
        .expect("master2 is a member");

    // master2 loses its data; apply repairs it with no manual step.
    wipe(&lab, "master2");
    let t = Instant::now();
    let o = apply(&lab);
    let took = t.elapsed();
    let out = text(&o);
    assert!(o.status.success(), "apply failed:\n{out}");
    eprintln!("repair by apply took {:.1}s", took.as_secs_f64());
    assert!(out.contains("replacing etcd member master2"), "{out}");
    assert!(out.contains("--learner"), "{out}");
    let after = members(&lab);
    let m2 = after
        .iter()
        .find(|m| m.0 == "master2")
        .expect("master2 back");
    assert_ne!(m2.1, old_id, "a new member id: {after:?}");
    assert!(
        after.iter().all(|m| !m.2),
        "every member promoted: {after:?}"
    );
    assert_eq!(after.len(), 3, "{after:?}");
    let h = lab.etcdctl(&["endpoint", "health", "--cluster"]);
    assert!(h.status.success(), "{}", text(&h));
    // The join file does not outlive the join.
    let o = lab.exec("master2", "ls /etc/etcd/etcd-join.env 2>&1");
    let ls = String::from_utf8_lossy(&o.stdout);
    assert!(ls.contains("No such file"), "{ls}");
    // And a second apply has nothing to do.
    let o = apply(&lab);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 changed"), "{}", text(&o));

    // Two members lose their data: quorum is gone, and apply refuses before touching anything.
    wipe(&lab, "master2");
    wipe(&lab, "master3");
    let o = apply(&lab);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("hakube restore BACKUP -f SPEC --yes"), "{out}");
    for host in ["master2", "master3"] {
        let o = lab.exec(
            host,
            "ls -A /var/lib/etcd | wc -l; systemctl is-active etcd",
        );
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(s.starts_with("0\n"), "{host} data dir untouched: {s}");
        assert!(
            s.contains("inactive") || s.contains("failed"),
            "{host}: {s}"
        );
    }
    // With the last member stopped too, none answers: the empty members must still not start
    // (they would form a new, empty cluster beside master1's data).
    lab.fault(&["stop", "master1", "etcd"]);
    let o = apply(&lab);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("etcd was formed, but no member answers"),
        "{out}"
    );
    assert!(out.contains("master2, master3 have no data"), "{out}");
    for host in ["master1", "master2", "master3"] {
        let o = lab.exec(host, "systemctl is-active etcd");
        assert!(!o.status.success(), "{host}: etcd was started");
    }
}

/// The drill's client probe (`drill soak`: no fault) runs while apply replaces a member whose
/// data is gone: clients through the VIP see no failed request and no write is lost.
#[test]
fn a_member_is_replaced_under_the_client_probe_with_nothing_failed_or_lost() {
    use std::time::Duration;
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tmemp", "10.142.0");
    lab.apply();
    wipe(&lab, "master2");
    // Let HAProxy take master2's API server out first: the wipe is the disaster, the
    // replacement is what is measured.
    eventually(
        "HAProxy rates master2 DOWN on both LBs",
        Duration::from_secs(30),
        || {
            let down = [11, 12].iter().all(|lb| {
                lab.haproxy_stats(*lb)
                    .lines()
                    .any(|l| l.contains(",master2,") && l.contains(",DOWN"))
            });
            if down { Ok(()) } else { Err("not yet".into()) }
        },
    );
    let reports = tempfile::tempdir().expect("tempdir");
    let probe = Background::drill(
        &lab,
        &["soak", "--force", "--duration", "45s"],
        reports.path(),
    );
    let probe = probe.await_injected(Duration::from_secs(60));
    let o = apply(&lab);
    assert!(o.status.success(), "apply failed:\n{}", text(&o));
    assert!(
        text(&o).contains("replacing etcd member master2"),
        "{}",
        text(&o)
    );
    let (_, v, log) = probe.finish();
    let sc = &v["scenarios"][0];
    assert_eq!(sc["scenario"], "soak", "{log}");
    let m = &sc["metrics"];
    eprintln!(
        "replacement under the probe: {} requests, {} failed, longest gap {} ms",
        m["requests"], m["failed"], m["downtime_ms"]
    );
    assert!(
        m["ok"].as_u64().unwrap_or(0) > 100,
        "the probe ran: {m}\n{log}"
    );
    assert_eq!(m["failed"], 0, "no failed request: {m}\n{log}");
    assert_eq!(sc["writes"]["lost"], serde_json::json!([]), "{log}");
    assert!(
        sc["writes"]["acknowledged"].as_u64().unwrap_or(0) > 10,
        "{log}"
    );
    assert_eq!(sc["outcome"], "passed", "{}\n{log}", sc["message"]);
}

/// A control plane is lost for good (partitioned, never coming back): the spec drops it and
/// names another host as control plane, and apply hands the dead member's seat to the new one
/// without ever reaching the old host.
#[test]
fn a_new_host_takes_the_seat_of_a_partitioned_member() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tmemq", "10.143.0");
    lab.apply();
    lab.fault(&["partition", "master3"]);
    let spec = std::fs::read_to_string(lab.spec()).expect("read the spec");
    let edited: String = spec
        .lines()
        .filter(|l| !l.contains("name: master3,"))
        .map(|l| {
            if l.contains("name: worker2,") {
                l.replace("roles: [worker]", "roles: [control-plane]")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert_ne!(edited, spec, "the spec was edited");
    std::fs::write(lab.spec(), edited).expect("write the spec");
    let o = apply(&lab);
    let out = text(&o);
    assert!(o.status.success(), "apply failed:\n{out}");
    assert!(out.contains("replacing etcd member master3"), "{out}");
    assert!(out.contains("not in the spec and does not answer"), "{out}");
    let names: Vec<String> = members(&lab).into_iter().map(|m| m.0).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"worker2".to_string()), "{names:?}");
    assert!(!names.contains(&"master3".to_string()), "{names:?}");
    // Health of every member in the list (master3 is only used to find it).
    let h = lab.etcdctl(&["endpoint", "health", "--cluster"]);
    assert!(h.status.success(), "{}", text(&h));
    assert!(
        text(&h).contains(&format!("{}:2379 is healthy", lab.ip(202))),
        "{}",
        text(&h)
    );
}

//! `status` and `doctor` on a real lab (root only): break one thing at a time with the lab's
//! fault primitives; both must name the fault, agree with the real etcdctl and HAProxy's own
//! stats, and clear after the heal.

mod common;
use common::*;
use std::time::Duration;

fn status_json(lab: &Lab) -> (i32, serde_json::Value) {
    let o = lab.hakube(&["status", "-o", "json"]);
    (
        o.status.code().unwrap_or(-1),
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null),
    )
}

fn verdict(s: &serde_json::Value, layer: &str) -> (String, String) {
    s["verdicts"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["layer"] == layer))
        .map(|x| {
            (
                x["health"].as_str().unwrap_or("").to_string(),
                x["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

fn findings(lab: &Lab) -> Vec<(String, String, String)> {
    let o = lab.hakube(&["doctor", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    v["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["rule"].as_str().unwrap_or("").into(),
                        f["severity"].as_str().unwrap_or("").into(),
                        f["evidence"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until `layer` has `health` with a reason containing `needle`.
fn await_verdict(lab: &Lab, layer: &str, health: &str, needle: &str) -> serde_json::Value {
    eventually(
        &format!("status {layer} {health} ({needle})"),
        Duration::from_secs(30),
        || {
            let (_, s) = status_json(lab);
            let (h, r) = verdict(&s, layer);
            if h == health && r.contains(needle) {
                Ok(s)
            } else {
                Err(format!("{h}: {r}"))
            }
        },
    )
}

fn await_finding(lab: &Lab, rule: &str, needle: &str) -> (String, String, String) {
    eventually(
        &format!("doctor {rule} ({needle})"),
        Duration::from_secs(30),
        || {
            let f = findings(lab);
            f.iter()
                .find(|(r, _, e)| r == rule && e.contains(needle))
                .cloned()
                .ok_or_else(|| format!("{f:?}"))
        },
    )
}

fn await_healthy(lab: &Lab) {
    eventually("status healthy", Duration::from_secs(45), || {
        let (code, s) = status_json(lab);
        if code == 0 {
            Ok(())
        } else {
            Err(format!("exit {code}: {:?}", s["verdicts"]))
        }
    });
}

#[test]
fn status_and_doctor_name_each_fault_and_clear_after_heal() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tstatus", "10.97.0");
    lab.apply();
    await_healthy(&lab);
    let f = findings(&lab);
    assert!(
        f.iter().all(|(r, _, _)| r == "haproxy-backends"),
        "a fresh cluster has no findings but recent backend changes: {f:?}"
    );

    // 1. haproxy stopped on the VIP holder: the VIP moves, HAProxy is degraded on that LB.
    let (_, s) = status_json(&lab);
    let holder = s["vip_holders"][0].as_str().unwrap_or("lb1").to_string();
    let other = if holder == "lb1" { "lb2" } else { "lb1" };
    lab.fault(&["stop", &holder, "haproxy"]);
    await_verdict(
        &lab,
        "haproxy",
        "degraded",
        &format!("HAProxy down on {holder}"),
    );
    let s = await_verdict(&lab, "vip", "healthy", &format!("on {other}"));
    assert_eq!(s["vip_holders"], serde_json::json!([other]));
    let holder_octet = if holder == "lb1" { 11 } else { 12 };
    assert!(
        lab.haproxy_stats(holder_octet).is_empty(),
        "cross-check: the stats page on {holder} is down"
    );
    await_finding(
        &lab,
        "haproxy-backends",
        &format!("HAProxy on {holder} does not answer"),
    );
    lab.fault(&["start", &holder, "haproxy"]);
    await_healthy(&lab);

    // 2. A partitioned control plane.
    lab.fault(&["partition", "master2"]);
    await_verdict(&lab, "etcd", "degraded", "down: master2");
    await_verdict(&lab, "api", "degraded", "master2");
    await_finding(&lab, "etcd-quorum-at-risk", "one more loss breaks quorum");
    await_finding(&lab, "host-unreachable", "master2");
    let es = text(&lab.etcdctl(&["endpoint", "status"]));
    assert!(
        es.contains(&lab.ip(102))
            && (es.contains("context deadline exceeded") || es.contains("Failed")),
        "cross-check etcdctl: {es}"
    );
    lab.fault(&["heal", "master2"]);
    await_healthy(&lab);

    // 3. One etcd member stopped: etcd degraded, and HAProxy takes that API server out.
    lab.fault(&["stop", "master3", "etcd"]);
    await_verdict(&lab, "etcd", "degraded", "down: master3");
    await_verdict(&lab, "haproxy", "degraded", "master3@lb1 DOWN");
    await_finding(&lab, "etcd-member-unreachable", "master3");
    let stats = lab.haproxy_stats(11);
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("k8s-api,master3,") && l.contains(",DOWN,")),
        "cross-check haproxy stats:\n{stats}"
    );
    lab.fault(&["start", "master3", "etcd"]);
    await_healthy(&lab);

    // 4. The VIP forced onto both LBs: split brain.
    let (_, s) = status_json(&lab);
    let holder = s["vip_holders"][0].as_str().unwrap_or("lb1").to_string();
    let other = if holder == "lb1" { "lb2" } else { "lb1" };
    let add = lab.exec(other, &format!("ip addr add {}/24 dev eth0", lab.ip(100)));
    assert!(add.status.success(), "{}", text(&add));
    await_verdict(&lab, "vip", "degraded", "split brain");
    let (_, sev, _) = await_finding(&lab, "split-brain", "is configured on");
    assert_eq!(sev, "critical");
    lab.exec(other, &format!("ip addr del {}/24 dev eth0", lab.ip(100)));
    await_healthy(&lab);

    // 5. An orphaned member: in etcd's membership, not in the spec. etcd refuses a member add
    // ("unhealthy cluster") until every member has been connected for 5 s, which a restart of
    // master3's etcd a few seconds ago may not have reached yet.
    eventually("etcd accepts a member add", Duration::from_secs(20), || {
        let add = lab.etcdctl(&[
            "member",
            "add",
            "ghost",
            &format!("--peer-urls=https://{}:2380", lab.ip(150)),
        ]);
        if add.status.success() {
            Ok(())
        } else {
            Err(text(&add))
        }
    });
    let (_, sev, _) = await_finding(&lab, "etcd-membership", "not in the spec");
    assert_eq!(sev, "critical");
    let list = text(&lab.etcdctl(&["member", "list"]));
    let id = list
        .lines()
        .find(|l| l.contains(&lab.ip(150)))
        .and_then(|l| l.split(',').next())
        .expect("ghost in member list")
        .trim()
        .to_string();
    let rm = lab.etcdctl(&["member", "remove", &id]);
    assert!(rm.status.success(), "{}", text(&rm));
    eventually("orphan finding clears", Duration::from_secs(20), || {
        let f = findings(&lab);
        if f.iter().any(|(r, _, _)| r == "etcd-membership") {
            Err(format!("{f:?}"))
        } else {
            Ok(())
        }
    });

    // 6. NOSPACE on a small test quota: apply rolls etcd to the new quota one member at a time.
    let spec = std::fs::read_to_string(lab.spec()).expect("spec");
    std::fs::write(
        lab.spec(),
        spec.replace(
            "    binary: /usr/local/bin/etcd\n",
            "    binary: /usr/local/bin/etcd\n    quotaBackendBytes: 16MiB\n",
        ),
    )
    .expect("write spec");
    lab.apply();
    await_healthy(&lab);
    let blob = "x".repeat(1 << 20);
    let file = lab.dir().join("blob");
    std::fs::write(&file, &blob).expect("blob");
    for i in 0..40 {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ETCDCTL_API=3 etcdctl --endpoints=https://{}:2379 --cacert={p}/ca.crt --cert={p}/hakube-operator.crt --key={p}/hakube-operator.key put /fill/{i} < {}",
                lab.ip(101),
                file.display(),
                p = lab.state().join("pki/etcd").display()
            ))
            .output()
            .expect("etcdctl put");
        if text(&o).contains("database space exceeded") {
            break;
        }
    }
    let alarms = text(&lab.etcdctl(&["alarm", "list"]));
    assert!(
        alarms.contains("NOSPACE"),
        "cross-check etcdctl alarm list: {alarms}"
    );
    await_verdict(&lab, "etcd", "degraded", "alarm");
    let (_, sev, _) = await_finding(&lab, "etcd-alarm", "Nospace");
    assert_eq!(sev, "critical");
    // The fix doctor gives: delete, compact, defragment, disarm.
    lab.etcdctl(&["del", "--prefix", "/fill/"]);
    let rev = text(&lab.etcdctl(&["endpoint", "status", "-w", "fields"]));
    let rev = rev
        .lines()
        .find(|l| l.contains("\"Revision\""))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    lab.etcdctl(&["compact", &rev]);
    lab.etcdctl(&["defrag", "--cluster"]);
    lab.etcdctl(&["alarm", "disarm"]);
    await_healthy(&lab);
}

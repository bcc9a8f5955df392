//! `status` and `doctor` on a real lab (root only): break one thing at a time with the lab's
//! fault primitives; both must name the fault, agree with the real etcdctl and HAProxy's own
//! stats, and clear after the heal.

mod common;
use common::*;
use std::time::Duration;

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

/// The hosts' lines in the lab's known_hosts replaced by another host's key, as after a
/// reinstall; returns the original file to put back.
fn change_host_keys(lab: &Lab, hosts: &[&str]) -> String {
    let kh = lab.dir().join("ssh/known_hosts");
    let known = std::fs::read_to_string(&kh).expect("known_hosts");
    let other_key = known
        .lines()
        .find(|l| l.starts_with("master1,"))
        .and_then(|l| l.split_once(' '))
        .map(|(_, k)| k.to_string())
        .expect("master1's key");
    let tampered: String = known
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((names, _)) if hosts.iter().any(|h| names.starts_with(&format!("{h},"))) => {
                format!("{names} {other_key}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&kh, tampered).expect("write known_hosts");
    known
}

#[test]
fn verdicts_name_the_real_cause() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("rttverdict", "10.122.0");
    lab.apply();
    // Right after apply: healthy, and no "flapping" for HAProxy's rise after its reloads.
    let (code, s) = status_json(&lab);
    assert_eq!(code, 0, "{}", s["verdicts"]);
    let f = findings(&lab);
    assert!(
        f.iter().all(|(r, _, _)| r != "haproxy-backends"),
        "HAProxy's rise after apply is not flapping: {f:?}"
    );

    // 1. No LB can be asked over SSH (their host keys changed), but the VIP answers: unknown,
    // not down.
    let known = change_host_keys(&lab, &["lb1", "lb2"]);
    let (code, s) = status_json(&lab);
    let (h, r) = verdict(&s, "vip");
    assert_eq!((code, h.as_str()), (1, "unknown"), "{r}");
    assert!(r.contains("lb1 (host key CHANGED)"), "{r}");
    let f = findings(&lab);
    assert!(f.iter().all(|(r, _, _)| r != "vip-missing"), "{f:?}");
    assert!(f.iter().any(|(r, _, _)| r == "vip-holder-unknown"), "{f:?}");
    let keys: Vec<_> = f.iter().filter(|(r, _, _)| r == "ssh-host-key").collect();
    assert_eq!(keys.len(), 2, "{f:?}");
    assert!(
        f.iter().all(|(r, _, _)| r != "host-unreachable"),
        "a changed key is not a host that is down: {f:?}"
    );
    let o = lab.hakube(&["doctor"]);
    let t = text(&o);
    assert!(
        t.contains(&format!(
            "ssh-keygen -R '{}' -f {}",
            lab.ip(11),
            lab.dir().join("ssh/known_hosts").display()
        )),
        "{t}"
    );
    std::fs::write(lab.dir().join("ssh/known_hosts"), known).expect("restore known_hosts");
    await_healthy(&lab);

    // 2. A hung HAProxy (SIGSTOP of its processes): alive, not answering. Told from a dead one.
    let (_, s) = status_json(&lab);
    let holder = s["vip_holders"][0].as_str().unwrap_or("lb1").to_string();
    let other = if holder == "lb1" { "lb2" } else { "lb1" };
    let pids = "pid=$(systemctl show -p MainPID --value haproxy); echo $pid $(cat /proc/$pid/task/*/children)";
    let pids = String::from_utf8_lossy(&lab.exec(other, pids).stdout).to_string();
    assert!(!pids.trim().is_empty(), "haproxy's pids on {other}");
    let stop = lab.exec(other, &format!("kill -STOP {pids}"));
    assert!(stop.status.success(), "{}", text(&stop));
    await_verdict(
        &lab,
        "haproxy",
        "degraded",
        &format!("HAProxy hung on {other}"),
    );
    let (_, sev, ev) = await_finding(&lab, "haproxy-backends", &format!("HAProxy on {other}"));
    assert_eq!(sev, "warning");
    assert!(ev.contains("stopped by a signal"), "{ev}");
    let o = lab.hakube(&["doctor"]);
    assert!(text(&o).contains("haproxy is hung"), "{}", text(&o));
    lab.exec(other, &format!("kill -CONT {pids}"));
    await_healthy(&lab);

    // 3. etcd crashes on a full disk: its data dir moved onto a small tmpfs that is then filled,
    // and writes to the cluster until master3's etcd cannot commit.
    let fill = lab.exec(
        "master3",
        "set -e; systemctl stop etcd; mkdir -p /tmp/etcd-small; \
         mount -t tmpfs -o size=150m tmpfs /tmp/etcd-small; cp -a /var/lib/etcd/. /tmp/etcd-small/; \
         mount --bind /tmp/etcd-small /var/lib/etcd; systemctl start etcd; \
         dd if=/dev/zero of=/var/lib/etcd/fill bs=1M 2>/dev/null || true; df -Pk /var/lib/etcd",
    );
    assert!(fill.status.success(), "{}", text(&fill));
    let blob = lab.dir().join("blob");
    std::fs::write(&blob, "x".repeat(200_000)).expect("blob");
    let p = lab.state().join("pki/etcd");
    eventually(
        "master3's etcd logs ENOSPC",
        Duration::from_secs(90),
        || {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for i in $(seq 1 20); do ETCDCTL_API=3 etcdctl --endpoints=https://{}:2379 --cacert={p}/ca.crt --cert={p}/hakube-operator.crt --key={p}/hakube-operator.key --command-timeout=3s put /fill/$i < {}; done",
                    lab.ip(101),
                    blob.display(),
                    p = p.display()
                ))
                .output();
            let log = lab.exec(
                "master3",
                "systemctl status etcd -n 500 | grep -c 'no space left on device'",
            );
            match String::from_utf8_lossy(&log.stdout).trim() {
                "0" | "" => Err("not yet".into()),
                _ => Ok(()),
            }
        },
    );
    // etcd crash-loops (Restart=always): between crashes it may answer for a moment, so the
    // finding is read whole from the one doctor run that shows it.
    let f = eventually(
        "doctor names the full disk",
        Duration::from_secs(30),
        || {
            let o = lab.hakube(&["doctor", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            v["findings"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|f| {
                            f["rule"] == "etcd-member-unreachable"
                                && f["evidence"]
                                    .as_str()
                                    .is_some_and(|e| e.contains("no space left on device"))
                        })
                        .cloned()
                })
                .ok_or_else(|| format!("{}", v["findings"]))
        },
    );
    let field = |k: &str| f[k].as_str().unwrap_or_default().to_string();
    assert_eq!(field("severity"), "critical");
    assert!(
        field("evidence").contains("master3")
            && field("evidence").contains("free of 150.0 MiB on /var/lib/etcd (tmpfs)"),
        "{f}"
    );
    assert!(
        field("cause").contains("etcd crashed on a full disk"),
        "{f}"
    );
    assert!(!field("cause").contains("partitioned"), "{f}");
    assert!(field("fix").contains("free space on /var/lib/etcd"), "{f}");
    // The fix doctor gives: room on that filesystem (here: grow the tmpfs), then a restart. Its
    // data must stay: a member whose log went back in time panics when the leader catches it up.
    let heal = lab.exec(
        "master3",
        "mount -o remount,size=400m /tmp/etcd-small; rm -f /var/lib/etcd/fill; \
         systemctl reset-failed etcd; systemctl restart etcd",
    );
    assert!(heal.status.success(), "{}", text(&heal));
    lab.etcdctl(&["del", "--prefix", "/fill/"]);
    await_healthy(&lab);
}

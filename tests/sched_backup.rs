//! Scheduled backups on a real lab (root only): apply installs the timer on every control plane,
//! the timer fires by itself, each run leaves a snapshot that the real etcdutl reads and a stamp
//! that status, doctor and the metrics report; the newest `keep` stay; a run with the local etcd
//! member stopped fails the unit, and doctor says so.

mod common;
use common::*;
use std::time::Duration;

const DIR: &str = "/var/lib/hakube/backups";

fn snapshots(lab: &Lab, host: &str) -> Vec<String> {
    let o = lab.exec(host, &format!("ls -1 {DIR} | grep '\\.db$' | sort"));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn stamp(lab: &Lab, host: &str) -> Option<serde_json::Value> {
    let o = lab.exec(host, &format!("cat {DIR}/last-verified.json"));
    serde_json::from_slice(&o.stdout).ok()
}

fn service(lab: &Lab, host: &str) -> String {
    let o = lab.exec(
        host,
        "systemctl show -p ActiveState -p Result hakube-backup.service",
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]

fn scheduled_backups_run_verify_prune_and_report_failures() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tsch1", "10.170.0");
    let spec = std::fs::read_to_string(lab.spec()).expect("spec");
    std::fs::write(
        lab.spec(),
        format!(
            "{spec}  backup:\n    maxAge: 1h\n    schedule:\n      onCalendar: minutely\n      keep: 2\n      randomizedDelay: 0s\n"
        ),
    )
    .expect("write spec");
    lab.apply();
    for h in ["master1", "master2", "master3"] {
        let o = lab.exec(h, "systemctl is-active hakube-backup.timer");
        assert_eq!(text(&o).trim(), "active", "{h}: {}", text(&o));
    }
    // A second apply changes nothing and leaves the timers alone.
    let o = lab.hakube(&["apply", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains("enable --now hakube-backup.timer")
            && !out.contains("restart hakube-backup.timer"),
        "{out}"
    );

    // 1. The timer fires by itself (minutely) on every control plane.
    for h in ["master1", "master2", "master3"] {
        eventually(
            &format!("{h}: a stamp from the timer"),
            Duration::from_secs(180),
            || stamp(&lab, h).ok_or_else(|| service(&lab, h)),
        );
    }

    // 2. The snapshot is what the stamp says: the real etcdutl reads its revision, and its
    // SHA-256 matches.
    let st = stamp(&lab, "master1").expect("stamp");
    let file = st["file"].as_str().expect("file").to_string();
    assert!(file.starts_with("tsch1-master1-"), "{st}");
    let o = lab.exec(
        "master1",
        &format!("etcdutl snapshot status {DIR}/{file} -w json && sha256sum {DIR}/{file}"),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!("\"revision\":{}", st["revision"])),
        "{st}\n{out}"
    );
    assert!(
        out.contains(st["sha256"].as_str().unwrap_or("-")),
        "{st}\n{out}"
    );

    // 3. keep: 2. Two more runs by hand; only the newest two of master1's stay.
    for _ in 0..2 {
        let before = stamp(&lab, "master1").map(|s| s["file"].clone());
        std::thread::sleep(Duration::from_millis(1100)); // names are per second
        let o = lab.exec("master1", "systemctl start hakube-backup.service");
        assert!(o.status.success(), "{}", text(&o));
        eventually("a new stamp", Duration::from_secs(60), || {
            let now = stamp(&lab, "master1").map(|s| s["file"].clone());
            if now != before {
                Ok(())
            } else {
                Err(service(&lab, "master1"))
            }
        });
    }
    let snaps = snapshots(&lab, "master1");
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let newest = stamp(&lab, "master1").expect("stamp")["file"].clone();
    assert_eq!(
        serde_json::Value::String(snaps[1].clone()),
        newest,
        "the newest is kept"
    );

    // 4. status, its metrics and doctor report the hosts' backup ages.
    let s = eventually("backup verdict healthy", Duration::from_secs(60), || {
        let (_, s) = status_json(&lab);
        let (h, r) = verdict(&s, "backup");
        if h == "healthy" {
            Ok(s)
        } else {
            Err(format!("{h}: {r}"))
        }
    });
    let hosts = s["backups"]["hosts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(hosts.len(), 3, "{}", s["backups"]);
    for h in &hosts {
        assert!(h["stamp"]["createdUnix"].as_u64().is_some(), "{h}");
    }
    // (A host whose SSH round trip times out under load has no sample in that scrape.)
    eventually("the metrics", Duration::from_secs(90), || {
        let m = text(&lab.hakube(&["status", "--prometheus"]));
        if m.contains("hakube_backup_last_verified_timestamp_seconds{cluster=\"tsch1\",source=\"host\",host=\"master1\"}")
            && m.contains("hakube_backup_schedule_ok{cluster=\"tsch1\",host=\"master2\"} 1")
        {
            Ok(())
        } else {
            Err(m)
        }
    });
    // Under load an SSH round trip may time out: that is host-unreachable, not a backup finding.
    no_backup_findings(&lab, "doctor: fresh backups, no backup finding");

    // 5. etcd stopped on master2: its run fails, systemd shows it, doctor says so.
    lab.fault(&["stop", "master2", "etcd"]);
    let o = lab.exec("master2", "systemctl start hakube-backup.service");
    let st = eventually("master2's run failed", Duration::from_secs(60), || {
        let s = service(&lab, "master2");
        if s.contains("ActiveState=failed") {
            Ok(s)
        } else {
            Err(s)
        }
    });
    assert!(st.contains("Result=exit-code"), "{st}");
    assert!(!o.status.success(), "the start job fails: {}", text(&o));
    let log = lab.exec(
        "master2",
        "cat /run/hakube-systemd/hakube-backup.service.log",
    );
    let log = text(&log);
    assert!(log.contains("does not answer"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "no secret in the log");
    let f = eventually("doctor backup-schedule", Duration::from_secs(60), || {
        let f = findings(&lab);
        f.iter()
            .find(|(r, _, e)| {
                r == "backup-schedule" && e.contains("master2") && e.contains("failed")
            })
            .cloned()
            .ok_or_else(|| format!("{f:?}"))
    });
    assert!(f.2.contains("hakube-backup.service"), "{f:?}");
    let (_, s) = status_json(&lab);
    let (h, r) = verdict(&s, "backup");
    assert_eq!(h, "degraded", "{r}");
    assert!(r.contains("master2"), "{r}");

    // 6. etcd back: the next run succeeds and the finding goes.
    lab.fault(&["start", "master2", "etcd"]);
    eventually(
        "master2's run succeeds again",
        Duration::from_secs(90),
        || {
            let o = lab.exec("master2", "systemctl start hakube-backup.service");
            let s = service(&lab, "master2");
            if o.status.success() && !s.contains("failed") {
                Ok(())
            } else {
                Err(format!("{}\n{s}", text(&o)))
            }
        },
    );
    no_backup_findings(&lab, "doctor: the finding is gone");
}

fn no_backup_findings(lab: &Lab, what: &str) {
    eventually(what, Duration::from_secs(90), || {
        let f = findings(lab);
        if f.iter().all(|(r, _, _)| !r.starts_with("backup-")) {
            Ok(())
        } else {
            Err(format!("{f:?}"))
        }
    });
}

//! The age of the last verified backup: from the operator machine (`hakube backup`'s folder)
//! and from each control plane (the scheduled backup's `last-verified.json`, and its timer and
//! service), for `status`, `doctor` and the metrics.

use super::probes::{self, Conns};
use super::{Health, Verdict};
use crate::render::backup::{SERVICE, STAMP, TIMER};
use crate::spec::Cluster;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// The stamp the scheduled backup script writes on a host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostStamp {
    pub file: String,
    pub created_unix: u64,
    pub verified_unix: u64,
    pub revision: i64,
    pub total_keys: u64,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostBackup {
    pub host: String,
    pub stamp: Option<HostStamp>,
    /// `systemctl is-active hakube-backup.timer`.
    pub timer: Option<String>,
    /// The service's `ActiveState` and `Result` after its last run.
    pub service_state: Option<String>,
    pub service_result: Option<String>,
    /// Why the host could not be read.
    pub error: Option<String>,
}

impl HostBackup {
    /// The last run failed, or the timer does not run.
    pub fn trouble(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(format!("cannot be read: {e}"));
        }
        if self.service_state.as_deref() == Some("failed") {
            return Some(format!(
                "{SERVICE} failed its last run (result {})",
                self.service_result.as_deref().unwrap_or("?")
            ));
        }
        match self.timer.as_deref() {
            Some("active") => None,
            t => Some(format!("{TIMER} is {}", t.unwrap_or("unknown"))),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Backups {
    /// The spec has a `backup` section: a verified backup younger than `max_age_s` is expected.
    pub expected: bool,
    pub max_age_s: u64,
    pub now_unix: u64,
    /// The operator machine's newest verified backup.
    pub operator_dir: String,
    pub operator: Option<crate::backup::LastVerified>,
    /// Each control plane's scheduled backups (with `spec.backup.schedule`).
    pub hosts: Vec<HostBackup>,
}

impl Backups {
    /// The newest verified backup from any source: (source, created unix seconds).
    pub fn newest(&self) -> Option<(String, u64)> {
        let op = self
            .operator
            .as_ref()
            .map(|l| ("operator".to_string(), l.created_unix));
        let hosts = self
            .hosts
            .iter()
            .filter_map(|h| h.stamp.as_ref().map(|s| (h.host.clone(), s.created_unix)));
        op.into_iter().chain(hosts).max_by_key(|(_, t)| *t)
    }

    pub fn age(&self, created: u64) -> u64 {
        self.now_unix.saturating_sub(created)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What one SSH round trip shows about a host's scheduled backups.
pub fn host_script(host_dir: &str) -> String {
    let stamp = crate::transport::quote(&format!("{host_dir}/{STAMP}"));
    format!(
        "[ -f {stamp} ] && echo \"backup.stamp $(head -c 4096 {stamp} | tr -d '\\n')\"; \
         echo \"backup.timer $(systemctl is-active {TIMER} 2>/dev/null)\"; \
         systemctl show -p ActiveState -p Result {SERVICE} 2>/dev/null | sed 's/^/backup.service /'; true\n"
    )
}

pub fn parse_host(host: &str, text: &str) -> HostBackup {
    let field = |p: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(p))
            .map(|v| v.trim().to_string())
    };
    HostBackup {
        host: host.into(),
        stamp: field("backup.stamp ").and_then(|j| serde_json::from_str(&j).ok()),
        timer: field("backup.timer ").filter(|t| !t.is_empty()),
        service_state: field("backup.service ActiveState="),
        service_result: field("backup.service Result="),
        error: None,
    }
}

pub async fn gather(c: &Cluster, conns: Conns<'_>) -> Backups {
    let dir = crate::backup::default_dir(c);
    let hosts = match &c.backup.schedule {
        None => vec![],
        Some(s) => {
            let script = host_script(&s.host_dir);
            futures::future::join_all(c.control_planes().map(|h| {
                let script = &script;
                async move {
                    match probes::ssh_run(c, h, conns, script, "read the scheduled backup's stamp")
                        .await
                    {
                        Ok(text) => parse_host(&h.name, &text),
                        Err(u) => HostBackup {
                            host: h.name.clone(),
                            stamp: None,
                            timer: None,
                            service_state: None,
                            service_result: None,
                            error: Some(u.short()),
                        },
                    }
                }
            }))
            .await
        }
    };
    Backups {
        expected: c.backup.expected || c.backup.schedule.is_some(),
        max_age_s: c.backup.max_age.as_secs(),
        now_unix: now(),
        operator: crate::backup::last_verified(&dir),
        operator_dir: dir.display().to_string(),
        hosts,
    }
}

fn v(health: Health, reason: String) -> Verdict {
    Verdict {
        layer: "backup".into(),
        health,
        reason,
    }
}

/// "3d 4h" and friends.
fn age(s: u64) -> String {
    crate::backup::cli::age(s)
}

/// The `backup` layer, when the spec expects backups: degraded when the newest verified backup
/// is older than `max_age` (or there is none), or a control plane's scheduled backup is stale,
/// failed or not scheduled.
pub fn verdict(b: &Backups) -> Option<Verdict> {
    if !b.expected {
        return None;
    }
    let limit = age(b.max_age_s);
    let mut bad = Vec::new();
    let unread: Vec<String> = b
        .hosts
        .iter()
        .filter_map(|h| h.error.as_ref().map(|e| format!("{}: {e}", h.host)))
        .collect();
    match b.newest() {
        None => bad.push("no verified backup".to_string()),
        Some((src, t)) if b.age(t) > b.max_age_s => bad.push(format!(
            "the newest verified backup ({src}) is {} old, over {limit}",
            age(b.age(t))
        )),
        Some(_) => {}
    }
    for h in b.hosts.iter().filter(|h| h.error.is_none()) {
        if let Some(t) = h.trouble() {
            bad.push(format!("{}: {t}", h.host));
        } else {
            match &h.stamp {
                None => bad.push(format!("{}: no verified scheduled backup yet", h.host)),
                Some(s) if b.age(s.created_unix) > b.max_age_s => bad.push(format!(
                    "{}: its newest scheduled backup is {} old",
                    h.host,
                    age(b.age(s.created_unix))
                )),
                Some(_) => {}
            }
        }
    }
    // A host that could not be read is not known to lack a backup.
    let only_unread = !unread.is_empty()
        && b.newest().is_none_or(|(_, t)| b.age(t) > b.max_age_s)
        && bad.len() == 1;
    Some(if only_unread || (bad.is_empty() && !unread.is_empty()) {
        v(
            Health::Unknown,
            format!("not checked: {}", unread.join("; ")),
        )
    } else if bad.is_empty() {
        let (src, t) = b.newest().unwrap_or_default();
        v(
            Health::Healthy,
            format!("newest verified backup {} old ({src})", age(b.age(t))),
        )
    } else {
        v(Health::Degraded, bad.join("; "))
    })
}

/// The text section of `status`.
pub fn render_text(b: &Backups, verdict: &str) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "source",
        "newest verified",
        "age",
        "revision",
        "state",
    ]);
    match &b.operator {
        Some(l) => t.add_row(vec![
            "operator".into(),
            l.file.clone(),
            age(b.age(l.created_unix)),
            l.revision.to_string(),
            format!("in {}", b.operator_dir),
        ]),
        None => t.add_row(vec![
            "operator".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            format!("none in {}", b.operator_dir),
        ]),
    };
    for h in &b.hosts {
        let state = h.trouble().unwrap_or_else(|| "timer active".into());
        match &h.stamp {
            Some(s) => t.add_row(vec![
                h.host.clone(),
                s.file.clone(),
                age(b.age(s.created_unix)),
                s.revision.to_string(),
                state,
            ]),
            None => t.add_row(vec![
                h.host.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                state,
            ]),
        };
    }
    format!("Backups: {verdict}\n{t}\n\n")
}

/// One gauge family: name, help, and rows of labels and value.
pub type Metric = (&'static str, &'static str, Vec<(super::Labels, f64)>);

/// The backup metrics: (name, help, rows of labels and value), for `status --prometheus` and
/// the exporter (the cluster label is added there).
pub fn metrics(b: &Backups) -> Vec<Metric> {
    let lbl = |pairs: &[(&str, &str)]| -> super::Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut stamps = Vec::new();
    if let Some(l) = &b.operator {
        stamps.push((lbl(&[("source", "operator")]), l.created_unix as f64));
    }
    for h in &b.hosts {
        if let Some(s) = &h.stamp {
            stamps.push((
                lbl(&[("source", "host"), ("host", &h.host)]),
                s.created_unix as f64,
            ));
        }
    }
    // A host that could not be read has no value (unknown), not 0.
    let ok = b
        .hosts
        .iter()
        .filter(|h| h.error.is_none())
        .map(|h| {
            (
                lbl(&[("host", &h.host)]),
                f64::from(u8::from(h.trouble().is_none())),
            )
        })
        .collect();
    vec![
        (
            "hakube_backup_last_verified_timestamp_seconds",
            "When the newest verified backup's snapshot was taken (Unix seconds), per source: the operator machine, or a control plane's scheduled backups",
            stamps,
        ),
        (
            "hakube_backup_schedule_ok",
            "1 when the control plane's backup timer is active and its last run did not fail",
            ok,
        ),
    ]
}

/// Doctor: no verified backup younger than `spec.backup.maxAge`, from any source.
pub fn doctor_age(c: &Cluster, e: &super::doctor::Evidence) -> Vec<super::doctor::Finding> {
    use super::doctor::{Finding, Severity};
    let Some(b) = e.status.as_ref().and_then(|s| s.backups.as_ref()) else {
        return vec![];
    };
    if !b.expected {
        return vec![];
    }
    let limit = age(b.max_age_s);
    if b.hosts.iter().any(|h| h.error.is_some())
        && b.newest().is_none_or(|(_, t)| b.age(t) > b.max_age_s)
    {
        // Unknown, not missing: host-unreachable says why.
        return vec![];
    }
    let evidence = match b.newest() {
        Some((_, t)) if b.age(t) <= b.max_age_s => return vec![],
        Some((src, t)) => format!(
            "the newest verified backup of {} ({src}) is {} old, over spec.backup.maxAge {limit}",
            c.name,
            age(b.age(t))
        ),
        None => format!(
            "{} has no verified backup: none in {}{}",
            c.name,
            b.operator_dir,
            if b.hosts.is_empty() {
                ""
            } else {
                ", and no control plane has a verified scheduled one"
            }
        ),
    };
    vec![Finding {
        rule: "backup-age",
        severity: Severity::Warning,
        evidence,
        cause: "backups are not taken, or every recent one failed its verification; with quorum lost, only a backup brings the data back".into(),
        fix: format!(
            "take one now: `hakube backup -f SPEC`; and schedule them (spec.backup.schedule, then `hakube apply`), or run `hakube backup` from cron{}",
            if b.hosts.is_empty() {
                ""
            } else {
                "; the backup-schedule findings say why the scheduled ones fail"
            }
        ),
    }]
}

/// Doctor: a control plane's scheduled backup failed, does not run, or is stale.
pub fn doctor_schedule(_c: &Cluster, e: &super::doctor::Evidence) -> Vec<super::doctor::Finding> {
    use super::doctor::{Finding, Severity};
    let Some(b) = e.status.as_ref().and_then(|s| s.backups.as_ref()) else {
        return vec![];
    };
    let mut out = Vec::new();
    // A host that cannot be read is host-unreachable's finding.
    for h in b.hosts.iter().filter(|h| h.error.is_none()) {
        let (evidence, cause, fix) = if let Some(t) = h.trouble() {
            let failed = h.service_state.as_deref() == Some("failed");
            (
                format!("{}: {t}", h.host),
                if failed {
                    "the backup script stopped at a failed step: the local etcd member does not answer, the disk is full, or the snapshot did not verify"
                } else {
                    "the timer is not enabled (apply did not run since the schedule was added) or was stopped by hand"
                },
                if failed {
                    format!(
                        "read why on {0}: `journalctl -u {SERVICE} -n 50` (`systemctl status {SERVICE}` in the lab); fix it and run `systemctl start {SERVICE}` on {0} to check",
                        h.host
                    )
                } else {
                    format!(
                        "run `hakube apply -f SPEC`, or `systemctl enable --now {TIMER}` on {}",
                        h.host
                    )
                },
            )
        } else {
            match &h.stamp {
                None => (
                    format!("{}: no verified scheduled backup yet", h.host),
                    "the timer has not fired since it was installed",
                    format!(
                        "wait for its first run (`systemctl list-timers {TIMER}` on {0} shows when), or start one: `systemctl start {SERVICE}` on {0}",
                        h.host
                    ),
                ),
                Some(s) if b.age(s.created_unix) > b.max_age_s => (
                    format!(
                        "{}: its newest verified scheduled backup ({}) is {} old, over {}",
                        h.host,
                        s.file,
                        age(b.age(s.created_unix)),
                        age(b.max_age_s)
                    ),
                    "the timer fires less often than spec.backup.maxAge, or its runs did not complete",
                    format!(
                        "check `systemctl list-timers {TIMER}` on {}; make onCalendar fire more often than maxAge",
                        h.host
                    ),
                ),
                Some(_) => continue,
            }
        };
        out.push(Finding {
            rule: "backup-schedule",
            severity: Severity::Warning,
            evidence,
            cause: cause.into(),
            fix,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lines_parse() {
        let text = "backup.stamp {\"format\":\"hakube-host-backup/1\",\"cluster\":\"c\",\"member\":\"m1\",\"file\":\"c-m1-20261202T010203Z.db\",\"createdAt\":\"x\",\"createdUnix\":100,\"verifiedAt\":\"y\",\"verifiedUnix\":101,\"revision\":7,\"totalKeys\":9,\"hash\":1,\"size\":20512,\"sha256\":\"ab\",\"checks\":[\"trailer\",\"status\"]}\n\
                    backup.timer active\nbackup.service ActiveState=failed\nbackup.service Result=exit-code\n";
        let h = parse_host("m1", text);
        let s = h.stamp.clone().expect("stamp");
        assert_eq!((s.created_unix, s.revision, s.size), (100, 7, 20512));
        assert!(h.trouble().expect("failed").contains("exit-code"));
        let b = Backups {
            expected: true,
            max_age_s: 90_000,
            now_unix: 100 + 90_001,
            operator_dir: "/x".into(),
            operator: None,
            hosts: vec![h],
        };
        let v = verdict(&b).expect("expected");
        assert_eq!(v.health, Health::Degraded);
        assert!(v.reason.contains("over 1d 1h"), "{}", v.reason);
        let m = metrics(&b);
        let row = |name: &str| {
            m.iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, _, rows)| rows.clone())
                .unwrap_or_default()
        };
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            row("hakube_backup_last_verified_timestamp_seconds"),
            vec![(vec![pair("source", "host"), pair("host", "m1")], 100.0)]
        );
        assert_eq!(
            row("hakube_backup_schedule_ok"),
            vec![(vec![pair("host", "m1")], 0.0)]
        );
        let ok = parse_host(
            "m1",
            "backup.timer active\nbackup.service ActiveState=inactive\n",
        );
        assert!(ok.trouble().is_none());
        assert!(
            parse_host("m1", "backup.timer inactive\n")
                .trouble()
                .is_some()
        );
        // A host that cannot be read is unknown, not missing a backup.
        let mut gone = parse_host("m2", "");
        gone.error = Some("m2 (unreachable)".into());
        let b = Backups {
            hosts: vec![gone],
            ..b
        };
        assert_eq!(verdict(&b).expect("expected").health, Health::Unknown);
    }
}

//! `spec.backup`: the retention of `hakube backup`, the age status and doctor accept, and the
//! scheduled snapshots on the control planes.

use super::calendar;
use super::cluster::{Backup, BackupSchedule};
use super::diag::Diagnostics;
use super::grammar::{Rule, Target};
use super::model::{self, Document};
use super::validate::parse_duration;
use std::path::Path;
use std::time::Duration;

const P: &str = "spec.backup";
pub const DEFAULT_MAX_AGE: &str = "25h";
pub const DEFAULT_ON_CALENDAR: &str = "daily";
pub const DEFAULT_KEEP: u32 = 3;
pub const DEFAULT_HOST_DIR: &str = "/var/lib/hakube/backups";
pub const DEFAULT_RANDOMIZED_DELAY: &str = "30m";

/// `schedule.onCalendar`: `OnCalendar=` in hakube-backup.timer.
pub const ON_CALENDAR: Rule = Rule {
    what: "onCalendar",
    targets: &[],
    chars: |c| {
        (!(c.is_ascii_alphanumeric() || " *-:.,~/@_+".contains(c)))
            .then_some("is not part of a calendar expression (systemd.time(7))")
    },
    shape: |s| {
        calendar::check(s, calendar::zone_exists)
            .err()
            .map(|r| format!("is not a systemd calendar expression: {r}"))
    },
    help: "write a systemd calendar expression such as daily, *-*-* 02:30 or Mon..Fri 22:00 (`systemd-analyze calendar EXPR` checks one)",
};

/// `schedule.hostDir`: `BACKUP_DIR=` in the backup script, which sh reads.
pub const HOST_DIR: Rule = Rule::path(
    "hostDir",
    &[Target::EnvFile],
    "use an absolute path such as /var/lib/hakube/backups",
);

fn duration(
    d: &mut Diagnostics,
    path: &str,
    raw: &str,
    min: Duration,
    max: Duration,
) -> Option<Duration> {
    match parse_duration(raw) {
        Ok(v) if v < min || v > max => {
            d.error(
                path,
                format!(
                    "{raw} is outside {}-{}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
                "write a duration such as 25h or 30m",
            );
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            d.error(
                path,
                format!("not a duration: {e}"),
                "write it like 25h or 30m",
            );
            None
        }
    }
}

fn count(d: &mut Diagnostics, path: &str, v: Option<u32>, default: u32, min: u32) -> Option<u32> {
    let n = v.unwrap_or(default);
    if n < min || n > 1000 {
        d.error(
            path,
            format!("{n} is outside {min}-1000"),
            format!("the default is {default}"),
        );
        return None;
    }
    Some(n)
}

/// Validate `spec.backup` and resolve its defaults. Every problem is reported; `None` when one
/// of them is an error.
pub fn check(doc: &Document, base_dir: &Path, d: &mut Diagnostics) -> Option<Backup> {
    let empty = model::Backup::default();
    let b = doc.spec.backup.as_ref().unwrap_or(&empty);
    let dir = match b.dir.as_deref() {
        Some("") => {
            d.error(
                format!("{P}.dir"),
                "is empty",
                "name a folder, or leave it out for .hakube/<cluster>/backups next to the spec",
            );
            None
        }
        Some(p) => Some(Some(base_dir.join(p))),
        None => Some(None),
    };
    let max_age = duration(
        d,
        &format!("{P}.maxAge"),
        b.max_age.as_deref().unwrap_or(DEFAULT_MAX_AGE),
        Duration::from_secs(60),
        Duration::from_secs(366 * 86400),
    );
    let policy = crate::backup::retention::Policy::default();
    let r = &b.retention;
    let keep_last = count(
        d,
        &format!("{P}.retention.keepLast"),
        r.keep_last,
        policy.keep_last as u32,
        1,
    );
    let daily = count(
        d,
        &format!("{P}.retention.daily"),
        r.daily,
        policy.keep_daily as u32,
        0,
    );
    let weekly = count(
        d,
        &format!("{P}.retention.weekly"),
        r.weekly,
        policy.keep_weekly as u32,
        0,
    );
    let schedule = match &b.schedule {
        None => Some(None),
        Some(s) => schedule(doc, s, max_age, d).map(Some),
    };
    Some(Backup {
        expected: doc.spec.backup.is_some(),
        dir: dir?,
        max_age: max_age?,
        keep_last: keep_last? as usize,
        keep_daily: daily? as usize,
        keep_weekly: weekly? as usize,
        schedule: schedule?,
    })
}

fn schedule(
    doc: &Document,
    s: &model::Schedule,
    max_age: Option<Duration>,
    d: &mut Diagnostics,
) -> Option<BackupSchedule> {
    let p = format!("{P}.schedule");
    let mut ok = true;
    if doc.spec.etcd.management.as_deref() == Some("kubeadm") {
        d.error(
            p.clone(),
            "scheduled backups need etcd.management: hakube",
            "the timer's script reaches etcd with the client certificate hakube installs; with kubeadm's etcd, take snapshots with etcdctl and `hakube backup --from-snapshot` (docs/backup.md)",
        );
        ok = false;
    }
    let on_calendar = s
        .on_calendar
        .clone()
        .unwrap_or_else(|| DEFAULT_ON_CALENDAR.into());
    let before = d.items.len();
    ON_CALENDAR.apply(d, &format!("{p}.onCalendar"), &on_calendar);
    ok &= d.items.len() == before;
    let host_dir = s
        .host_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_HOST_DIR.into());
    let before = d.items.len();
    HOST_DIR.apply(d, &format!("{p}.hostDir"), &host_dir);
    ok &= d.items.len() == before;
    let data_dir = doc.spec.etcd.data_dir.as_deref().unwrap_or("/var/lib/etcd");
    if ok && (host_dir == data_dir || host_dir.starts_with(&format!("{data_dir}/"))) {
        d.error(
            format!("{p}.hostDir"),
            format!("{host_dir} is inside etcd's data dir {data_dir}"),
            "keep snapshots out of etcd's data dir: restore and member repair move its content aside; use /var/lib/hakube/backups",
        );
        ok = false;
    }
    let keep = count(d, &format!("{p}.keep"), s.keep, DEFAULT_KEEP, 1);
    let delay = duration(
        d,
        &format!("{p}.randomizedDelay"),
        s.randomized_delay
            .as_deref()
            .unwrap_or(DEFAULT_RANDOMIZED_DELAY),
        Duration::ZERO,
        Duration::from_secs(86400),
    );
    if let (Some(delay), Some(max)) = (delay, max_age)
        && delay >= max
    {
        d.error(
            format!("{p}.randomizedDelay"),
            format!(
                "a delay of up to {} is not shorter than maxAge {}",
                humantime::format_duration(delay),
                humantime::format_duration(max)
            ),
            "keep the random delay well under spec.backup.maxAge (30m with daily backups and 25h)",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(BackupSchedule {
        on_calendar,
        keep: keep?,
        host_dir,
        randomized_delay: delay?,
    })
}

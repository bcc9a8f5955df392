//! Scheduled backups without a lab: `spec.backup` validation, the `onCalendar` grammar against
//! the real `systemd-analyze calendar`, and the rendered timer, service and script (checked by
//! `systemd-analyze verify` and `sh -n`).

use hakube::render::{self, RenderedFile, Secrets, backup};
use hakube::spec::{self, Cluster, Severity, calendar};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const SEED: &str = include_str!("../examples/seed.yaml");

fn with_backup(section: &str) -> String {
    format!("{SEED}  backup:\n{section}")
}

fn load(src: &str) -> spec::Loaded {
    spec::load_str(src, "cluster.yaml", Path::new("/srv/spec"))
}

fn cluster(src: &str) -> Cluster {
    let l = load(src);
    l.cluster
        .unwrap_or_else(|| panic!("invalid: {:#?}", l.diagnostics.items))
}

fn files(c: &Cluster) -> Vec<RenderedFile> {
    render::render(
        c,
        &Secrets {
            stats_password: "pw".into(),
        },
    )
    .expect("renders")
}

fn errors(src: &str) -> Vec<(String, String, (usize, usize))> {
    load(src)
        .diagnostics
        .items
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| {
            (
                d.path.clone(),
                d.message.clone(),
                d.location.map(|l| (l.line, l.column)).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn defaults_match_the_backup_commands_and_schedule_is_off_unless_set() {
    let c = cluster(SEED);
    let p = hakube::backup::retention::Policy::default();
    assert!(!c.backup.expected);
    assert!(c.backup.schedule.is_none());
    assert_eq!(
        (
            c.backup.keep_last,
            c.backup.keep_daily,
            c.backup.keep_weekly
        ),
        (p.keep_last, p.keep_daily, p.keep_weekly)
    );
    assert_eq!(c.backup.max_age.as_secs(), 25 * 3600);
    assert!(
        files(&c).iter().all(|f| !f.path.contains("hakube-backup")),
        "no schedule, no timer"
    );

    let c = cluster(&with_backup(
        "    dir: /srv/backups\n    retention: {keepLast: 2, daily: 0}\n    schedule: {}\n",
    ));
    assert!(c.backup.expected);
    assert_eq!(
        hakube::backup::default_dir(&c),
        Path::new("/srv/backups").to_path_buf()
    );
    let pol = hakube::backup::spec_policy(&c);
    assert_eq!((pol.keep_last, pol.keep_daily, pol.keep_weekly), (2, 0, 4));
    let s = c.backup.schedule.expect("schedule");
    assert_eq!(s.on_calendar, "daily");
    assert_eq!(s.keep, 3);
    assert_eq!(s.host_dir, "/var/lib/hakube/backups");
    assert_eq!(s.randomized_delay.as_secs(), 1800);
    // A relative folder is next to the spec.
    let c = cluster(&with_backup("    dir: bk\n"));
    assert_eq!(c.backup.dir.as_deref(), Some(Path::new("/srv/spec/bk")));
}

#[test]
fn every_mistake_is_refused_at_its_line_and_column() {
    let src = with_backup(
        "    maxAge: 25x\n    retention: {keepLast: 0}\n    schedule:\n      onCalendar: \"Mon..Fry 02:00\"\n      hostDir: relative/dir\n      randomizedDelay: 2d\n",
    );
    let e = errors(&src);
    let base = SEED.lines().count() + 2;
    let want = [
        ("spec.backup.maxAge", base, "not a duration"),
        ("spec.backup.retention.keepLast", base + 1, "outside 1-1000"),
        (
            "spec.backup.schedule.onCalendar",
            base + 3,
            "at character 6: expected a weekday",
        ),
        (
            "spec.backup.schedule.hostDir",
            base + 4,
            "not an absolute path",
        ),
        (
            "spec.backup.schedule.randomizedDelay",
            base + 5,
            "outside 0s-1day",
        ),
    ];
    for (path, line, needle) in want {
        let hit = e
            .iter()
            .find(|(p, _, _)| p == path)
            .unwrap_or_else(|| panic!("{path} not refused: {e:#?}"));
        assert!(hit.1.contains(needle), "{path}: {}", hit.1);
        assert_eq!(hit.2.0, line, "{path}: {hit:?}");
        assert!(hit.2.1 > 1, "{path}: {hit:?}");
    }
    // Cross-field rules.
    let kubeadm = SEED.replace("management: hakube", "management: kubeadm");
    let e = errors(&format!("{kubeadm}  backup:\n    schedule: {{}}\n"));
    assert!(
        e.iter()
            .any(|(p, m, _)| p == "spec.backup.schedule" && m.contains("etcd.management: hakube")),
        "{e:?}"
    );
    let e = errors(&with_backup(
        "    schedule: {hostDir: /var/lib/etcd/snap}\n",
    ));
    assert!(
        e.iter()
            .any(|(_, m, _)| m.contains("inside etcd's data dir")),
        "{e:?}"
    );
    let e = errors(&with_backup(
        "    maxAge: 1h\n    schedule: {randomizedDelay: 2h}\n",
    ));
    assert!(
        e.iter()
            .any(|(_, m, _)| m.contains("not shorter than maxAge")),
        "{e:?}"
    );
    let e = errors(&with_backup(
        "    schedule: {onCalendar: \"daily;reboot\"}\n",
    ));
    assert!(
        e.iter()
            .any(|(_, m, _)| m.contains("';' at character 6 is not part of a calendar")),
        "{e:?}"
    );
}

/// Which of `exprs` systemd refuses, from one `systemd-analyze calendar` run.
fn systemd_refuses(exprs: &[String]) -> Option<BTreeSet<String>> {
    let out = Command::new("systemd-analyze")
        .args(["calendar", "--"])
        .args(exprs)
        .env("TZ", "UTC")
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    // Every expression is answered: a refusal, or its normalized form.
    let answered = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("Original form:"))
        .count()
        + err
            .lines()
            .filter(|l| l.starts_with("Failed to parse"))
            .count();
    assert_eq!(
        answered,
        exprs.iter().filter(|e| !e.is_empty()).count(),
        "systemd-analyze did not answer every expression:\n{err}"
    );
    Some(
        err.lines()
            .filter_map(|l| l.strip_prefix("Failed to parse calendar specification '"))
            .filter_map(|l| l.rsplit_once("': ").map(|(e, _)| e.to_string()))
            .collect(),
    )
}

const AGREED: &[&str] = &[
    // accepted by both
    "daily",
    "Daily",
    "minutely",
    "hourly UTC",
    "weekly",
    "monthly",
    "quarterly",
    "semi-annually",
    "*-*-* 02:00:00",
    "*-*-* 02:30",
    "Mon..Fri 22:00",
    "mon-fri 22:00",
    "Sat,Sun 10:00 UTC",
    "Mon, 10:00",
    "Mon,Tue,",
    "*:0/15",
    "*-*-* 00/6:00",
    "*-02~03",
    "*-*~1..3",
    "2026-12-24 18:00",
    "99-1-1",
    "@1700000000",
    "00:00:00.123456",
    "*-*-* *:*:5/0.5",
    "10:00 Europe/Berlin",
    "10:00 Etc/GMT+5",
    "10:00 utc",
    "1:2",
    "Mon 2026-*-* 1,2,3:00",
    "2026..2030-01-01",
    "*-*-1..31/30",
    "Thu",
    // refused by both
    "",
    "bogus",
    " daily",
    "daily ",
    "daily 12:00",
    "weekly Mon",
    "Mon..Fry",
    "Wed..Mon",
    "Thurs",
    "Mo 10:00",
    "Mon, Tue 10:00",
    "Mon,,Tue",
    "Mon-",
    "*-*-* 12:60",
    "*-*-* 25:00",
    "24:00",
    "00:00:60",
    "*-13-01",
    "1969-01-01",
    "2200-01-01",
    "*-*-* *:*:*.5",
    "00:00:00.",
    "*/2:00",
    "1..5/2 10:00",
    "0/25:00",
    "1/23:00",
    "*-*-1/31",
    "*-*~29",
    "*-*~1/27",
    "*-*-* 10:00 UTC UTC",
    "10:00 Foo/Bar",
    "10:00 UTC ",
    "10:00 Z",
    "+10:00",
    "@",
    "5:",
    ":5",
];

#[test]
fn on_calendar_agrees_with_systemd_analyze() {
    let exprs: Vec<String> = AGREED.iter().map(|s| s.to_string()).collect();
    let Some(refused) = systemd_refuses(&exprs) else {
        eprintln!("skipped: no systemd-analyze");
        return;
    };
    let mut disagree = vec![];
    for e in &exprs {
        let ours = calendar::check(e, calendar::zone_exists);
        // systemd-analyze skips an empty argument's message; it refuses it all the same.
        let theirs = !e.is_empty() && !refused.contains(e);
        if ours.is_ok() != theirs {
            disagree.push(format!("{e:?}: hakube {ours:?}, systemd accepts: {theirs}"));
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}

/// Newer systemd releases refuse these, which older ones (such as Debian 12's 252) accept:
/// hakube refuses them so that a spec works on every host.
#[test]
fn on_calendar_takes_the_stricter_reading_where_releases_differ() {
    for e in ["05..05:00", "0..23/24:00"] {
        let r = calendar::check(e, calendar::zone_exists).expect_err(e);
        assert!(r.why.contains("hour"), "{e}: {r}");
    }
}

/// Random expressions from the grammar's tokens: whatever hakube accepts, systemd accepts.
/// (hakube refuses some that this systemd accepts and newer ones refuse, such as `5..5`.)
#[test]
fn on_calendar_never_accepts_what_systemd_refuses() {
    use rand::{Rng, SeedableRng};
    const TOKENS: &[&str] = &[
        "Mon", "fri", "Sunday", "Thurs", "0", "1", "5", "07", "12", "23", "24", "28", "31", "59",
        "60", "70", "2026", "2199", "1969", "*", "-", "~", ":", ",", "..", "/", ".", " ", "@",
        "daily", "UTC", "5.25", "*-*-*",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let exprs: Vec<String> = (0..4000)
        .map(|_| {
            let n = rng.random_range(1..9);
            (0..n)
                .map(|_| TOKENS[rng.random_range(0..TOKENS.len())])
                .collect::<String>()
        })
        .collect();
    let Some(refused) = systemd_refuses(&exprs) else {
        eprintln!("skipped: no systemd-analyze");
        return;
    };
    let (mut both, mut stricter) = (0, 0);
    let mut wrong = vec![];
    for e in &exprs {
        let ours = calendar::check(e, calendar::zone_exists).is_ok();
        let theirs = !refused.contains(e);
        match (ours, theirs) {
            (true, true) => both += 1,
            (true, false) => wrong.push(e.clone()),
            (false, true) => stricter += 1,
            (false, false) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "hakube accepts what systemd refuses: {wrong:?}"
    );
    assert!(both > 50, "too few accepted cases to mean anything: {both}");
    eprintln!(
        "{} expressions: {both} accepted by both, {stricter} refused by hakube only",
        exprs.len()
    );
}

#[test]
fn the_timer_service_and_script_on_each_control_plane() {
    let c = cluster(&with_backup(
        "    schedule:\n      onCalendar: \"*-*-* 02:30\"\n      keep: 5\n      hostDir: /srv/etcd-snapshots\n      randomizedDelay: 10m\n",
    ));
    let f = files(&c);
    let mut hosts: BTreeSet<&str> = BTreeSet::new();
    for x in f.iter().filter(|x| x.path == backup::TIMER_PATH) {
        hosts.insert(&x.host);
    }
    assert_eq!(
        hosts,
        ["master1", "master2", "master3"].into_iter().collect()
    );
    let get = |h: &str, p: &str| {
        f.iter()
            .find(|x| x.host == h && x.path == p)
            .unwrap_or_else(|| panic!("{h}:{p}"))
    };
    let timer = &get("master2", backup::TIMER_PATH).content;
    for l in [
        "OnCalendar=*-*-* 02:30\n",
        "Persistent=true\n",
        "RandomizedDelaySec=600s\n",
        "Unit=hakube-backup.service\n",
        "WantedBy=timers.target\n",
    ] {
        assert!(timer.contains(l), "{l}: {timer}");
    }
    let svc = &get("master2", backup::SERVICE_PATH).content;
    assert!(svc.contains("Type=oneshot\n"), "{svc}");
    assert!(
        svc.contains(&format!("ExecStart={}\n", backup::SCRIPT_PATH)),
        "{svc}"
    );
    let script = get("master2", backup::SCRIPT_PATH);
    assert_eq!(script.mode, 0o755);
    for l in [
        "CLUSTER=ha-cluster\n",
        "MEMBER=master2\n",
        "BACKUP_DIR=/srv/etcd-snapshots\n",
        "KEEP=5\n",
        "ENDPOINT=https://127.0.0.1:2379\n",
        "CERT=/etc/etcd/pki/apiserver-etcd-client.crt\n",
        "ETCD_BIN_DIR=/usr/local/bin\n",
    ] {
        assert!(script.content.contains(l), "{l}");
    }
    assert!(!script.secret, "the script holds paths, not keys");
    // Load balancers and workers get none of it.
    assert!(
        f.iter()
            .filter(|x| x.path.contains("hakube-backup") || x.path == backup::SCRIPT_PATH)
            .all(|x| x.host.starts_with("master"))
    );
}

#[test]
fn systemd_analyze_verify_and_sh_accept_the_files() {
    let c = cluster(&with_backup(
        "    schedule: {onCalendar: \"Mon..Fri 22:00 UTC\"}\n",
    ));
    let f = files(&c);
    let dir = tempfile::tempdir().expect("tempdir");
    render::write_tree(&f, dir.path()).expect("write");
    let root = dir.path().join("master1");
    let units = root.join("etc/systemd/system");
    let script = root.join(backup::SCRIPT_PATH.trim_start_matches('/'));
    let sh = Command::new("sh")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("sh");
    assert!(
        sh.status.success(),
        "sh -n: {}",
        String::from_utf8_lossy(&sh.stderr)
    );
    let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("hakube-backup.service"))
        .arg(units.join("hakube-backup.timer"))
        .current_dir(&units)
        .output()
    else {
        eprintln!("skipped: no systemd-analyze");
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The script lives under the rendered tree, not at its path on this machine.
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            l.contains(&format!(
                "Command {} is not executable",
                backup::SCRIPT_PATH
            )),
            "systemd-analyze verify: {text}"
        );
    }
    // ... and it does fail on a broken unit, so the check means something.
    let bad = units.join("hakube-backup.timer");
    let t = std::fs::read_to_string(&bad).expect("read");
    std::fs::write(&bad, t.replace("OnCalendar=", "OnCalendar=Mon..Fry ")).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("hakube-backup.service"))
        .arg(&bad)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("calendar"), "{text}");
}

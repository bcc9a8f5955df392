//! `OnCalendar=` expressions, evaluated by systemd's own `systemd-analyze calendar` (which works
//! without systemd as PID 1) rather than by a calendar parser of our own.

use anyhow::{Context, Result, bail};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const TOOL: &str = "systemd-analyze";

/// The first time `expr` elapses strictly after `after` (whole seconds), or None when it never
/// elapses again. Expressions without a time zone are read in the machine's local time, as
/// systemd does.
pub fn next_elapse(expr: &str, after: SystemTime) -> Result<Option<SystemTime>> {
    let base = after
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out = Command::new(TOOL)
        .args(["calendar", "--iterations=1", &format!("--base-time=@{base}"), "--"])
        .arg(expr)
        .output()
        .with_context(|| {
            format!("cannot run {TOOL}\n  help: install it with `apt-get install systemd` (or run bash scripts/setup.sh)")
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{expr:?} is not a calendar expression ({TOOL} calendar: {})\n  help: use the forms of systemd.time(7), such as daily, *-*-* 02:00:00 or Mon..Fri 03:30",
            why.trim()
        );
    }
    parse_output(&stdout).with_context(|| format!("unexpected output of {TOOL} calendar {expr:?}"))
}

/// Reads `Next elapse:` (or, when the local zone is not UTC, the `(in UTC):` line after it).
fn parse_output(text: &str) -> Result<Option<SystemTime>> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
    };
    if field("Next elapse:") == Some("never") {
        return Ok(None);
    }
    let Some(ts) = field("(in UTC):").or_else(|| field("Next elapse:")) else {
        bail!("no \"Next elapse:\" line in:\n{text}");
    };
    // `Thu 2026-12-03 00:00:00 UTC`
    let Some(civil) = ts
        .split_once(' ')
        .and_then(|(_, rest)| rest.strip_suffix(" UTC"))
    else {
        bail!("{ts:?} is not a UTC time stamp");
    };
    humantime::parse_rfc3339_weak(civil)
        .map(Some)
        .with_context(|| format!("{civil:?} is not a time stamp"))
}

/// Unix seconds (0 before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub fn from_unix_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utc_and_local_zone_output() {
        let utc = "  Original form: daily\nNormalized form: *-*-* 00:00:00\n    Next elapse: Thu 2026-12-03 00:00:00 UTC\n       From now: 22h left\n";
        assert_eq!(
            parse_output(utc).unwrap(),
            Some(from_unix_secs(1_796_256_000))
        );
        let cet = "    Next elapse: Mon 2023-11-20 03:00:00 CET\n       (in UTC): Mon 2023-11-20 02:00:00 UTC\n";
        assert_eq!(
            parse_output(cet).unwrap(),
            Some(from_unix_secs(1_700_445_600))
        );
        assert_eq!(parse_output("    Next elapse: never\n").unwrap(), None);
        assert!(parse_output("    Next elapse: Mon 2023-11-20 03:00:00 CET\n").is_err());
    }
}

//! Checks the sections share: durations, sizes, ranges, one-of words, names.

use crate::spec::diag::Diagnostics;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(crate) fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

/// Parse `2GiB`, `512MiB`, `8589934592` and friends.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "KB" | "K" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        u => return Err(format!("unknown unit {u:?}; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The closest candidate, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&input.to_lowercase(), &c.to_lowercase()),
                *c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A duration field: `raw`, or `default` when it is absent.
pub(super) fn duration(
    d: &mut Diagnostics,
    path: &str,
    raw: Option<&str>,
    default: &str,
    example: &str,
) -> Option<Duration> {
    match parse_duration(raw.unwrap_or(default)) {
        Ok(v) => Some(v),
        Err(e) => {
            d.error(
                path,
                format!("not a duration: {e}"),
                format!("write it like {example}"),
            );
            None
        }
    }
}

/// A duration that must be more than zero; its default is also the example.
pub(super) fn positive_duration(
    d: &mut Diagnostics,
    path: &str,
    raw: Option<&str>,
    default: &str,
) -> Option<Duration> {
    let v = duration(d, path, raw, default, default)?;
    if v.is_zero() {
        d.error(
            path,
            "must be greater than zero",
            format!("for example {default}"),
        );
        return None;
    }
    Some(v)
}

/// A number within `range`.
pub(super) fn in_range<T: PartialOrd + Display + Copy>(
    d: &mut Diagnostics,
    path: impl Into<String>,
    what: &str,
    value: T,
    range: RangeInclusive<T>,
    help: &str,
) -> Option<T> {
    if range.contains(&value) {
        return Some(value);
    }
    d.error(
        path,
        format!(
            "{what} {value} is outside {}-{}",
            range.start(),
            range.end()
        ),
        help,
    );
    None
}

/// One of a few words, each standing for a value. With `suggest`, a near miss gets "did you
/// mean ...?" instead of `help`.
pub(super) fn one_of<T: Copy>(
    d: &mut Diagnostics,
    path: &str,
    raw: &str,
    choices: &[(&str, T)],
    what: &str,
    help: &str,
    suggest: bool,
) -> Option<T> {
    if let Some((_, v)) = choices.iter().find(|(w, _)| *w == raw) {
        return Some(*v);
    }
    let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
    let help = match did_you_mean(raw, &words).filter(|_| suggest) {
        Some(s) => format!("did you mean {s}?"),
        None => help.to_string(),
    };
    d.error(path, format!("unknown {what} {raw:?}"), help);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_report_what_is_wrong() {
        let mut d = Diagnostics::default();
        assert_eq!(
            positive_duration(&mut d, "p", None, "100ms"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(positive_duration(&mut d, "p", Some("0s"), "100ms"), None);
        assert_eq!(duration(&mut d, "p", Some("soon"), "1s", "1s"), None);
        assert_eq!(in_range(&mut d, "p", "priority", 300, 1..=254, "h"), None);
        assert_eq!(
            one_of(&mut d, "p", "kubeadn", &[("kubeadm", 1)], "x", "h", true),
            None
        );
        assert_eq!(
            one_of(&mut d, "p", "lab", &[("lab", 2)], "x", "h", false),
            Some(2)
        );
        let msgs: Vec<(&str, Option<&str>)> = d
            .items
            .iter()
            .map(|i| (i.message.as_str(), i.help.as_deref()))
            .collect();
        assert_eq!(
            msgs[0],
            ("must be greater than zero", Some("for example 100ms"))
        );
        assert!(msgs[1].0.starts_with("not a duration: "), "{msgs:?}");
        assert_eq!(msgs[2], ("priority 300 is outside 1-254", Some("h")));
        assert_eq!(
            msgs[3],
            ("unknown x \"kubeadn\"", Some("did you mean kubeadm?"))
        );
        assert_eq!(msgs.len(), 4);
    }
}

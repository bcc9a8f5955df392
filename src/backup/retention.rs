//! Which backups to keep: the newest N, plus the newest of each of the last D days and W weeks
//! that have a backup (grandfather-father-son, as restic's `forget` counts it). Days and weeks are
//! UTC; weeks start on Monday.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub keep_last: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            keep_last: 7,
            keep_daily: 7,
            keep_weekly: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Last,
    Daily,
    Weekly,
}

const DAY: u64 = 86_400;

fn day(t: u64) -> u64 {
    t / DAY
}

/// Weeks since the Monday before 1970-01-01 (a Thursday).
fn week(t: u64) -> u64 {
    (day(t) + 3) / 7
}

/// For each backup (given by its creation time, Unix seconds), the reasons it is kept; an empty
/// list means it goes.
pub fn select(times: &[u64], p: Policy) -> Vec<Vec<Reason>> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|a, b| times[*b].cmp(&times[*a]).then(a.cmp(b)));
    let mut out = vec![Vec::new(); times.len()];
    for (rank, &i) in order.iter().enumerate() {
        if rank < p.keep_last {
            out[i].push(Reason::Last);
        }
    }
    let mut bucket = |key: fn(u64) -> u64, n: usize, why: Reason| {
        let mut seen: Vec<u64> = Vec::new();
        for &i in &order {
            let k = key(times[i]);
            if seen.contains(&k) {
                continue;
            }
            if seen.len() == n {
                break;
            }
            seen.push(k);
            out[i].push(why);
        }
    };
    bucket(day, p.keep_daily, Reason::Daily);
    bucket(week, p.keep_weekly, Reason::Weekly);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date and hour.
    fn at(y: i32, m: u8, d: u8, h: u8) -> u64 {
        let date = time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap();
        let dt = date.with_hms(h, 0, 0).unwrap().assume_utc();
        dt.unix_timestamp() as u64
    }

    fn kept(times: &[u64], p: Policy) -> Vec<usize> {
        select(times, p)
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-29 is a Sunday, 2026-11-30 a Monday.
        assert_eq!(week(at(2026, 11, 23, 0)), week(at(2026, 11, 29, 23)));
        assert_eq!(week(at(2026, 11, 29, 23)) + 1, week(at(2026, 11, 30, 0)));
    }

    #[test]
    fn last_n_only() {
        let t: Vec<u64> = (0..5).map(|h| at(2026, 11, 26, h)).collect();
        let p = Policy {
            keep_last: 2,
            keep_daily: 0,
            keep_weekly: 0,
        };
        assert_eq!(kept(&t, p), vec![3, 4]);
    }

    #[test]
    fn hourly_backups_over_three_weeks() {
        // Four backups a day (00, 06, 12, 18 UTC) from Monday 2026-11-02 to Sunday 2026-11-22,
        // in no particular order.
        let mut t = Vec::new();
        for d in 2..=22 {
            for h in [12, 0, 18, 6] {
                t.push(at(2026, 11, d, h));
            }
        }
        let p = Policy {
            keep_last: 3,
            keep_daily: 4,
            keep_weekly: 3,
        };
        let r = select(&t, p);
        let mut keep: Vec<(u64, Vec<Reason>)> = t
            .iter()
            .zip(&r)
            .filter(|(_, r)| !r.is_empty())
            .map(|(t, r)| (*t, r.clone()))
            .collect();
        keep.sort();
        use Reason::*;
        let want = vec![
            // The newest of the two older weeks (their Sundays, 18:00).
            (at(2026, 11, 8, 18), vec![Weekly]),
            (at(2026, 11, 15, 18), vec![Weekly]),
            // The newest of each of the last four days.
            (at(2026, 11, 19, 18), vec![Daily]),
            (at(2026, 11, 20, 18), vec![Daily]),
            (at(2026, 11, 21, 18), vec![Daily]),
            // The last three; the newest of all is also the newest of its day and week.
            (at(2026, 11, 22, 6), vec![Last]),
            (at(2026, 11, 22, 12), vec![Last]),
            (at(2026, 11, 22, 18), vec![Last, Daily, Weekly]),
        ];
        assert_eq!(keep, want);
        assert_eq!(r.iter().filter(|r| r.is_empty()).count(), 84 - 8);
    }

    #[test]
    fn days_without_backups_do_not_use_up_the_daily_slots() {
        // Backups on the 1st, 10th and 20th only: each is the newest of its day.
        let t = vec![at(2026, 11, 1, 3), at(2026, 11, 10, 3), at(2026, 11, 20, 3)];
        let p = Policy {
            keep_last: 1,
            keep_daily: 3,
            keep_weekly: 0,
        };
        assert_eq!(kept(&t, p), vec![0, 1, 2]);
        assert_eq!(select(&t, p)[2], vec![Reason::Last, Reason::Daily]);
    }

    #[test]
    fn nothing_to_select_and_zero_policies() {
        assert!(select(&[], Policy::default()).is_empty());
        let t = vec![at(2026, 1, 1, 0), at(2026, 1, 2, 0)];
        let none = Policy {
            keep_last: 0,
            keep_daily: 0,
            keep_weekly: 0,
        };
        assert!(kept(&t, none).is_empty());
    }
}

//! systemd calendar expressions (`OnCalendar=`, systemd.time(7)), checked before they reach a
//! timer unit: a value is refused with the character where reading stopped and why, or systemd
//! reads it too.
//!
//! The grammar follows systemd's own parser (`calendar_spec_from_string`): an optional time zone
//! at the end, a shorthand (`daily`, `weekly`, ...), or weekdays, a date and a time, each
//! component a `*` or a list of values, ranges (`a..b`) and repetitions (`/n`). Where systemd
//! releases differ (newer ones refuse `0..23/24` and `5..5`), the stricter reading wins, so a
//! value accepted here works on old and new hosts alike. `tests/sched_backup_units.rs` compares
//! this with the real `systemd-analyze calendar`.

/// Why an expression is refused: the 1-based character where reading stopped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub at: usize,
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at character {}: {}", self.at, self.why)
    }
}

const SHORTHANDS: [&str; 13] = [
    "minutely",
    "hourly",
    "daily",
    "monthly",
    "weekly",
    "yearly",
    "annually",
    "anually",
    "quarterly",
    "semiannually",
    "semi-annually",
    "biannually",
    "bi-annually",
];

const WEEKDAYS: [(&str, u8); 14] = [
    ("monday", 0),
    ("mon", 0),
    ("tuesday", 1),
    ("tue", 1),
    ("wednesday", 2),
    ("wed", 2),
    ("thursday", 3),
    ("thu", 3),
    ("friday", 4),
    ("fri", 4),
    ("saturday", 5),
    ("sat", 5),
    ("sunday", 6),
    ("sun", 6),
];

const USEC: i64 = 1_000_000;
const MIN_YEAR: i64 = 1970;
const MAX_YEAR: i64 = 2199;

/// A time zone name as systemd accepts one, present in this machine's tz database.
pub fn zone_exists(name: &str) -> bool {
    let syntax = !name.is_empty()
        && !name.starts_with('/')
        && !name.contains("//")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_+".contains(c));
    if !syntax {
        return false;
    }
    let p = std::path::Path::new("/usr/share/zoneinfo").join(name);
    let mut head = [0u8; 4];
    std::fs::File::open(&p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == b"TZif"
}

/// One element of a component list: a value, a range, a repetition.
#[derive(Debug, Clone, Copy)]
struct Item {
    start: i64,
    stop: Option<i64>,
    repeat: i64,
    /// 0-based byte offset where it starts, for messages.
    at: usize,
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> u8 {
        self.s.get(self.pos).copied().unwrap_or(0)
    }
    fn peek2(&self) -> u8 {
        self.s.get(self.pos + 1).copied().unwrap_or(0)
    }
    fn fail<T>(&self, why: impl Into<String>) -> Result<T, Refusal> {
        Err(Refusal {
            at: self.pos + 1,
            why: why.into(),
        })
    }
    fn skip_spaces(&mut self) {
        while self.peek() == b' ' {
            self.pos += 1;
        }
    }
    fn found(&self) -> String {
        match self.peek() {
            0 => "the end".into(),
            b' ' => "a space".into(),
            c => format!("{:?}", c as char),
        }
    }

    /// A decimal; in microseconds with an optional fraction for seconds.
    fn number(&mut self, usec: bool) -> Result<i64, Refusal> {
        if !self.peek().is_ascii_digit() {
            return self.fail(format!("expected a number, found {}", self.found()));
        }
        let start = self.pos;
        while self.peek().is_ascii_digit() {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
        let mut v: i64 = match digits.parse() {
            Ok(v) if v <= i32::MAX as i64 => v,
            _ => {
                self.pos = start;
                return self.fail(format!("{digits} is too large"));
            }
        };
        if usec {
            v = v.saturating_mul(USEC);
            // One '.' is a decimal point, ".." a range.
            if self.peek() == b'.' && self.peek2() != b'.' {
                self.pos += 1;
                if !self.peek().is_ascii_digit() {
                    return self.fail("expected the digits of a fraction of a second");
                }
                let mut scale = USEC / 10;
                while self.peek().is_ascii_digit() {
                    v += (self.peek() - b'0') as i64 * scale;
                    scale /= 10;
                    self.pos += 1;
                }
            }
            if v > i32::MAX as i64 {
                self.pos = start;
                return self.fail(format!("{digits} seconds is too large"));
            }
        }
        Ok(v)
    }

    /// `*`, or items separated by ','. `None` is `*` (any value).
    fn chain(&mut self, usec: bool) -> Result<Option<Vec<Item>>, Refusal> {
        if self.peek() == b'*' {
            self.pos += 1;
            return Ok(usec.then(|| {
                vec![Item {
                    start: 0,
                    stop: None,
                    repeat: USEC,
                    at: self.pos - 1,
                }]
            }));
        }
        let mut items = Vec::new();
        loop {
            let at = self.pos;
            let start = self.number(usec)?;
            let mut stop = None;
            let mut repeat = 0;
            if self.peek() == b'.' && self.peek2() == b'.' {
                self.pos += 2;
                stop = Some(self.number(usec)?);
                repeat = if usec { USEC } else { 1 };
            }
            if self.peek() == b'/' {
                self.pos += 1;
                repeat = self.number(usec)?;
                if repeat == 0 {
                    self.pos -= 1;
                    return self.fail("a repetition of 0 never advances");
                }
            }
            if !b"\0 ,-~:".contains(&self.peek()) {
                return self.fail(format!(
                    "expected ',', '-', '~', ':', a space or the end after a value, found {}",
                    self.found()
                ));
            }
            items.push(Item {
                start,
                stop,
                repeat,
                at,
            });
            if items.len() > 240 {
                return self.fail("more than 240 values in one list");
            }
            if self.peek() != b',' {
                return Ok(Some(items));
            }
            self.pos += 1;
        }
    }

    /// Weekday names, lists and ranges (`Mon..Fri`, `Sat,Sun`, `Mon-Wed`), then spaces.
    fn weekdays(&mut self) -> Result<(), Refusal> {
        let mut from: Option<u8> = None;
        let mut first = true;
        loop {
            let rest = &self.s[self.pos..];
            let hit = WEEKDAYS.iter().find(|(n, _)| {
                rest.len() >= n.len() && rest[..n.len()].eq_ignore_ascii_case(n.as_bytes())
            });
            let Some((name, day)) = hit else {
                if first {
                    return Ok(());
                }
                return self.fail(format!(
                    "expected a weekday (Mon..Sun), found {}",
                    self.found()
                ));
            };
            self.pos += name.len();
            if !b"\0-., ".contains(&self.peek()) {
                return self.fail(format!(
                    "expected ',', '..', a space or the end after a weekday, found {} (weekdays are Mon..Sun or Monday..Sunday)",
                    self.found()
                ));
            }
            if let Some(f) = from
                && f > *day
            {
                self.pos -= name.len();
                return self.fail("a weekday range must go forward (Mon..Fri, not Fri..Mon)");
            }
            match self.peek() {
                0 => return Ok(()),
                b' ' => {
                    self.skip_spaces();
                    return Ok(());
                }
                b'.' => {
                    if from.is_some() || self.peek2() != b'.' {
                        return self.fail("expected '..' between two weekdays");
                    }
                    from = Some(*day);
                    self.pos += 2;
                }
                b'-' => {
                    if from.is_some() {
                        return self.fail("a weekday range has two ends");
                    }
                    from = Some(*day);
                    self.pos += 1;
                }
                _ => {
                    // ','
                    from = None;
                    self.pos += 1;
                }
            }
            if matches!(self.peek(), 0 | b' ') {
                if from.is_some() {
                    return self.fail("the weekday range has no end");
                }
                self.skip_spaces();
                return Ok(());
            }
            first = false;
        }
    }
}

/// Check `expr` as systemd reads `OnCalendar=`. `zone` says whether a word names a time zone
/// (see [`zone_exists`]).
pub fn check(expr: &str, zone: impl Fn(&str) -> bool) -> Result<(), Refusal> {
    if expr.is_empty() {
        return Err(Refusal {
            at: 1,
            why: "it is empty".into(),
        });
    }
    if let Some((i, c)) = expr
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || " *-:.,~/@_+".contains(*c)))
    {
        return Err(Refusal {
            at: i + 1,
            why: format!(
                "{} is not part of a calendar expression",
                super::grammar::describe(c)
            ),
        });
    }
    // The time zone, when the last word names one.
    let mut body = expr;
    let lower = expr.to_ascii_lowercase();
    if lower.ends_with(" utc") {
        body = &expr[..expr.len() - 4];
    } else if let Some(sp) = expr.rfind(' ')
        && zone(&expr[sp + 1..])
    {
        body = &expr[..sp];
    }
    if body.is_empty() {
        return Err(Refusal {
            at: 1,
            why: "there is a time zone but no time".into(),
        });
    }
    if SHORTHANDS.iter().any(|s| body.eq_ignore_ascii_case(s)) {
        return Ok(());
    }
    let mut p = Parser {
        s: body.as_bytes(),
        pos: 0,
    };
    p.weekdays()?;
    // @SECONDS since the epoch.
    if p.peek() == b'@' {
        p.pos += 1;
        let at = p.pos;
        if !p.peek().is_ascii_digit() {
            return p.fail("expected seconds since 1970 after '@'");
        }
        while p.peek().is_ascii_digit() {
            p.pos += 1;
        }
        let secs: u64 = body[at..p.pos].parse().unwrap_or(u64::MAX);
        // 2200-01-01T00:00:00Z: systemd knows years up to 2199.
        if secs >= 7_258_118_400 {
            p.pos = at;
            return p.fail("the time is after the year 2199");
        }
        if p.peek() != 0 {
            return unexpected(&p, body, expr);
        }
        return Ok(());
    }
    let (mut year, mut month, mut day) = (None, None, None);
    let mut end_of_month = false;
    let (hour, minute, second);
    // A date, unless the first list is followed by ':' (then it was the hour).
    let mark = p.pos;
    let first = if p.peek() == 0 {
        None
    } else {
        Some(p.chain(false)?)
    };
    let mut is_time = matches!(p.peek(), 0 | b':');
    if first.is_none() {
        is_time = true;
    }
    if !is_time {
        if p.peek() == b'~' {
            end_of_month = true;
        } else if p.peek() != b'-' {
            return p.fail(format!("expected '-' in a date, found {}", p.found()));
        }
        p.pos += 1;
        let second_part = p.chain(false)?;
        if matches!(p.peek(), 0 | b' ') {
            month = first.flatten();
            day = second_part;
        } else {
            if end_of_month {
                return p.fail("'~' (days from the end of the month) goes between month and day");
            }
            if p.peek() == b'~' {
                end_of_month = true;
            } else if p.peek() != b'-' {
                return p.fail(format!("expected '-' in a date, found {}", p.found()));
            }
            p.pos += 1;
            let third = p.chain(false)?;
            if !matches!(p.peek(), 0 | b' ') {
                return p.fail(format!(
                    "expected a space or the end after the date, found {}",
                    p.found()
                ));
            }
            year = first.flatten();
            month = second_part;
            day = third;
        }
        p.skip_spaces();
    } else {
        p.pos = mark;
    }
    // The time: H:M or H:M:S; none at all is 00:00:00.
    if p.peek() == 0 {
        hour = Some(vec![]);
        minute = Some(vec![]);
        second = Some(vec![]);
    } else {
        hour = p.chain(false)?;
        if p.peek() != b':' {
            return p.fail(format!(
                "expected ':' between hour and minute, found {}",
                p.found()
            ));
        }
        p.pos += 1;
        minute = p.chain(false)?;
        if p.peek() == 0 {
            second = Some(vec![]);
        } else {
            if p.peek() == b' ' {
                return unexpected(&p, body, expr);
            }
            if p.peek() != b':' {
                return p.fail(format!(
                    "expected ':' before the seconds or the end, found {}",
                    p.found()
                ));
            }
            p.pos += 1;
            second = p.chain(true)?;
            if p.peek() != 0 {
                return unexpected(&p, body, expr);
            }
        }
    }
    if end_of_month && day.is_none() {
        end_of_month = false;
    }
    // 12 is 2012, 89 is 1989.
    let fix_year = |v: i64| match v {
        0..70 => v + 2000,
        70..100 => v + 1900,
        v => v,
    };
    for i in year.iter_mut().flatten() {
        i.start = fix_year(i.start);
        i.stop = i.stop.map(fix_year);
    }
    type Part<'a> = (&'a str, &'a Option<Vec<Item>>, i64, i64, bool);
    let parts: [Part; 6] = [
        ("year", &year, MIN_YEAR, MAX_YEAR, false),
        ("month", &month, 1, 12, false),
        ("day", &day, 1, 31, end_of_month),
        ("hour", &hour, 0, 23, false),
        ("minute", &minute, 0, 59, false),
        ("second", &second, 0, 60 * USEC - 1, false),
    ];
    for (what, items, from, to, eom) in parts {
        for i in items.iter().flatten() {
            valid(what, i, from, to, eom)?;
        }
    }
    Ok(())
}

fn unexpected(p: &Parser<'_>, body: &str, expr: &str) -> Result<(), Refusal> {
    let rest = &body[p.pos..];
    let word = rest.trim_start().split(' ').next().unwrap_or("");
    let zone_like = word.chars().any(|c| c.is_ascii_alphabetic());
    let why = if zone_like && body.len() == expr.len() && !rest.trim_start().contains(' ') {
        format!(
            "{word:?} is not a time zone known here; use UTC, or a name from /usr/share/zoneinfo such as Europe/Berlin"
        )
    } else {
        format!("expected the end, found {}", p.found())
    };
    p.fail(why)
}

fn unit(what: &str, v: i64) -> String {
    if what == "second" {
        let s = v / USEC;
        match v % USEC {
            0 => s.to_string(),
            f => format!("{s}.{f:06}").trim_end_matches('0').to_string(),
        }
    } else {
        v.to_string()
    }
}

fn valid(what: &str, i: &Item, from: i64, to: i64, eom: bool) -> Result<(), Refusal> {
    let fail = |why: String| Err(Refusal { at: i.at + 1, why });
    // '~': counted from the end of the month, and at most 28 days back.
    let to = if eom { to - 3 } else { to };
    let range = format!("{}..{}", unit(what, from), unit(what, to));
    let eom_note = if eom {
        " days from the end of the month"
    } else {
        ""
    };
    if i.start < from || i.start > to {
        return fail(format!(
            "{what} {} is outside {range}{eom_note}",
            unit(what, i.start)
        ));
    }
    if i.repeat > to - from {
        return fail(format!(
            "a {what} repetition of {} is longer than the {range} it repeats in",
            unit(what, i.repeat)
        ));
    }
    match i.stop {
        Some(stop) => {
            if stop < from || stop > to {
                return fail(format!(
                    "{what} {} is outside {range}{eom_note}",
                    unit(what, stop)
                ));
            }
            if i.start + i.repeat > stop {
                return fail(format!(
                    "the {what} range {}..{} holds no repetition (it must go forward, past one step)",
                    unit(what, i.start),
                    unit(what, stop)
                ));
            }
        }
        None if eom && i.start - i.repeat < from => {
            return fail(format!(
                "{what} {} repeated every {} leaves the month",
                unit(what, i.start),
                unit(what, i.repeat)
            ));
        }
        None if !eom && i.start + i.repeat > to => {
            return fail(format!(
                "{what} {} repeated every {} never repeats within {range}",
                unit(what, i.start),
                unit(what, i.repeat)
            ));
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(e: &str) -> bool {
        check(e, zone_exists).is_ok()
    }

    #[test]
    fn common_expressions() {
        for e in [
            "daily",
            "Daily",
            "weekly",
            "hourly UTC",
            "*-*-* 02:00:00",
            "Mon..Fri 22:00",
            "Sat,Sun 10:00 UTC",
            "*:0/15",
            "*-*-* 00/6:00",
            "*-02~03",
            "2026-12-24 18:00",
            "Mon,Wed-Fri",
            "@1700000000",
            "00:00:00.123456",
            "1:2",
        ] {
            assert!(ok(e), "{e}: {:?}", check(e, zone_exists));
        }
    }

    #[test]
    fn refusals_name_the_place() {
        let r = |e: &str| check(e, zone_exists).expect_err(e);
        assert_eq!(r("bogus").at, 1);
        let x = r("*-*-* 25:00");
        assert_eq!(x.at, 7, "{x}");
        assert!(x.why.contains("hour 25 is outside 0..23"), "{x}");
        let x = r("Mon..Fry");
        assert_eq!(x.at, 6, "{x}");
        let x = r("daily%h");
        assert!(x.why.contains("'%' is not part"), "{x}");
        let x = r("10:00 Foo/Bar");
        assert!(x.why.contains("not a time zone"), "{x}");
        assert!(r("*-*-* 12:60").why.contains("minute 60"));
        assert!(r("Wed..Mon").why.contains("forward"));
        assert!(r("0/24:00").why.contains("repetition"));
        assert!(r("").why.contains("empty"));
    }
}

//! systemd unit files, as far as the lab's `systemctl` needs them: `[Service]` with Exec*
//! lines, environment, restart policy and timeouts, `[Timer]` for `.timer` units, plus drop-ins
//! (`NAME.service.d/*.conf`).
//! Command lines follow systemd's rules for quoting, `${VAR}` (one word) and `$VAR` (split on
//! whitespace), and the `-` prefix (failure ignored).

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// `simple`, `exec`, `idle`: running once spawned.
    Simple,
    /// Running once it sends `READY=1` to `$NOTIFY_SOCKET`.
    Notify,
    /// Running once ExecStart exits 0; the main PID comes from `PIDFile=`.
    Forking,
    /// Runs ExecStart to completion.
    Oneshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No,
    Always,
    OnFailure,
    OnAbnormal,
}

/// One `Exec*=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLine {
    /// `-` prefix: a failure is not a failure.
    pub ignore_failure: bool,
    /// Raw command line (variables are expanded at run time).
    pub raw: String,
}

#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    /// The main file and then the drop-ins, in the order they were applied.
    pub files: Vec<PathBuf>,
    pub description: String,
    pub kind: ServiceType,
    pub exec_start_pre: Vec<ExecLine>,
    pub exec_start: Vec<ExecLine>,
    pub exec_start_post: Vec<ExecLine>,
    pub exec_reload: Vec<ExecLine>,
    pub exec_stop: Vec<ExecLine>,
    /// Run once the service stopped, however it ended (stop, crash, kill -9, failed start).
    pub exec_stop_post: Vec<ExecLine>,
    /// `Environment=` assignments, in order.
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=` entries (path, optional).
    pub environment_files: Vec<(String, bool)>,
    pub restart: Restart,
    pub restart_sec: Duration,
    pub timeout_start: Duration,
    pub timeout_stop: Duration,
    pub remain_after_exit: bool,
    pub pid_file: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub working_directory: Option<String>,
    pub success_exit_status: Vec<i32>,
    pub start_limit_interval: Duration,
    pub start_limit_burst: u32,
    pub wanted_by: Vec<String>,
    /// `[Timer]`, for `.timer` units only.
    pub timer: Option<Timer>,
}

/// A `.timer` unit's `[Timer]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timer {
    /// `OnCalendar=` expressions, checked by `systemd-analyze calendar` when loaded.
    pub on_calendar: Vec<String>,
    pub on_boot: Vec<Duration>,
    pub on_active: Vec<Duration>,
    pub on_unit_active: Vec<Duration>,
    pub persistent: bool,
    pub randomized_delay: Duration,
    /// Accepted and shown; the lab fires on time (an accuracy of zero is within any bound).
    pub accuracy: Duration,
    /// The unit to start (`Unit=`, default: the timer's name with `.service`).
    pub unit: String,
}

/// The `[Timer]` keys the lab supports; others are refused, since ignoring one would change when
/// the service runs.
const TIMER_KEYS: &str = "OnCalendar, OnBootSec, OnActiveSec, OnUnitActiveSec, Persistent, RandomizedDelaySec, AccuracySec, Unit";

/// Where units are looked up, first match wins (like systemd: /etc before /lib).
pub const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "run/systemd/system",
    "lib/systemd/system",
    "usr/lib/systemd/system",
];

/// `haproxy` -> `haproxy.service`; `.timer` stays; other unit types are refused.
pub fn normalize(name: &str) -> Result<String> {
    if name.is_empty() || name.contains('/') {
        bail!("invalid unit name {name:?}");
    }
    match name.rsplit_once('.') {
        Some((_, "service" | "timer")) => Ok(name.to_string()),
        Some((_, ext))
            if [
                "socket", "target", "mount", "path", "slice", "scope", "device",
            ]
            .contains(&ext) =>
        {
            bail!(
                "unit {name} is a .{ext} unit; the hakube lab's systemctl manages only .service and .timer units"
            )
        }
        _ => Ok(format!("{name}.service")),
    }
}

/// Find and parse `name` (normalized) below `root`. `Ok(None)` when no unit file exists.
pub fn load(root: &Path, name: &str) -> Result<Option<Unit>> {
    let Some(main) = UNIT_DIRS
        .iter()
        .map(|d| root.join(d).join(name))
        .find(|p| p.is_file())
    else {
        return Ok(None);
    };
    // Drop-ins from every unit folder; for equal file names the earlier folder wins.
    let mut dropins: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in UNIT_DIRS.iter().rev() {
        let dir = root.join(d).join(format!("{name}.d"));
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let fname = e.file_name().to_string_lossy().to_string();
                if fname.ends_with(".conf") {
                    dropins.insert(fname, e.path());
                }
            }
        }
    }
    let mut files = vec![main];
    files.extend(dropins.into_values());
    let mut unit = Unit::empty(name);
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        unit.apply(&text)
            .with_context(|| format!("in {}", f.display()))?;
    }
    unit.files = files;
    if let Some(t) = &mut unit.timer {
        return check_timer(name, t, &unit.files[0]).map(|()| Some(unit));
    }
    if unit.exec_start.is_empty() {
        bail!(
            "{name} has no ExecStart= (in {})\n  help: add an ExecStart= line to the unit's [Service] section",
            unit.files[0].display()
        );
    }
    if unit.kind != ServiceType::Oneshot && unit.exec_start.len() > 1 {
        bail!("{name} has more than one ExecStart=, which only Type=oneshot allows");
    }
    Ok(Some(unit))
}

fn check_timer(name: &str, t: &mut Timer, file: &Path) -> Result<()> {
    if t.on_calendar.is_empty()
        && t.on_boot.is_empty()
        && t.on_active.is_empty()
        && t.on_unit_active.is_empty()
    {
        bail!(
            "{name} lacks a time to elapse at (in {})\n  help: add OnCalendar=, OnBootSec=, OnActiveSec= or OnUnitActiveSec= to its [Timer] section",
            file.display()
        );
    }
    if t.unit.is_empty() {
        t.unit = format!("{}.service", name.trim_end_matches(".timer"));
    }
    for expr in &t.on_calendar {
        super::calendar::next_elapse(expr, std::time::SystemTime::now())
            .with_context(|| format!("{name}: OnCalendar={expr} (in {})", file.display()))?;
    }
    Ok(())
}

impl Unit {
    pub fn is_timer(&self) -> bool {
        self.timer.is_some()
    }

    fn empty(name: &str) -> Unit {
        Unit {
            name: name.to_string(),
            files: Vec::new(),
            description: String::new(),
            kind: ServiceType::Simple,
            exec_start_pre: Vec::new(),
            exec_start: Vec::new(),
            exec_start_post: Vec::new(),
            exec_reload: Vec::new(),
            exec_stop: Vec::new(),
            exec_stop_post: Vec::new(),
            environment: Vec::new(),
            environment_files: Vec::new(),
            restart: Restart::No,
            restart_sec: Duration::from_millis(100),
            timeout_start: Duration::from_secs(90),
            // Shorter than systemd's 90 s: drills should not wait long for a hung process.
            timeout_stop: Duration::from_secs(10),
            remain_after_exit: false,
            pid_file: None,
            user: None,
            group: None,
            working_directory: None,
            success_exit_status: Vec::new(),
            start_limit_interval: Duration::from_secs(10),
            start_limit_burst: 5,
            wanted_by: Vec::new(),
            timer: name.ends_with(".timer").then(Timer::default),
        }
    }

    /// Parse one file's text on top of what is already set.
    pub fn apply(&mut self, text: &str) -> Result<()> {
        let mut section = String::new();
        let mut pending = String::new();
        for (no, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if pending.is_empty()
                && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
            {
                continue;
            }
            // A trailing backslash continues the line.
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            let full = std::mem::take(&mut pending);
            if full.starts_with('[') && full.ends_with(']') {
                section = full[1..full.len() - 1].to_string();
                continue;
            }
            let Some((k, v)) = full.split_once('=') else {
                bail!("line {}: expected KEY=VALUE, found {full:?}", no + 1);
            };
            self.set(&section, k.trim(), v.trim())
                .with_context(|| format!("line {}", no + 1))?;
        }
        Ok(())
    }

    fn set(&mut self, section: &str, key: &str, v: &str) -> Result<()> {
        match (&mut self.timer, section) {
            (Some(t), "Timer") => return set_timer(t, key, v),
            (Some(_), "Service") => {
                bail!("a .timer unit has no [Service] section; put {key}= in the service it starts")
            }
            (None, "Timer") => bail!("[Timer] belongs in a .timer unit, not in {}", self.name),
            _ => {}
        }
        let exec = |list: &mut Vec<ExecLine>| {
            if v.is_empty() {
                list.clear(); // an empty assignment resets the list (drop-ins rely on it)
            } else {
                list.push(parse_exec(v));
            }
        };
        match (section, key) {
            ("Unit", "Description") => self.description = v.to_string(),
            ("Unit", "StartLimitIntervalSec") => self.start_limit_interval = parse_sec(v)?,
            ("Unit", "StartLimitBurst") => {
                self.start_limit_burst = v.parse().context("StartLimitBurst")?
            }
            ("Service", "Type") => {
                self.kind = match v {
                    "simple" | "exec" | "idle" | "" => ServiceType::Simple,
                    "notify" | "notify-reload" => ServiceType::Notify,
                    "forking" => ServiceType::Forking,
                    "oneshot" => ServiceType::Oneshot,
                    other => bail!(
                        "Type={other} is not supported by the lab's systemctl (use simple, exec, notify, forking or oneshot)"
                    ),
                }
            }
            ("Service", "ExecStartPre") => exec(&mut self.exec_start_pre),
            ("Service", "ExecStart") => exec(&mut self.exec_start),
            ("Service", "ExecStartPost") => exec(&mut self.exec_start_post),
            ("Service", "ExecReload") => exec(&mut self.exec_reload),
            ("Service", "ExecStop") => exec(&mut self.exec_stop),
            ("Service", "ExecStopPost") => exec(&mut self.exec_stop_post),
            ("Service", "Environment") => {
                if v.is_empty() {
                    self.environment.clear();
                }
                for word in split_words(v)? {
                    if let Some((k, val)) = word.split_once('=') {
                        self.environment.push((k.to_string(), val.to_string()));
                    }
                }
            }
            ("Service", "EnvironmentFile") => {
                if v.is_empty() {
                    self.environment_files.clear();
                } else if let Some(p) = v.strip_prefix('-') {
                    self.environment_files.push((p.to_string(), true));
                } else {
                    self.environment_files.push((v.to_string(), false));
                }
            }
            ("Service", "Restart") => {
                self.restart = match v {
                    "no" => Restart::No,
                    "always" => Restart::Always,
                    "on-failure" => Restart::OnFailure,
                    "on-abnormal" | "on-abort" | "on-watchdog" => Restart::OnAbnormal,
                    "on-success" => Restart::No,
                    other => bail!("Restart={other} is not known"),
                }
            }
            ("Service", "RestartSec") => self.restart_sec = parse_sec(v)?,
            ("Service", "TimeoutStartSec") => self.timeout_start = parse_sec(v)?,
            ("Service", "TimeoutStopSec") => self.timeout_stop = parse_sec(v)?,
            ("Service", "TimeoutSec") => {
                self.timeout_start = parse_sec(v)?;
                self.timeout_stop = self.timeout_start;
            }
            ("Service", "RemainAfterExit") => {
                self.remain_after_exit = matches!(v, "yes" | "true" | "1" | "on")
            }
            ("Service", "PIDFile") => self.pid_file = Some(v.to_string()),
            ("Service", "User") => self.user = Some(v.to_string()).filter(|u| !u.is_empty()),
            ("Service", "Group") => self.group = Some(v.to_string()).filter(|g| !g.is_empty()),
            ("Service", "WorkingDirectory") => {
                self.working_directory = Some(v.trim_start_matches('-').to_string())
            }
            ("Service", "SuccessExitStatus") => {
                for w in v.split_whitespace() {
                    if let Ok(n) = w.parse() {
                        self.success_exit_status.push(n);
                    }
                }
            }
            ("Install", "WantedBy") => self
                .wanted_by
                .extend(v.split_whitespace().map(str::to_string)),
            // Everything else (sandboxing, ordering, limits) has no meaning in the lab.
            _ => {}
        }
        Ok(())
    }
}

fn set_timer(t: &mut Timer, key: &str, v: &str) -> Result<()> {
    // As in systemd, an empty assignment resets the list.
    let spans = |list: &mut Vec<Duration>| -> Result<()> {
        if v.is_empty() {
            list.clear();
        } else {
            list.push(parse_sec(v).with_context(|| format!("{key}={v}"))?);
        }
        Ok(())
    };
    match key {
        "OnCalendar" if v.is_empty() => t.on_calendar.clear(),
        "OnCalendar" => t.on_calendar.push(v.to_string()),
        "OnBootSec" => spans(&mut t.on_boot)?,
        "OnActiveSec" => spans(&mut t.on_active)?,
        "OnUnitActiveSec" if parse_sec(v).is_ok_and(|d| d.is_zero()) => {
            bail!(
                "OnUnitActiveSec=0 would start the service over and over; give a time span such as 1h"
            )
        }
        "OnUnitActiveSec" => spans(&mut t.on_unit_active)?,
        "Persistent" => t.persistent = parse_bool(key, v)?,
        "RandomizedDelaySec" => t.randomized_delay = parse_sec(v).context(key.to_string())?,
        "AccuracySec" => t.accuracy = parse_sec(v).context(key.to_string())?,
        "Unit" => {
            let u = normalize(v).with_context(|| format!("Unit={v}"))?;
            if !u.ends_with(".service") {
                bail!("Unit={v}: a timer of the lab's systemctl can start only a .service unit");
            }
            t.unit = u;
        }
        other => bail!(
            "{other}= is not supported in [Timer] by the lab's systemctl (supported: {TIMER_KEYS})"
        ),
    }
    Ok(())
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => bail!("{key}={v} is not a boolean (use yes or no)"),
    }
}

fn parse_exec(v: &str) -> ExecLine {
    let mut rest = v;
    let mut ignore_failure = false;
    while let Some(c) = rest.chars().next().filter(|c| "-@:+!".contains(*c)) {
        if c == '-' {
            ignore_failure = true;
        }
        rest = &rest[1..];
    }
    ExecLine {
        ignore_failure,
        raw: rest.trim().to_string(),
    }
}

/// `5`, `5s`, `100ms`, `1min 30s`, `infinity`.
pub fn parse_sec(v: &str) -> Result<Duration> {
    let v = v.trim();
    if v == "infinity" {
        return Ok(Duration::from_secs(365 * 24 * 3600));
    }
    if let Ok(n) = v.parse::<f64>() {
        return Ok(Duration::from_secs_f64(n));
    }
    humantime::parse_duration(v)
        .with_context(|| format!("{v:?} is not a time span (use 5s, 100ms or 1min)"))
}

/// Split into words honouring "double" and 'single' quotes and backslash escapes. Returns each
/// word with whether any part of it was quoted.
fn split_quoted(s: &str) -> Result<Vec<(String, bool)>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push((std::mem::take(&mut cur), quoted));
                    in_word = false;
                    quoted = false;
                }
            }
            '"' | '\'' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        None => bail!("unterminated quote in {s:?}"),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => cur.push(unescape(chars.next())),
                        Some(x) => cur.push(x),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(unescape(chars.next()));
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push((cur, quoted));
    }
    Ok(words)
}

fn unescape(c: Option<char>) -> char {
    match c {
        Some('n') => '\n',
        Some('t') => '\t',
        Some(x) => x,
        None => '\\',
    }
}

fn split_words(s: &str) -> Result<Vec<String>> {
    Ok(split_quoted(s)?.into_iter().map(|(w, _)| w).collect())
}

/// Expand an Exec line into argv with systemd's rules: a word that is exactly `$VAR` becomes
/// the variable's whitespace-separated words (none if unset or empty); `${VAR}` anywhere is
/// replaced by the value as is; `$$` is a literal `$`; `%n` is the unit name and `%%` is `%`.
pub fn expand(raw: &str, env: &BTreeMap<String, String>, unit: &str) -> Result<Vec<String>> {
    let raw = raw
        .replace("%n", unit)
        .replace("%N", unit.trim_end_matches(".service"))
        .replace("%%", "%");
    let mut argv = Vec::new();
    for (word, quoted) in split_quoted(&raw)? {
        if !quoted
            && let Some(var) = word.strip_prefix('$')
            && !var.is_empty()
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            argv.extend(
                env.get(var)
                    .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
            continue;
        }
        argv.push(expand_braced(&word, env));
    }
    if argv.is_empty() {
        bail!("empty command line {raw:?}");
    }
    Ok(argv)
}

fn expand_braced(word: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('{')
            && let Some(end) = inner.find('}')
        {
            out.push_str(env.get(&inner[..end]).map(String::as_str).unwrap_or(""));
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Read an EnvironmentFile: `KEY=VALUE` lines, `#`/`;` comments, optional quotes.
pub fn read_env_file(path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = if v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"'))
                    || (v.starts_with('\'') && v.ends_with('\'')))
            {
                &v[1..v.len() - 1]
            } else {
                v
            };
            out.push((k.trim().to_string(), v.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAPROXY: &str = r#"
[Unit]
Description=HAProxy Load Balancer
[Service]
EnvironmentFile=-/etc/default/haproxy
Environment="CONFIG=/etc/haproxy/haproxy.cfg" "PIDFILE=/run/haproxy.pid" "EXTRAOPTS=-S /run/haproxy-master.sock"
ExecStart=/usr/sbin/haproxy -Ws -f $CONFIG -p $PIDFILE $EXTRAOPTS
ExecReload=/usr/sbin/haproxy -Ws -f $CONFIG -c -q $EXTRAOPTS
ExecReload=/bin/kill -USR2 $MAINPID
KillMode=mixed
Restart=always
SuccessExitStatus=143
Type=notify
[Install]
WantedBy=multi-user.target
"#;

    fn unit(text: &str) -> Unit {
        let mut u = Unit::empty("x.service");
        u.apply(text).unwrap();
        u
    }

    #[test]
    fn debian_haproxy_unit() {
        let u = unit(HAPROXY);
        assert_eq!(u.kind, ServiceType::Notify);
        assert_eq!(u.restart, Restart::Always);
        assert_eq!(u.exec_reload.len(), 2);
        assert_eq!(
            u.environment_files,
            vec![("/etc/default/haproxy".to_string(), true)]
        );
        assert_eq!(u.success_exit_status, vec![143]);
        let env: BTreeMap<String, String> = u.environment.iter().cloned().collect();
        let argv = expand(&u.exec_start[0].raw, &env, "haproxy.service").unwrap();
        assert_eq!(
            argv,
            [
                "/usr/sbin/haproxy",
                "-Ws",
                "-f",
                "/etc/haproxy/haproxy.cfg",
                "-p",
                "/run/haproxy.pid",
                "-S",
                "/run/haproxy-master.sock"
            ]
        );
    }

    #[test]
    fn dropin_resets_exec_start() {
        let mut u = unit("[Service]\nExecStart=/bin/a\nExecStartPre=-/bin/pre\n");
        u.apply("[Service]\nExecStart=\nExecStart=/bin/b --flag \\\n  --more\n")
            .unwrap();
        assert_eq!(u.exec_start.len(), 1);
        assert_eq!(u.exec_start[0].raw, "/bin/b --flag  --more");
        assert!(u.exec_start_pre[0].ignore_failure);
    }

    #[test]
    fn variables_follow_systemd_rules() {
        let env: BTreeMap<String, String> = [
            ("A".to_string(), "x  y".to_string()),
            ("E".to_string(), String::new()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            expand("/bin/c $A ${A} --v=${A} $E $$HOME '%n'", &env, "u.service").unwrap(),
            ["/bin/c", "x", "y", "x  y", "--v=x  y", "$HOME", "u.service"]
        );
        assert_eq!(
            expand("/bin/c \"$A\"", &env, "u").unwrap(),
            ["/bin/c", "$A"]
        );
    }

    #[test]
    fn names_and_times() {
        assert_eq!(normalize("etcd").unwrap(), "etcd.service");
        assert!(normalize("multi-user.target").is_err());
        assert_eq!(parse_sec("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_sec("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_sec("1min 30s").unwrap(), Duration::from_secs(90));
    }

    #[test]
    fn env_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        std::fs::write(&p, "# c\nA=1\nexport B=\"two words\"\n\nC='3'\n").unwrap();
        let v = read_env_file(&p).unwrap();
        assert_eq!(
            v,
            [("A", "1"), ("B", "two words"), ("C", "3")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}

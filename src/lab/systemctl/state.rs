//! What the lab's systemctl knows about a unit, and where: the folder tree it works on (`Ctx`),
//! the recorded state in `/run/hakube-systemd/UNIT.json`, and the state as it really is.

use crate::lab::proc::ProcRef;
use crate::lab::unit::{self, Unit};
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable that moves all paths below another root (tests).
pub const ROOT_ENV: &str = "HAKUBE_SYSTEMCTL_ROOT";

#[derive(Debug, Clone)]
pub struct Ctx {
    pub root: PathBuf,
}

impl Ctx {
    pub fn from_env() -> Ctx {
        Ctx {
            root: std::env::var_os(ROOT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
        }
    }
    pub fn new(root: &Path) -> Ctx {
        Ctx {
            root: root.to_path_buf(),
        }
    }
    pub(super) fn run_dir(&self) -> PathBuf {
        self.root.join("run/hakube-systemd")
    }
    pub(super) fn state_path(&self, unit: &str) -> PathBuf {
        self.run_dir().join(format!("{unit}.json"))
    }
    pub fn log_path(&self, unit: &str) -> PathBuf {
        self.run_dir().join(format!("{unit}.log"))
    }
    pub(super) fn notify_path(&self, unit: &str) -> PathBuf {
        self.run_dir().join(format!("{unit}.notify"))
    }
    pub(super) fn wants(&self, target: &str, unit: &str) -> PathBuf {
        self.root
            .join("etc/systemd/system")
            .join(format!("{target}.wants"))
            .join(unit)
    }
    pub(super) fn ensure_run_dir(&self) -> Result<()> {
        let d = self.run_dir();
        fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }
    pub(super) fn lock(&self, unit: &str) -> Result<Flock<File>> {
        self.ensure_run_dir()?;
        let p = self.run_dir().join(format!("{unit}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", p.display()))
    }
    pub(super) fn load(&self, name: &str) -> Result<Option<Unit>> {
        unit::load(&self.root, name)
    }
}

/// An enum written as systemd's word for it (in state files, `show` and `status`); an empty
/// word, as older state files may hold, reads as the default.
macro_rules! word_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$v),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }

            pub fn parse(word: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == word)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let word = String::deserialize(d)?;
                if word.is_empty() {
                    return Ok($name::default());
                }
                $name::parse(&word).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "{word:?} is not a {}", stringify!($name)
                    ))
                })
            }
        }
    };
}

word_enum! {
    /// systemd's ActiveState.
    ActiveState {
        Active = "active",
        Activating = "activating",
        Deactivating = "deactivating",
        Reloading = "reloading",
        #[default]
        Inactive = "inactive",
        Failed = "failed",
    }
}

word_enum! {
    /// systemd's SubState, for services and timers.
    SubState {
        Running = "running",
        StartPre = "start-pre",
        Start = "start",
        AutoRestart = "auto-restart",
        Reload = "reload",
        Exited = "exited",
        StopSigterm = "stop-sigterm",
        #[default]
        Dead = "dead",
        Failed = "failed",
        /// A timer waiting for its next elapse.
        Waiting = "waiting",
        /// A timer with no elapse left (RemainAfterElapse=yes).
        Elapsed = "elapsed",
    }
}

word_enum! {
    /// systemd's Result: why a unit failed (or `success`).
    UnitResult {
        #[default]
        Success = "success",
        ExitCode = "exit-code",
        Signal = "signal",
        Timeout = "timeout",
        StartLimitHit = "start-limit-hit",
        Resources = "resources",
        Protocol = "protocol",
    }
}

impl ActiveState {
    /// `is-active` says yes (exit 0).
    pub fn is_active(self) -> bool {
        matches!(self, ActiveState::Active | ActiveState::Reloading)
    }
}

/// What the supervisor records about a service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SvcState {
    pub state: ActiveState,
    pub sub: SubState,
    pub supervisor: Option<ProcRef>,
    pub main: Option<ProcRef>,
    /// Unix seconds of the last state change.
    pub since: u64,
    pub n_restarts: u32,
    pub result: UnitResult,
    pub last_exit: Option<String>,
    pub status_text: Option<String>,
    /// Timers: Unix seconds of the next elapse, while waiting for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_elapse: Option<u64>,
    /// Timers: Unix seconds of the last trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<u64>,
}

impl SvcState {
    /// A state change, stamped with the time.
    pub(super) fn enter(&mut self, state: ActiveState, sub: SubState) {
        self.state = state;
        self.sub = sub;
        self.since = now_secs();
    }

    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn read_state(ctx: &Ctx, unit: &str) -> Option<SvcState> {
    serde_json::from_str(&fs::read_to_string(ctx.state_path(unit)).ok()?).ok()
}

pub(super) fn write_state(ctx: &Ctx, unit: &str, st: &SvcState) -> Result<()> {
    ctx.ensure_run_dir()?;
    let p = ctx.state_path(unit);
    let tmp = p.with_extension(format!("json.{}", std::process::id()));
    fs::write(&tmp, serde_json::to_vec_pretty(st)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}

/// The state as it really is: a recorded state whose supervisor died is not believed.
pub fn effective(ctx: &Ctx, unit: &str) -> SvcState {
    let Some(mut st) = read_state(ctx, unit) else {
        return SvcState {
            state: ActiveState::Inactive,
            sub: SubState::Dead,
            ..Default::default()
        };
    };
    let sup_alive = st.supervisor.is_some_and(|s| s.alive());
    if !sup_alive {
        let remains =
            st.state == ActiveState::Active && st.main.is_none() && st.supervisor.is_none();
        if st.main.is_some_and(|m| m.alive()) {
            // The supervisor was killed but the service runs on, unsupervised.
            st.state = ActiveState::Active;
            st.sub = SubState::Running;
        } else if !remains && !matches!(st.state, ActiveState::Inactive | ActiveState::Failed) {
            st.state = ActiveState::Failed;
            st.sub = SubState::Failed;
            st.result = UnitResult::Resources;
        }
    }
    st
}

/// Active state for a unit, seen from outside the host (`root` is the host's private tree):
/// `not-installed` when there is neither a unit file nor a record.
pub fn active_state(root: &Path, unit: &str) -> String {
    let ctx = Ctx::new(root);
    let name = unit::normalize(unit).unwrap_or_else(|_| unit.to_string());
    let has_file = unit::UNIT_DIRS
        .iter()
        .take(2)
        .any(|d| root.join(d).join(&name).is_file());
    if !has_file && read_state(&ctx, &name).is_none() {
        return "not-installed".into();
    }
    effective(&ctx, &name).state.to_string()
}

/// The live main process of a unit, seen from outside the host.
pub fn main_process(root: &Path, unit: &str) -> Option<ProcRef> {
    let name = unit::normalize(unit).ok()?;
    read_state(&Ctx::new(root), &name)?
        .main
        .filter(ProcRef::alive)
}

/// Every live supervisor recorded below `root` (for `lab down`).
pub fn recorded_supervisors(root: &Path) -> Vec<ProcRef> {
    let ctx = Ctx::new(root);
    let Ok(rd) = fs::read_dir(ctx.run_dir()) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let unit = name.strip_suffix(".json")?;
            read_state(&ctx, unit)?.supervisor.filter(ProcRef::alive)
        })
        .collect()
}

/// `Thu 2026-11-26 09:00:00 UTC`, as systemd writes time stamps.
pub fn format_day_time(secs: u64) -> String {
    // 1970-01-01 was a Thursday.
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{} {}",
        DAYS[(secs / 86_400 % 7) as usize],
        format_time(secs)
    )
}

/// `2026-11-26 09:00:00 UTC`, without a time zone database.
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time(1_795_000_000), "2026-11-18 11:06:40 UTC");
        assert_eq!(
            format_day_time(1_796_256_000),
            "Thu 2026-12-03 00:00:00 UTC"
        );
    }

    #[test]
    fn states_read_and_write_systemd_words() {
        let st = SvcState {
            state: ActiveState::Activating,
            sub: SubState::AutoRestart,
            result: UnitResult::StartLimitHit,
            ..Default::default()
        };
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["state"], "activating");
        assert_eq!(json["sub"], "auto-restart");
        assert_eq!(json["result"], "start-limit-hit");
        // Every word reads back as itself; an empty result (older files) reads as success.
        for r in UnitResult::ALL {
            assert_eq!(UnitResult::parse(r.as_str()), Some(*r));
        }
        let old: SvcState = serde_json::from_str(
            r#"{"state":"active","sub":"exited","supervisor":null,"main":null,"since":1,"nRestarts":0,"result":"","lastExit":null,"statusText":null}"#,
        )
        .unwrap();
        assert_eq!(old.result, UnitResult::Success);
        assert_eq!(old.sub, SubState::Exited);
        assert!(serde_json::from_str::<SvcState>(r#"{"state":"bogus"}"#).is_err());
        assert_eq!(format!("{:<8}|", ActiveState::Failed), "failed  |");
    }
}

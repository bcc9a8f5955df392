//! How a service's commands run: the clean environment, the log, the process group.

use super::state::{Ctx, format_time, now_secs};
use crate::lab::unit::{self, Unit};
use anyhow::{Context, Result, bail};
use nix::sys::signal::SigSet;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One line of the unit's log, as the supervisors write it.
pub(super) fn log_line(mut log: &File, unit: &str, msg: &str) {
    let _ = writeln!(
        log,
        "{} hakube-systemd: {unit}: {msg}",
        format_time(now_secs())
    );
}

pub(super) fn open_log(ctx: &Ctx, u: &str) -> Result<File> {
    ctx.ensure_run_dir()?;
    let p = ctx.log_path(u);
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("cannot open {}", p.display()))
}

/// The service environment: a fixed PATH, then Environment=, then EnvironmentFile= (which
/// overrides, as in systemd).
pub(super) fn build_env(unit: &Unit) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), SERVICE_PATH.to_string());
    env.insert(
        "INVOCATION_ID".to_string(),
        hex::encode(rand::random::<[u8; 16]>()),
    );
    if let Some(u) = &unit.user
        && let Ok(Some(pw)) = nix::unistd::User::from_name(u)
    {
        env.insert("HOME".into(), pw.dir.display().to_string());
        env.insert("USER".into(), pw.name.clone());
        env.insert("LOGNAME".into(), pw.name.clone());
        env.insert("SHELL".into(), pw.shell.display().to_string());
    }
    for (k, v) in &unit.environment {
        env.insert(k.clone(), v.clone());
    }
    for (path, optional) in &unit.environment_files {
        match unit::read_env_file(Path::new(path)) {
            Ok(vars) => env.extend(vars),
            Err(_) if *optional => {}
            Err(e) => bail!("EnvironmentFile={path} cannot be read: {e}"),
        }
    }
    Ok(env)
}

/// A command for the service: clean environment, output to the unit's log, its own process
/// group (so stop can signal everything it forked), User=/Group=/WorkingDirectory= honoured.
pub(super) fn service_command(
    unit: &Unit,
    argv: &[String],
    env: &BTreeMap<String, String>,
    log: File,
) -> Result<Command> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .current_dir(unit.working_directory.as_deref().unwrap_or("/"));
    // The supervisor blocks SIGTERM and SIGCHLD (it takes them with sigwait); a signal mask is
    // inherited across exec, so give the service an empty one or it would ignore `stop`.
    // SAFETY: pthread_sigmask(3) only.
    unsafe {
        cmd.pre_exec(|| {
            SigSet::empty().thread_set_mask()?;
            Ok(())
        });
    }
    if let Some(u) = &unit.user {
        let pw = nix::unistd::User::from_name(u)
            .ok()
            .flatten()
            .with_context(|| format!("User={u} does not exist on this host"))?;
        cmd.uid(pw.uid.as_raw()).gid(pw.gid.as_raw());
    }
    if let Some(g) = &unit.group {
        let gr = nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .with_context(|| format!("Group={g} does not exist on this host"))?;
        cmd.gid(gr.gid.as_raw());
    }
    Ok(cmd)
}

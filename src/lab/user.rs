//! `lab up --user NAME`: a non-root login with passwordless sudo on every host.
//!
//! The user exists only inside the hosts: each host bind-mounts its own copies of /etc/passwd,
//! /etc/group, /etc/shadow, /etc/sudoers.d and /home (the machine's plus the user), so the
//! machine itself is never changed and `lab down` has nothing to undo outside the lab folder.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What each host sees privately when the lab has a user (relative to `/`). /etc/hosts names
/// the host, as on a real server: sudo warns on every command when the hostname does not resolve.
pub const PRIVATE_FILES: &[&str] = &[
    "etc/passwd",
    "etc/group",
    "etc/shadow",
    "etc/sudoers.d",
    "etc/hosts",
];
/// The user's home folder lives in the host's own /home.
pub const HOME_DIR: &str = "home";
const SUDO: &str = "/usr/bin/sudo";

/// The lab's login user, as recorded in the lab state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabUser {
    pub name: String,
    pub uid: u32,
}

impl LabUser {
    fn home(&self) -> String {
        format!("/home/{}", self.name)
    }
    /// The file `lab up` writes in each host's /etc/sudoers.d.
    fn sudoers_file(&self) -> String {
        format!("hakube-lab-{}", self.name)
    }
}

/// Check the name and pick a uid the machine does not use.
pub fn plan(name: &str) -> Result<LabUser> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        bail!(
            "--user {name:?} is not a valid user name\n  help: use lowercase letters, digits, '_' and '-', starting with a letter, at most 32 characters"
        );
    }
    if name == "root" {
        bail!("--user root is what the lab does without --user\n  help: leave out --user");
    }
    if !Path::new(SUDO).is_file() {
        bail!(
            "--user needs sudo on this machine ({SUDO} is missing): the lab's hosts share its programs\n  help: run scripts/setup.sh (or apt-get install sudo)"
        );
    }
    let passwd = read("/etc/passwd")?;
    let group = read("/etc/group")?;
    if passwd.lines().any(|l| l.split(':').next() == Some(name))
        || group.lines().any(|l| l.split(':').next() == Some(name))
    {
        bail!(
            "--user {name}: this machine already has a user or group named {name}; the lab adds its user to its hosts' own copies of /etc/passwd and /etc/group\n  help: pick a name this machine does not use"
        );
    }
    let used = |text: &str| -> Vec<u32> {
        text.lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect()
    };
    let (uids, gids) = (used(&passwd), used(&group));
    let uid = (2000..60000)
        .find(|id| !uids.contains(id) && !gids.contains(id))
        .context("no free uid between 2000 and 60000 on this machine")?;
    Ok(LabUser {
        name: name.to_string(),
        uid,
    })
}

fn read(p: &str) -> Result<String> {
    fs::read_to_string(p).with_context(|| format!("cannot read {p}"))
}

/// Write the host's copies of the account files with the user added, its home folder and its
/// authorized key (`/etc/ssh/authorized_keys.NAME`, owned by the user: sshd reads it as the user).
pub fn prepare(fs_root: &Path, host: &str, u: &LabUser, authorized_key: &str) -> Result<()> {
    let etc = fs_root.join("etc");
    fs::create_dir_all(&etc)?;
    let shell = if Path::new("/bin/bash").is_file() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let add = |file: &str, line: String, mode: u32| -> Result<()> {
        let mut text = read(&format!("/{file}"))?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        let dst = fs_root.join(file);
        // Created 0600, so the shadow copy (the machine's hashes) is never readable by others.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&dst)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", dst.display()))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let (n, id) = (&u.name, u.uid);
    add(
        "etc/passwd",
        format!("{n}:x:{id}:{id}:hakube lab user:{}:{shell}\n", u.home()),
        0o644,
    )?;
    add("etc/group", format!("{n}:x:{id}:\n"), 0o644)?;
    add("etc/hosts", format!("127.0.1.1 {host}\n"), 0o644)?;
    // `*`: no password can log in, but the account is not locked (sshd refuses locked ones).
    add("etc/shadow", format!("{n}:*:19000:0:99999:7:::\n"), 0o600)?;
    let sudoers = fs_root.join("etc/sudoers.d");
    fs::create_dir_all(&sudoers)?;
    fs::set_permissions(&sudoers, fs::Permissions::from_mode(0o755))?;
    if let Ok(dir) = fs::read_dir("/etc/sudoers.d") {
        for e in dir.flatten().filter(|e| e.path().is_file()) {
            let dst = sudoers.join(e.file_name());
            fs::copy(e.path(), &dst)
                .with_context(|| format!("cannot copy {}", e.path().display()))?;
        }
    }
    write_sudoers(fs_root, u, true)?;
    let home = fs_root.join(HOME_DIR).join(n);
    fs::create_dir_all(&home)?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700))?;
    let own = |p: &Path| {
        nix::unistd::chown(p, Some(id.into()), Some(id.into()))
            .with_context(|| format!("cannot chown {}", p.display()))
    };
    own(&home)?;
    let keys = fs_root.join(format!("etc/ssh/authorized_keys.{n}"));
    crate::pki::write_secret(&keys, authorized_key)?;
    own(&keys)?;
    Ok(())
}

/// The user's sudoers entry: NOPASSWD, or one that asks for a password (which the lab never
/// gave the user, so sudo cannot run anything for it).
pub fn write_sudoers(fs_root: &Path, u: &LabUser, nopasswd: bool) -> Result<()> {
    let rule = if nopasswd { "NOPASSWD: " } else { "" };
    let text = format!(
        "# Written by `hakube lab`; `hakube lab sudo password|nopasswd` switches it.\n{} ALL=(ALL:ALL) {rule}ALL\n",
        u.name
    );
    let dst = fs_root.join("etc/sudoers.d").join(u.sudoers_file());
    let tmp = dst.with_extension("tmp");
    fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    // sudo ignores entries that are writable or not owned by root.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o440))?;
    fs::rename(&tmp, &dst).with_context(|| format!("cannot write {}", dst.display()))
}

/// The sshd_config lines for a lab with a user: only that user logs in.
pub fn sshd_lines(u: Option<&LabUser>) -> String {
    match u {
        None => "AuthorizedKeysFile /etc/ssh/authorized_keys\nPermitRootLogin prohibit-password\n"
            .into(),
        Some(u) => format!(
            "AuthorizedKeysFile /etc/ssh/authorized_keys.%u\nPermitRootLogin no\nAllowUsers {}\n",
            u.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(plan("Ops").is_err());
        assert!(plan("root").is_err());
        assert!(plan("1ops").is_err());
        assert!(plan("a b").is_err());
    }

    #[test]
    fn sudoers_rule_follows_the_switch() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(d.path().join("etc/sudoers.d")).expect("mkdir");
        let u = LabUser {
            name: "ops".into(),
            uid: 2000,
        };
        let f = d.path().join("etc/sudoers.d/hakube-lab-ops");
        write_sudoers(d.path(), &u, true).expect("write");
        assert!(
            read(&f.to_string_lossy())
                .expect("read")
                .contains("ops ALL=(ALL:ALL) NOPASSWD: ALL")
        );
        write_sudoers(d.path(), &u, false).expect("write");
        let text = read(&f.to_string_lossy()).expect("read");
        assert!(text.contains("ops ALL=(ALL:ALL) ALL") && !text.contains("NOPASSWD"));
        assert_eq!(
            fs::metadata(&f).expect("meta").permissions().mode() & 0o777,
            0o440
        );
    }
}

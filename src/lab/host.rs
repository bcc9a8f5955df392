//! One lab host: its private file tree, its holder process (the owner of its mount and UTS
//! namespaces, inside its network namespace) and its sshd.

use super::proc::{HostNs, ProcRef};
use super::state::{HostState, LabPaths, LabState, PRIVATE_DIRS};
use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use std::ffi::{CStr, CString, OsString};
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Files a freshly installed package would have put in the private folders, copied from the
/// machine so hosts look like real servers (HAProxy's error pages, ssh's client config).
const SEED: &[&str] = &[
    "etc/haproxy",
    "etc/keepalived",
    "etc/ssh/ssh_config",
    "etc/ssh/ssh_config.d",
    "etc/ssh/moduli",
];

/// Create the host's private tree and its sshd files. Also creates any missing mount point in
/// the machine's own tree (an empty folder such as /etc/etcd), since a bind mount needs one.
pub fn prepare_fs(
    paths: &LabPaths,
    h: &HostState,
    authorized_key: &str,
    user: Option<&super::user::LabUser>,
) -> Result<()> {
    let fs_root = paths.host_fs(&h.name);
    // sd_booted() looks for this folder; without it keepalived never sends READY=1.
    fs::create_dir_all(fs_root.join("run/systemd/system"))
        .with_context(|| format!("cannot create {}/run/systemd/system", fs_root.display()))?;
    for d in PRIVATE_DIRS {
        let dir = fs_root.join(d);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let target = Path::new("/").join(d);
        if !target.is_dir() {
            fs::create_dir_all(&target).with_context(|| {
                format!(
                    "cannot create the mount point {} on this machine",
                    target.display()
                )
            })?;
        }
    }
    fs::set_permissions(fs_root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    for s in SEED {
        let src = Path::new("/").join(s);
        if src.exists() {
            copy_tree(&src, &fs_root.join(s))?;
        }
    }
    // keepalived sends READY=1 only when its parent is systemd (PID 1), which lab hosts lack.
    let dropin = fs_root.join("etc/systemd/system/keepalived.service.d");
    fs::create_dir_all(&dropin)?;
    fs::write(
        dropin.join("10-hakube-lab.conf"),
        "# Written by `hakube lab up`: keepalived only notifies readiness when its parent is\n\
         # systemd (PID 1), which lab hosts do not have, so the lab runs it as Type=simple.\n\
         [Service]\nType=simple\n",
    )?;
    // sshd's privilege separation folder.
    fs::create_dir_all(fs_root.join("run/sshd"))?;
    let ssh = fs_root.join("etc/ssh");
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o755))?;
    let key = ssh.join("ssh_host_ed25519_key");
    if !key.exists() {
        let comment = format!("root@{}", h.name);
        let key_s = key.to_string_lossy();
        super::net::run(
            "ssh-keygen",
            &[
                "-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f", &key_s,
            ],
        )?;
    }
    crate::pki::write_secret(&ssh.join("authorized_keys"), authorized_key)?;
    if let Some(u) = user {
        super::user::prepare(&fs_root, &h.name, u, authorized_key)?;
    }
    let config = format!(
        "# Written by `hakube lab up` for host {host} of lab {lab}.\n\
         Port 22\n\
         ListenAddress {addr}\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\n\
         PidFile /run/sshd.pid\n\
         {logins}\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         PrintMotd no\n\
         UseDNS no\n\
         # The lab's bin folder (with its systemctl) first; hosts have no systemd.\n\
         SetEnv PATH={path}\n\
         Subsystem sftp internal-sftp\n",
        host = h.name,
        lab = paths.name,
        addr = h.address,
        path = paths.host_path_env(),
        logins = super::user::sshd_lines(user),
    );
    fs::write(ssh.join("sshd_config"), config)?;
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.is_dir() {
        fs::create_dir_all(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if meta.is_file() {
        fs::copy(src, dst)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().to_os_string().into_vec())
        .with_context(|| format!("path {} has a NUL byte", p.display()))
}

/// Start the holder: a `hakube lab __hold` process in a new mount and UTS namespace that joined
/// the host's network namespace, set the hostname, made its mounts private and bind-mounted
/// the host's private folders. `spawn` returns only after all of that worked (or with the
/// failing step's error), because it waits for the exec.
pub fn spawn_holder(paths: &LabPaths, st: &LabState, h: &HostState) -> Result<ProcRef> {
    let netns_path = format!("/run/netns/{}", h.netns);
    let netns = fs::File::open(&netns_path).with_context(|| format!("cannot open {netns_path}"))?;
    let fs_root = paths.host_fs(&h.name);
    let mut binds: Vec<(CString, CString)> = Vec::new();
    // The systemctl shim over the distribution's systemctl, for login shells that reset PATH.
    // First, while the link's target is still reachable.
    let shim = paths.bin_dir().join("systemctl");
    let mut seen = Vec::new();
    for p in ["/usr/bin/systemctl", "/bin/systemctl"] {
        if let Ok(real) = fs::canonicalize(p)
            && real.is_file()
            && !seen.contains(&real)
        {
            binds.push((cpath(&shim)?, cpath(&real)?));
            seen.push(real);
        }
    }
    for d in PRIVATE_DIRS {
        binds.push((cpath(&fs_root.join(d))?, cpath(&Path::new("/").join(d))?));
    }
    if st.user.is_some() {
        for f in super::user::PRIVATE_FILES
            .iter()
            .chain(&[super::user::HOME_DIR])
        {
            let (src, dst) = (fs_root.join(f), Path::new("/").join(f));
            // A bind mount needs its mount point (/home, /etc/sudoers.d may be missing).
            if src.is_dir() && !dst.exists() {
                fs::create_dir_all(&dst).with_context(|| {
                    format!(
                        "cannot create the mount point {} on this machine",
                        dst.display()
                    )
                })?;
            }
            binds.push((cpath(&src)?, cpath(&dst)?));
        }
    }
    let hostname = OsString::from(&h.name);
    let mut cmd = Command::new(&st.hakube);
    cmd.args(["lab", "--name", &st.name, "__hold", &h.name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only system calls run, on data prepared above.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)?;
            setns(&netns, CloneFlags::CLONE_NEWNET)?;
            nix::unistd::sethostname(&hostname)?;
            let none: Option<&CStr> = None;
            mount(
                none,
                c"/",
                none,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                none,
            )?;
            // Drop the copies of every lab's netns mounts, so this namespace pins none of them.
            let _ = umount2(c"/run/netns", MntFlags::MNT_DETACH);
            // A sysfs of our own shows this namespace's interfaces (as `ip netns exec` does).
            if umount2(c"/sys", MntFlags::MNT_DETACH).is_ok() {
                mount(
                    Some(c"sysfs"),
                    c"/sys",
                    Some(c"sysfs"),
                    MsFlags::empty(),
                    none,
                )?;
            }
            for (src, dst) in &binds {
                mount(
                    Some(src.as_c_str()),
                    dst.as_c_str(),
                    none,
                    MsFlags::MS_BIND,
                    none,
                )?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start the holder process of host {}", h.name))?;
    ProcRef::of(child.id() as i32)
        .with_context(|| format!("the holder process of host {} died at once", h.name))
}

/// Start the host's sshd (foreground, logging to the host's /run/sshd.log).
pub fn spawn_sshd(
    paths: &LabPaths,
    h: &HostState,
    holder: &ProcRef,
    sshd: &Path,
) -> Result<ProcRef> {
    let log_path = paths.host_fs(&h.name).join("run/sshd.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut cmd = Command::new(sshd);
    cmd.args(["-D", "-e", "-f", "/etc/ssh/sshd_config"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid(2) only.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    HostNs::open(holder)?.enter(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start sshd on host {}", h.name))?;
    ProcRef::of(child.id() as i32).with_context(|| sshd_died(paths, h))
}

fn sshd_died(paths: &LabPaths, h: &HostState) -> String {
    let log = fs::read_to_string(paths.host_fs(&h.name).join("run/sshd.log")).unwrap_or_default();
    format!("sshd on host {} exited: {}", h.name, log.trim())
}

/// Wait until every host's sshd accepts TCP connections on port 22.
pub fn wait_ssh(paths: &LabPaths, hosts: &[HostState], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for h in hosts {
        loop {
            if reachable(h, Duration::from_millis(200)) {
                break;
            }
            if h.sshd.is_some_and(|p| !p.alive()) {
                bail!(sshd_died(paths, h));
            }
            if Instant::now() >= deadline {
                bail!(
                    "sshd on host {} ({}:22) did not accept connections within {timeout:?}",
                    h.name,
                    h.address
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Whether the host's port 22 accepts a TCP connection within `timeout`.
pub fn reachable(h: &HostState, timeout: Duration) -> bool {
    let addr = std::net::SocketAddr::from((h.address, 22));
    std::net::TcpStream::connect_timeout(&addr, timeout).is_ok()
}

/// The holder's main loop: do nothing until killed.
pub fn hold() -> ! {
    loop {
        nix::unistd::pause();
    }
}

/// Whether `p` lies in a folder that hosts see privately (so hosts cannot see the machine's copy).
fn host_private(p: &Path) -> bool {
    PRIVATE_DIRS
        .iter()
        .any(|d| p.starts_with(Path::new("/").join(d)))
}

/// Fill the lab's bin folder: `hakube` and `hakube-lab-apiserver` (when it sits next to the
/// hakube binary) as links, or as copies when the binaries live in a folder hosts see
/// privately (such as /tmp); `systemctl` links to `hakube`. Returns the hakube path hosts see.
pub fn write_bin_dir(paths: &LabPaths, hakube: &Path) -> Result<PathBuf> {
    let bin = paths.bin_dir();
    fs::create_dir_all(&bin)?;
    let mut items = vec![("hakube", hakube.to_path_buf())];
    let api = hakube.with_file_name("hakube-lab-apiserver");
    if api.is_file() {
        items.push(("hakube-lab-apiserver", api));
    }
    for (name, target) in items {
        let dest = bin.join(name);
        let _ = fs::remove_file(&dest);
        if host_private(&target) {
            fs::copy(&target, &dest).with_context(|| {
                format!("cannot copy {} to {}", target.display(), dest.display())
            })?;
        } else {
            std::os::unix::fs::symlink(&target, &dest).with_context(|| {
                format!("cannot link {} to {}", dest.display(), target.display())
            })?;
        }
    }
    let shim = bin.join("systemctl");
    let _ = fs::remove_file(&shim);
    std::os::unix::fs::symlink("hakube", &shim)
        .with_context(|| format!("cannot create {}", shim.display()))?;
    Ok(bin.join("hakube"))
}

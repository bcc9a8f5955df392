//! Scheduled backups (`spec.backup.schedule`): on every control plane a oneshot service, its
//! timer, and the script it runs. The script takes a snapshot from the local member with the
//! etcd client certificate hakube installs, proves it (etcd's SHA-256 trailer, `etcdutl snapshot
//! status`), renames it into place, writes a `last-verified.json` stamp that status and doctor
//! read, keeps the newest N, and exits non-zero on any failure so that systemd shows the unit
//! failed.

use super::{Component, HEADER, RenderedFile, file, hap_duration};
use crate::spec::{Cluster, Host};

pub const SERVICE: &str = "hakube-backup.service";
pub const TIMER: &str = "hakube-backup.timer";
pub const SERVICE_PATH: &str = "/etc/systemd/system/hakube-backup.service";
pub const TIMER_PATH: &str = "/etc/systemd/system/hakube-backup.timer";
/// Under /var/lib/hakube, next to the lab API server's binary (a lab host's private tree).
pub const SCRIPT_PATH: &str = "/var/lib/hakube/bin/etcd-backup.sh";
/// The stamp of the newest verified snapshot, in the host folder.
pub const STAMP: &str = "last-verified.json";
/// The client certificate the script uses (apply installs it on every control plane).
pub const CLIENT_CERT: &str = "/etc/etcd/pki/apiserver-etcd-client.crt";
pub const CLIENT_KEY: &str = "/etc/etcd/pki/apiserver-etcd-client.key";

const BODY: &str = include_str!("../../templates/etcd-backup.sh");

/// The three files for `h`, when it is a control plane and the spec has a schedule.
pub fn render(c: &Cluster, h: &Host) -> Vec<RenderedFile> {
    let Some(s) = &c.backup.schedule else {
        return vec![];
    };
    if !h.roles.control_plane {
        return vec![];
    }
    let bin_dir = std::path::Path::new(&c.etcd.binary)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/usr/local/bin".into());
    // Values are validated words (DNS labels, checked paths), so sh reads them literally.
    let script = format!(
        "#!/bin/sh\n# {HEADER}\n# Scheduled etcd backup of member {name} of cluster {cluster}, run by {SERVICE}.\n\
         CLUSTER={cluster}\nMEMBER={name}\nBACKUP_DIR={dir}\nKEEP={keep}\n\
         ENDPOINT=https://127.0.0.1:{port}\nCACERT=/etc/etcd/pki/ca.crt\nCERT={CLIENT_CERT}\nKEY={CLIENT_KEY}\n\
         ETCD_BIN_DIR={bin_dir}\n\n{BODY}",
        name = h.name,
        cluster = c.name,
        dir = s.host_dir,
        keep = s.keep,
        port = c.etcd.client_port,
    );
    let service = format!(
        "# {HEADER}\n[Unit]\n\
         Description=hakube: verified etcd snapshot of member {name} (cluster {cluster})\n\
         After=etcd.service\n\n\
         [Service]\nType=oneshot\nExecStart={SCRIPT_PATH}\n\
         # A large database takes minutes; a stuck one must not block the next run forever.\n\
         TimeoutStartSec=2h\nNice=10\nIOSchedulingClass=idle\n",
        name = h.name,
        cluster = c.name,
    );
    let timer = format!(
        "# {HEADER}\n[Unit]\n\
         Description=hakube: scheduled etcd backup of member {name} (cluster {cluster})\n\n\
         [Timer]\nOnCalendar={cal}\n\
         # A run missed while the host was off happens at the next boot.\n\
         Persistent=true\nRandomizedDelaySec={delay}\nUnit={SERVICE}\n\n\
         [Install]\nWantedBy=timers.target\n",
        name = h.name,
        cluster = c.name,
        cal = s.on_calendar,
        delay = hap_duration(s.randomized_delay),
    );
    vec![
        file(h, Component::Backup, SCRIPT_PATH, 0o755, script, &[]),
        file(
            h,
            Component::Backup,
            SERVICE_PATH,
            0o644,
            service,
            &["daemon-reload"],
        ),
        file(
            h,
            Component::Backup,
            TIMER_PATH,
            0o644,
            timer,
            &["daemon-reload", TIMER],
        ),
    ]
}

//! `hakube backup` and `hakube restore`.
//!
//! On a lab (root): write keys through the lab API server, back up, write more, wipe two members
//! (quorum lost), restore: the first keys are back, the later ones gone, the revision higher. A
//! backup taken with a member down is verified; damaged and foreign backups are refused by
//! `verify` and by `restore` with the cluster untouched.
//!
//! Without root (a local etcd on loopback): the kubeadm restore path by `--dry-run`, and backups
//! of another cluster refused.

mod common;
use common::*;
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}):\n{}", text(o)))
}

fn hakube(args: &[&str]) -> Output {
    Command::new(HAKUBE)
        .args(args)
        .output()
        .expect("hakube runs")
}

// ---------------------------------------------------------------------------------------------
// Archives, rewritten the way a damaged disk or a careless edit would.

/// (path, mode, bytes) of every file in an archive, the manifest first.
fn read_tar(p: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut a = tar::Archive::new(std::fs::File::open(p).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mode = e.header().mode().unwrap();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (path, mode, b)
        })
        .collect()
}

fn write_tar(p: &Path, files: &[(String, u32, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(p).unwrap());
    for (path, mode, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap();
}

/// Rewrite `src` into `dest` after `edit` changed the manifest or the files; with `fix`, the
/// manifest's sizes and checksums are made to match the edited files (a consistent archive
/// around a bad snapshot).
fn rewrite(
    src: &Path,
    dest: &Path,
    fix: bool,
    edit: impl Fn(&mut serde_json::Value, &mut Vec<(String, u32, Vec<u8>)>),
) {
    let mut files = read_tar(src);
    let (name, mode, m) = files.remove(0);
    assert_eq!(name, "manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&m).unwrap();
    edit(&mut manifest, &mut files);
    if fix {
        for f in manifest["files"].as_array_mut().unwrap() {
            let (_, _, data) = files.iter().find(|x| x.0 == f["path"]).unwrap();
            f["size"] = data.len().into();
            f["sha256"] = hex::encode(sha2::Sha256::digest(data)).into();
        }
    }
    files.insert(
        0,
        (name, mode, serde_json::to_vec_pretty(&manifest).unwrap()),
    );
    write_tar(dest, &files);
}

fn snapshot_mut(files: &mut [(String, u32, Vec<u8>)]) -> &mut Vec<u8> {
    &mut files.iter_mut().find(|f| f.0 == "snapshot.db").unwrap().2
}

/// Every way a backup can be bad, with what the refusal must say.
fn bad_archives(good: &Path, dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    let bytes = std::fs::read(good).unwrap();
    // The snapshot's data sits after the manifest and its own header: find it in the tar.
    let snap_at = {
        let mut a = tar::Archive::new(std::fs::File::open(good).unwrap());
        let e = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().display().to_string() == "snapshot.db")
            .unwrap();
        (e.raw_file_position(), e.size())
    };

    let p = dir.join("flipped-in-place.tar");
    let mut b = bytes.clone();
    b[(snap_at.0 + snap_at.1 / 2) as usize] ^= 0x40;
    std::fs::write(&p, &b).unwrap();
    out.push((p, "the manifest does not match the files"));

    let p = dir.join("cut.tar");
    std::fs::write(&p, &bytes[..(snap_at.0 + snap_at.1 / 2) as usize]).unwrap();
    out.push((p, "truncated or damaged"));

    let p = dir.join("flipped-consistent.tar");
    rewrite(good, &p, true, |_, f| {
        let s = snapshot_mut(f);
        let at = s.len() / 3;
        s[at] ^= 0x01;
    });
    out.push((p, "the snapshot is corrupt"));

    let p = dir.join("truncated-consistent.tar");
    rewrite(good, &p, true, |_, f| {
        let s = snapshot_mut(f);
        let keep = (s.len() / 2) / 4096 * 4096;
        s.truncate(keep);
    });
    out.push((p, "no SHA-256 trailer"));

    let p = dir.join("other-name.tar");
    rewrite(good, &p, false, |m, _| m["cluster"] = "someone-else".into());
    out.push((p, "this backup is of cluster \"someone-else\""));

    let p = dir.join("other-cas.tar");
    rewrite(good, &p, false, |m, _| {
        m["identity"]["etcdCaSha256"] = "0".repeat(64).into()
    });
    out.push((p, "made with other CAs"));
    out
}

// ---------------------------------------------------------------------------------------------
// The lab.

/// One lab test at a time: each brings up its own labs, and two cores run them all.
fn lab_slot() -> std::sync::MutexGuard<'static, ()> {
    static SLOT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SLOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lab API server through the VIP, verified against the cluster CA of a state folder.
struct Api {
    ca: PathBuf,
    vip: String,
}

impl Api {
    fn of(lab: &Lab) -> Api {
        Api {
            ca: lab.cluster_ca(),
            vip: lab.ip(100),
        }
    }
    fn curl(&self, args: &[&str], path: &str) -> Output {
        let o = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
            .arg(&self.ca)
            .args(args)
            .arg(format!("https://{}:6443{path}", self.vip))
            .output()
            .expect("curl");
        assert!(o.status.success(), "{path}: {}", text(&o));
        o
    }
    fn put(&self, key: &str, value: &str) {
        self.curl(
            &["-X", "PUT", "--data-binary", value],
            &format!("/kv/{key}"),
        );
    }
    /// `GET /kv?prefix=`.
    fn list(&self, prefix: &str) -> serde_json::Value {
        json(&self.curl(&[], &format!("/kv?prefix={prefix}")))
    }
}

fn put(lab: &Lab, key: &str, value: &str) {
    Api::of(lab).put(key, value)
}

fn list(lab: &Lab, prefix: &str) -> serde_json::Value {
    Api::of(lab).list(prefix)
}

/// The cluster's revision, from the real etcdctl.
fn revision(lab: &Lab) -> i64 {
    let o = lab.etcdctl(&[
        "get",
        "",
        "--prefix",
        "--keys-only",
        "--limit",
        "1",
        "-w",
        "json",
    ]);
    assert!(o.status.success(), "etcdctl get: {}", text(&o));
    json(&o)["header"]["revision"].as_i64().unwrap()
}

fn await_etcd_healthy(lab: &Lab) {
    eventually("every etcd member healthy", Duration::from_secs(60), || {
        let o = lab.etcdctl(&["endpoint", "health"]);
        if o.status.success() {
            Ok(())
        } else {
            Err(text(&o))
        }
    });
}

/// What must not change when a restore is refused: each control plane's etcd and API server
/// processes, and its data dir's entries.
fn host_fingerprint(lab: &Lab) -> Vec<String> {
    ["master1", "master2", "master3"]
        .iter()
        .map(|h| {
            let o = lab.exec(
                h,
                "echo etcd=$(systemctl show -p MainPID --value etcd) \
                 api=$(systemctl show -p MainPID --value hakube-lab-apiserver); \
                 ls -A /var/lib/etcd /var/lib/etcd/member",
            );
            format!("{h}: {}", String::from_utf8_lossy(&o.stdout))
        })
        .collect()
}

#[test]
fn restore_after_quorum_loss_brings_back_the_backup() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let _slot = lab_slot();
    let lab = Lab::up("bkt1", "10.150.0");
    lab.apply();
    let spec = lab.spec().display().to_string();
    const N: usize = 40;
    const M: usize = 25;
    for i in 0..N {
        put(&lab, &format!("before/{i}"), &format!("value {i}"));
    }
    let o = hakube(&["backup", "-f", &spec, "-o", "json"]);
    assert_eq!(code(&o), 0, "backup: {}", text(&o));
    let rep = json(&o);
    let backup = rep["file"].as_str().unwrap().to_string();
    assert!(
        rep["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true)
    );
    assert!(rep["keys"].as_u64().unwrap() >= N as u64);
    for i in 0..M {
        put(&lab, &format!("after/{i}"), "written after the backup");
    }
    assert_eq!(list(&lab, "after/")["count"], M);
    let before = revision(&lab);

    // Without --yes nothing happens.
    let fp = host_fingerprint(&lab);
    let o = hakube(&["restore", &backup, "-f", &spec]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains("refused without --yes"), "{}", text(&o));
    assert_eq!(host_fingerprint(&lab), fp);

    // Disaster: two of three members lose their data; quorum is gone.
    for h in ["master2", "master3"] {
        lab.fault(&["stop", h, "etcd"]);
        let o = lab.exec(h, "rm -rf /var/lib/etcd/* && ls -A /var/lib/etcd | wc -l");
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");
    }
    let o = lab.etcdctl(&["get", "before/0"]);
    assert!(!o.status.success(), "no quorum, no read: {}", text(&o));

    let o = hakube(&["restore", &backup, "-f", &spec, "--yes", "-o", "json"]);
    assert_eq!(code(&o), 0, "restore: {}", text(&o));
    let r = json(&o);
    assert_eq!(r["outcome"], "restored");
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "verify",
            "connect",
            "preflight",
            "copy",
            "stop-api-servers",
            "stop-etcd",
            "move-aside",
            "restore",
            "start-etcd",
            "wait-healthy",
            "check-data",
            "start-api-servers",
            "verify-vip"
        ]
    );

    // The API server serves the restored data: the first keys, none of the later ones.
    let l = list(&lab, "before/");
    assert_eq!(l["count"], N, "{l}");
    assert_eq!(l["items"][0]["value"], "value 0");
    assert_eq!(list(&lab, "after/")["count"], 0);
    let after = l["revision"].as_i64().unwrap();
    assert!(after > before, "revision {after} is not above {before}");
    assert_eq!(r["restoredRevision"].as_i64().unwrap(), after);
    // New writes go on above it, and every member is healthy.
    put(&lab, "new", "x");
    assert!(list(&lab, "new")["revision"].as_i64().unwrap() > after);
    await_etcd_healthy(&lab);

    // The old data was moved aside, not deleted; the snapshot copies are gone.
    let o = lab.exec(
        "master1",
        "ls -d /var/lib/etcd/hakube-pre-restore-*/member && ls /var/lib/etcd",
    );
    assert!(o.status.success(), "{}", text(&o));
    for h in ["master1", "master2", "master3"] {
        let o = lab.exec(h, "ls -A /var/lib/etcd");
        let ls = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(!ls.contains(".db"), "{h}: a snapshot copy is left: {ls}");
        assert!(ls.contains("member"), "{h}: {ls}");
    }
    assert!(
        r["movedAside"]["master1"].is_string(),
        "{}",
        r["movedAside"]
    );

    // The cluster is as apply left it: nothing to change.
    let o = lab.hakube(&["apply"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("\n0 changed"), "{}", text(&o));
}

#[test]
fn backup_with_a_member_down_is_verified_and_bad_backups_are_refused_untouched() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let _slot = lab_slot();
    let lab = Lab::up("bkt2", "10.151.0");
    lab.apply();
    let spec = lab.spec().display().to_string();
    for i in 0..20 {
        put(&lab, &format!("k/{i}"), "v");
    }

    // One member down (the first, so that it would have been asked first).
    lab.fault(&["stop", "master1", "etcd"]);
    let o = hakube(&["backup", "-f", &spec, "-o", "json"]);
    assert_eq!(code(&o), 0, "backup with master1 down: {}", text(&o));
    let rep = json(&o);
    assert_ne!(rep["source"]["member"], "master1");
    let kinds: Vec<&str> = rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == true)
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["trailer", "status", "live-count", "trial-restore"],
        "{}",
        rep["checks"]
    );
    lab.fault(&["start", "master1", "etcd"]);
    await_etcd_healthy(&lab);
    let good = PathBuf::from(rep["file"].as_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&good).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(good.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);

    // It verifies again, and `list` shows it.
    let o = hakube(&["backup", "verify", good.to_str().unwrap(), "-f", &spec]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = hakube(&["backup", "list", "-f", &spec, "-o", "json"]);
    let l = json(&o);
    assert_eq!(l["backups"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["backups"][0]["reverified"]["ok"], true);
    assert_eq!(l["lastVerified"]["revision"], rep["revision"]);

    // Bad ones: refused by verify and by restore, and nothing on the hosts changes.
    let tmp = tempfile::tempdir().unwrap();
    let fp = host_fingerprint(&lab);
    for (bad, why) in bad_archives(&good, tmp.path()) {
        let b = bad.to_str().unwrap();
        let o = hakube(&["backup", "verify", b, "-f", &spec]);
        assert_eq!(code(&o), 1, "verify {b}: {}", text(&o));
        assert!(
            text(&o).contains(why),
            "verify {b}: want {why:?}:\n{}",
            text(&o)
        );
        let o = hakube(&["restore", b, "-f", &spec, "--yes"]);
        assert_eq!(code(&o), 3, "restore {b}: {}", text(&o));
        assert!(
            text(&o).contains(why),
            "restore {b}: want {why:?}:\n{}",
            text(&o)
        );
        assert!(text(&o).contains("nothing on the hosts was changed"));
        assert_eq!(host_fingerprint(&lab), fp, "after restore {b}");
    }
    assert_eq!(list(&lab, "k/")["count"], 20);
}

/// A lab of two LBs and three control planes, no workers.
fn small_lab(name: &str, net: &str) -> Lab {
    let _ = hakube(&["lab", "down", "--name", name]);
    let o = hakube(&[
        "lab",
        "up",
        "--name",
        name,
        "--subnet",
        &format!("{net}.0/24"),
        "--workers",
        "0",
    ]);
    assert!(o.status.success(), "lab up {name}: {}", text(&o));
    Lab {
        name: name.into(),
        net: net.into(),
    }
}

/// Copy a folder tree (the operator state), keeping modes.
fn copy_tree(from: &Path, to: &Path) {
    let o = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn restore_onto_new_hosts_with_other_addresses() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let _slot = lab_slot();
    let keep = tempfile::tempdir().unwrap();
    // The old hardware: a cluster "bkt3" on 10.152.0.0/24, backed up; then it is gone.
    let (backup, state) = {
        let old = small_lab("bkt3", "10.152.0");
        old.apply();
        let api = Api::of(&old);
        for i in 0..15 {
            api.put(&format!("hw/{i}"), "on the old hosts");
        }
        let o = old.hakube(&["backup", "-o", "json"]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        let file = PathBuf::from(json(&o)["file"].as_str().unwrap());
        let backup = keep.path().join(file.file_name().unwrap());
        std::fs::copy(&file, &backup).unwrap();
        // The operator state, as `tar -xf BACKUP state/` would give it back; without backups.
        let state = keep.path().join("state");
        copy_tree(&old.state(), &state);
        std::fs::remove_dir_all(state.join("backups")).unwrap();
        (backup, state)
    };

    // New hosts on another network; the spec keeps the cluster's name, next to its state.
    let new = small_lab("bkt4", "10.153.0");
    let spec = std::fs::read_to_string(new.spec())
        .unwrap()
        .replace("name: bkt4", "name: bkt3");
    std::fs::write(new.spec(), spec).unwrap();
    std::fs::create_dir_all(new.dir().join(".hakube")).unwrap();
    copy_tree(&state, &new.dir().join(".hakube/bkt3"));
    new.apply(); // installs everything and forms an empty etcd cluster
    let api = Api {
        ca: new.dir().join(".hakube/bkt3/pki/cluster/ca.crt"),
        vip: new.ip(100),
    };
    assert_eq!(api.list("hw/")["count"], 0);

    let o = new.hakube(&["restore", backup.to_str().unwrap(), "--yes", "-o", "json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let l = api.list("hw/");
    assert_eq!(l["count"], 15, "{l}");
    assert_eq!(l["items"][0]["value"], "on the old hosts");
    // The members are the new hosts, at their new addresses.
    let o = new.hakube(&["status", "-o", "json"]);
    let s = json(&o);
    let eps: Vec<&str> = s["etcd"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["error"].is_null())
        .map(|m| m["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(
        eps,
        [
            "https://10.153.0.101:2379",
            "https://10.153.0.102:2379",
            "https://10.153.0.103:2379"
        ],
        "{}",
        s["etcd"]
    );
    let pki = new.dir().join(".hakube/bkt3/pki/etcd");
    let o = Command::new(hakube::lab::prereq::find("etcdctl").expect("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{}:2379", new.ip(101)))
        .arg(format!("--cacert={}", pki.join("ca.crt").display()))
        .arg(format!(
            "--cert={}",
            pki.join("hakube-operator.crt").display()
        ))
        .arg(format!(
            "--key={}",
            pki.join("hakube-operator.key").display()
        ))
        .args(["member", "list"])
        .output()
        .unwrap();
    let members = text(&o);
    assert!(o.status.success(), "{members}");
    for last in [101, 102, 103] {
        assert!(
            members.contains(&format!("https://10.153.0.{last}:2380")),
            "{members}"
        );
    }
    assert!(!members.contains("10.152.0."), "{members}");
    api.put("hw/new", "written on the new hosts");
    assert_eq!(api.list("hw/")["count"], 16);
}

// ---------------------------------------------------------------------------------------------
// Without a lab: a local etcd on loopback.

/// One etcd on free loopback ports in a temporary folder; killed (by its PID) when dropped.
struct LocalEtcd {
    child: Child,
    url: String,
}

impl LocalEtcd {
    fn start(dir: &Path) -> LocalEtcd {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (c, p) = (port(), port());
        let url = format!("http://127.0.0.1:{c}");
        let peer = format!("http://127.0.0.1:{p}");
        let etcd = hakube::lab::prereq::find("etcd").expect("etcd");
        let child = Command::new(etcd)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--name", "local", "--log-level", "error"])
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=local={peer}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd starts");
        let e = LocalEtcd { child, url };
        eventually("local etcd", Duration::from_secs(30), || {
            let o = e.ctl(&["endpoint", "health"]);
            if o.status.success() {
                Ok(())
            } else {
                Err(text(&o))
            }
        });
        e
    }
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(hakube::lab::prereq::find("etcdctl").expect("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url))
            .args(args)
            .output()
            .expect("etcdctl")
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_etcd_tools() -> bool {
    ["etcd", "etcdctl", "etcdutl"]
        .iter()
        .all(|t| hakube::lab::prereq::find(t).is_some())
}

/// The seed spec with `etcd.management: kubeadm` under `name`, in `dir`, with operator state.
fn kubeadm_spec(dir: &Path, name: &str) -> PathBuf {
    let seed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed.yaml"))
            .unwrap()
            .replace("management: hakube", "management: kubeadm")
            .replace("name: ha-cluster", &format!("name: {name}"));
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("cluster.yaml");
    std::fs::write(&p, seed).unwrap();
    let loaded = hakube::spec::load_file(&p).unwrap();
    let c = loaded
        .cluster
        .expect("the kubeadm variant of the seed is valid");
    hakube::state::State::open_or_init(&c).unwrap();
    p
}

/// A backup of `spec`'s cluster packaged from a local etcd's snapshot with `keys` keys.
fn packaged_backup(tmp: &Path, spec: &Path, keys: usize) -> String {
    let etcd = LocalEtcd::start(&tmp.join("etcd"));
    for i in 0..keys {
        let o = etcd.ctl(&["put", &format!("/registry/k{i}"), "v"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let snap = tmp.join("snap.db");
    let o = etcd.ctl(&["snapshot", "save", snap.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    drop(etcd);
    let o = hakube(&[
        "backup",
        "-f",
        spec.to_str().unwrap(),
        "--from-snapshot",
        snap.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 0, "backup --from-snapshot: {}", text(&o));
    let r = json(&o);
    assert_eq!(r["keys"], keys);
    r["file"].as_str().unwrap().to_string()
}

#[test]
fn kubeadm_restore_goes_through_the_static_pod_manifests_dry_run() {
    if !have_etcd_tools() {
        eprintln!("skipped: needs etcd, etcdctl and etcdutl (bash scripts/setup.sh)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spec = kubeadm_spec(&tmp.path().join("site"), "kube-site");
    let backup = packaged_backup(tmp.path(), &spec, 12);
    let s = spec.to_str().unwrap();

    let o = hakube(&["restore", &backup, "-f", s, "--dry-run"]);
    let out = text(&o);
    assert_eq!(code(&o), 0, "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    // Every step, in order, on every control plane.
    let m = "/etc/kubernetes/manifests";
    let want = [
        "ok   Prepared",
        "master1$ if [ -f /etc/kubernetes/manifests/kube-apiserver.yaml ]; then mv /etc/kubernetes/manifests/kube-apiserver.yaml /etc/kubernetes/hakube-restore-",
        "crictl ps -q --name 'kube-apiserver|kube-controller-manager|kube-scheduler'",
        "master1$ set -e; mkdir -p /etc/kubernetes/hakube-restore-",
        "mv /etc/kubernetes/manifests/etcd.yaml /etc/kubernetes/hakube-restore-",
        "crictl ps -q --name '^etcd$'",
        "DD='/var/lib/etcd'; A=\"$DD/hakube-pre-restore-",
        "snapshot restore '/var/lib/etcd/hakube-restore-",
        "--initial-cluster 'master1=https://10.1.1.101:2380,master2=https://10.1.1.102:2380,master3=https://10.1.1.103:2380'",
        "--initial-cluster-token 'kube-site-restore-",
        "--initial-advertise-peer-urls 'https://10.1.1.103:2380'",
        "etcd.yaml /etc/kubernetes/manifests/etcd.yaml",
        "etcdctl endpoint health",
        "and 12 keys",
        "kube-apiserver.yaml /etc/kubernetes/manifests/",
        "systemctl restart kubelet",
        "GET https://10.1.1.100:6443/readyz until 200",
    ];
    let mut at = 0;
    for w in want {
        let Some(i) = out[at..].find(w) else {
            panic!("missing (in order) {w:?} after byte {at}:\n{out}");
        };
        at += i + w.len();
    }
    assert!(
        out.contains(&format!("master3$ if [ -f {m}/kube-scheduler.yaml ]")),
        "{out}"
    );
    // Nothing was touched: the dry run never connected (these addresses are not ours).
    assert!(!out.contains("connect to every control plane …"), "{out}");
}

#[test]
fn another_clusters_backup_and_a_restore_without_yes_are_refused() {
    if !have_etcd_tools() {
        eprintln!("skipped: needs etcd, etcdctl and etcdutl (bash scripts/setup.sh)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spec = kubeadm_spec(&tmp.path().join("a"), "same-name");
    let backup = packaged_backup(tmp.path(), &spec, 3);
    // The same name, another operator state (other CAs): another cluster.
    let twin = kubeadm_spec(&tmp.path().join("b"), "same-name");
    // Another name altogether.
    let other = kubeadm_spec(&tmp.path().join("c"), "other");
    for (s, why) in [
        (&twin, "made with other CAs"),
        (&other, "this backup is of cluster \"same-name\""),
    ] {
        let s = s.to_str().unwrap();
        let o = hakube(&["backup", "verify", &backup, "-f", s]);
        assert_eq!(code(&o), 1, "{}", text(&o));
        assert!(text(&o).contains(why), "{}", text(&o));
        let o = hakube(&["restore", &backup, "-f", s, "--yes"]);
        assert_eq!(code(&o), 3, "{}", text(&o));
        assert!(text(&o).contains(why), "{}", text(&o));
    }
    // Its own cluster accepts it, but not without --yes.
    let s = spec.to_str().unwrap();
    let o = hakube(&["backup", "verify", &backup, "-f", s]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = hakube(&["restore", &backup, "-f", s]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains("refused without --yes"), "{}", text(&o));
}

#[test]
fn a_backup_of_a_cluster_without_keys_verifies() {
    if !have_etcd_tools() {
        eprintln!("skipped: needs etcd, etcdctl and etcdutl (bash scripts/setup.sh)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spec = kubeadm_spec(&tmp.path().join("site"), "empty");
    // etcdutl reports revision 0 for a store that never had a key; etcd serves it at 1.
    let backup = packaged_backup(tmp.path(), &spec, 0);
    let o = hakube(&["backup", "verify", &backup, "-o", "json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(json(&o)["manifest"]["snapshot"]["revision"], 1);
}

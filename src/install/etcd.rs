//! A pinned etcd: a release tarball (`etcd-v3.5.1-linux-amd64/{etcd,etcdctl,etcdutl}`) unpacked
//! into `/opt/hakube/etcd/v3.5.1/` and run through the link `/opt/hakube/etcd/current`.
//!
//! The link is switched with `ln -s` to a temporary name and `mv -T` (one `rename(2)`), so the
//! unit never sees a missing binary; rolling back is switching it back. A stamp file in each
//! versioned folder (version and tarball SHA-256) says what is installed, so converged hosts
//! cost one small command, not an upload or a hash of the binaries.

use crate::apply::Ctx;
use crate::apply::report::Kind;
use crate::spec::{Cluster, EtcdInstall, EtcdSource};
use crate::transport::{self, quote};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub const ROOT: &str = "/opt/hakube/etcd";
pub const LINK: &str = "/opt/hakube/etcd/current";
/// What the etcd unit runs.
pub const BINARY: &str = "/opt/hakube/etcd/current/etcd";
const STAMP: &str = ".hakube-version";

/// The versioned folder's name, `v3.5.1`.
pub fn dir_name(v: &semver::Version) -> String {
    format!("v{v}")
}

/// The stamp's content: which release and which tarball.
pub fn stamp(i: &EtcdInstall) -> String {
    format!("etcd v{} sha256 {}", i.version, i.sha256)
}

/// What one host has: where the link points (a folder name) and whether the pinned release is
/// unpacked there (its stamp matches).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInstall {
    pub current: Option<String>,
    pub staged: bool,
}

impl HostInstall {
    pub fn converged(&self, i: &EtcdInstall) -> bool {
        self.staged && self.current.as_deref() == Some(dir_name(&i.version).as_str())
    }
}

/// Read-only: print the link's target and the pinned folder's stamp.
pub fn probe_script(i: &EtcdInstall) -> String {
    format!(
        "echo \"current=$(readlink {link} 2>/dev/null)\"\n\
         echo \"stamp=$(cat {dir}/{STAMP} 2>/dev/null)\"\n",
        link = quote(LINK),
        dir = quote(&format!("{ROOT}/{}", dir_name(&i.version))),
    )
}

pub fn parse_probe(out: &str, i: &EtcdInstall) -> HostInstall {
    let mut h = HostInstall::default();
    for line in out.lines() {
        match line.split_once('=') {
            Some(("current", v)) if !v.trim().is_empty() => {
                // Written by us as a bare folder name; an absolute target is read the same way.
                let v = v.trim().trim_end_matches('/');
                h.current = Some(v.rsplit('/').next().unwrap_or(v).to_string());
            }
            Some(("stamp", v)) => h.staged = v.trim() == stamp(i),
            _ => {}
        }
    }
    h
}

/// Read the tarball from stdin, check its SHA-256 again on the host, unpack it into a
/// temporary folder, check the three binaries and the version etcd reports, stamp it and
/// rename it into place. The versioned folder therefore exists only complete.
pub fn unpack_script(i: &EtcdInstall) -> String {
    let v = dir_name(&i.version);
    format!(
        r#"set -e
root={root}; v={v}; want={sha}
mkdir -p -m 755 "$root"
tmp=$(mktemp -d "$root/.incoming.$v.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/etcd.tar.gz"
got=$(sha256sum "$tmp/etcd.tar.gz" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "the uploaded tarball's SHA-256 is $got, the spec says $want (damaged in transit?)" >&2; exit 3
fi
mkdir "$tmp/x"
tar -xzf "$tmp/etcd.tar.gz" -C "$tmp/x" --strip-components=1 --no-same-owner
for b in etcd etcdctl etcdutl; do
  [ -f "$tmp/x/$b" ] && [ -x "$tmp/x/$b" ] || {{ echo "the tarball has no executable $b in its top folder (expected etcd-$v-linux-amd64/$b)" >&2; exit 4; }}
done
said=$("$tmp/x/etcd" --version 2>&1 | head -1)
if [ "$said" != "etcd Version: {ver}" ]; then
  echo "the tarball's etcd says \"$said\", the spec pins {ver}" >&2; exit 5
fi
rm -f "$tmp/etcd.tar.gz"
printf '%s\n' {stamp} > "$tmp/x/{STAMP}"
chmod 755 "$tmp/x"
rm -rf "$root/.old.$v"
if [ -e "$root/$v" ]; then mv -T "$root/$v" "$root/.old.$v"; fi
mv -T "$tmp/x" "$root/$v"
rm -rf "$root/.old.$v"
"#,
        root = quote(ROOT),
        sha = quote(&i.sha256),
        ver = i.version,
        stamp = quote(&stamp(i)),
    )
}

/// Point the link at `dir` atomically: a new link under a temporary name, renamed over the old.
pub fn switch_script(dir: &str) -> String {
    format!(
        "set -e; cd {root}; [ -f {d}/{STAMP} ] || {{ echo \"{root}/{dir} is not a complete install\" >&2; exit 3; }}; \
         ln -sfn {d} .current.tmp && mv -T .current.tmp current",
        root = quote(ROOT),
        d = quote(dir),
    )
}

/// The tarball on the operator machine, its SHA-256 checked against the spec. A URL is
/// downloaded once into the state folder. Nothing on any host is touched before this passes.
pub fn local_tarball(c: &Cluster, i: &EtcdInstall) -> Result<PathBuf> {
    let path = match &i.source {
        EtcdSource::Path(p) => p.clone(),
        EtcdSource::Url(u) => download(c, i, u)?,
    };
    let got = super::sha256_file(&path).with_context(|| {
        format!(
            "spec.etcd.source: cannot read the etcd {} tarball",
            i.version
        )
    })?;
    if got != i.sha256 {
        bail!(
            "spec.etcd.source: {} has SHA-256 {got}, the spec says {}; nothing was changed\n  \
             help: check the file (a partial download? another release?) against the release's \
             SHA256SUMS, and fix the file or spec.etcd.source.sha256",
            path.display(),
            i.sha256
        );
    }
    Ok(path)
}

fn download(c: &Cluster, i: &EtcdInstall, url: &str) -> Result<PathBuf> {
    let dir = crate::state::State::dir_of(c).join("downloads");
    let file = dir.join(format!("etcd-v{}-{}.tar.gz", i.version, &i.sha256[..12]));
    if file.exists() && super::sha256_file(&file).ok().as_deref() == Some(i.sha256.as_str()) {
        return Ok(file);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let part = file.with_extension("part");
    let out = std::process::Command::new("curl")
        .args(["-fsSL", "--retry", "3", "--max-time", "600", "-o"])
        .arg(&part)
        .arg(url)
        .output()
        .context("cannot run curl to download spec.etcd.source.url\n  help: install curl, or download the tarball and use spec.etcd.source.path")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&part);
        bail!(
            "spec.etcd.source.url: downloading {url} failed: {}\n  help: check the URL, or \
             download the tarball yourself and use spec.etcd.source.path",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::rename(&part, &file).with_context(|| format!("renaming {}", part.display()))?;
    Ok(file)
}

/// Where the link points and whether the pinned release is unpacked, on each host (read-only).
pub async fn survey(
    ctx: &Ctx,
    hosts: &[String],
    i: &EtcdInstall,
) -> Result<BTreeMap<String, HostInstall>> {
    let script = probe_script(i);
    let mut out = BTreeMap::new();
    for name in hosts {
        let t = ctx.host(name)?;
        let o = transport::run(t, &script, "read the etcd install", transport::TIMEOUT).await?;
        out.insert(name.clone(), parse_probe(&o.stdout_str(), i));
    }
    Ok(out)
}

/// Upload and unpack the pinned release where it is missing, all hosts at once; the link is
/// left alone. Returns what each host has.
pub async fn stage(
    ctx: &Ctx,
    hosts: &[String],
    i: &EtcdInstall,
) -> Result<BTreeMap<String, HostInstall>> {
    let tarball = local_tarball(&ctx.c, i)?;
    let have = survey(ctx, hosts, i).await?;
    let missing: Vec<String> = have
        .iter()
        .filter(|(_, h)| !h.staged)
        .map(|(n, _)| n.clone())
        .collect();
    let size = std::fs::metadata(&tarball).map(|m| m.len()).unwrap_or(0);
    let script = unpack_script(i);
    let tarball = &tarball;
    let script = &script;
    ctx.each(missing, move |name| {
        Box::pin(async move {
            let what = format!(
                "upload etcd v{} ({} MiB, sha256 {}…) and unpack it into {ROOT}/{}",
                i.version,
                size >> 20,
                &i.sha256[..12],
                dir_name(&i.version)
            );
            if ctx.opts.dry_run {
                ctx.log(Kind::Command, &name, &format!("would {what}"));
                return Ok(());
            }
            ctx.log(Kind::Command, &name, &what);
            let t = ctx.host(&name)?;
            let f = tokio::fs::File::open(tarball)
                .await
                .with_context(|| format!("opening {}", tarball.display()))?;
            let o =
                tokio::time::timeout(Duration::from_secs(600), t.exec_stream(script, Box::pin(f)))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("{name}: uploading etcd v{} timed out", i.version)
                    })??;
            if o.status != 0 {
                bail!(
                    "{name}: installing etcd v{} failed (exit {}): {}\n  help: nothing was \
                     switched; the running etcd is unchanged",
                    i.version,
                    o.status,
                    o.stderr.trim()
                );
            }
            Ok(())
        })
    })
    .await?;
    Ok(have)
}

/// Point `host`'s link at the pinned release (it must be staged).
pub async fn switch(ctx: &Ctx, host: &str, i: &EtcdInstall) -> Result<()> {
    let d = dir_name(&i.version);
    ctx.cmd(
        host,
        &switch_script(&d),
        &format!("ln -sfn {d} {ROOT}/.current.tmp && mv -T {ROOT}/.current.tmp {LINK}"),
    )
    .await?;
    Ok(())
}

/// The versions the members report, by host (members that do not answer are left out).
pub async fn live_versions(ctx: &Ctx) -> Result<BTreeMap<String, String>> {
    let tls = ctx.state.operator_etcd_tls()?;
    let (members, _) = crate::status::probes::etcd(&ctx.c, &tls).await;
    Ok(members
        .into_iter()
        .filter(|m| m.error.is_none() && !m.version.is_empty())
        .map(|m| (m.name, m.version))
        .collect())
}

/// apply's etcd install: stage the pinned release everywhere and switch the links, unless the
/// running cluster is on another version (that is `hakube upgrade`'s job, in order).
pub async fn ensure(ctx: &Ctx) -> Result<()> {
    let Some(i) = ctx.c.etcd.install.clone() else {
        return Ok(());
    };
    let cps: Vec<String> = ctx.c.control_planes().map(|h| h.name.clone()).collect();
    // Before anything: the tarball's checksum, and what the hosts and members run.
    local_tarball(&ctx.c, &i)?;
    let have = survey(ctx, &cps, &i).await?;
    let live = live_versions(ctx).await?;
    let want = i.version.to_string();
    let other: Vec<String> = live
        .iter()
        .filter(|(_, v)| **v != want)
        .map(|(h, v)| format!("{h} runs {v}"))
        .chain(have.iter().filter_map(|(h, s)| match &s.current {
            Some(c) if *c != dir_name(&i.version) && ctx.state.etcd_formed() => {
                Some(format!("{h} links {c}"))
            }
            _ => None,
        }))
        .collect();
    if !other.is_empty() {
        bail!(
            "spec.etcd.version pins v{want}, but etcd on this formed cluster is another version \
             ({}): apply does not change etcd's version, since that takes one member at a time \
             with the leader last and a health and version check after each\n  help: run \
             `hakube upgrade -f SPEC` (see docs/upgrade.md), or pin the running version",
            other.join(", ")
        );
    }
    let have = stage(ctx, &cps, &i).await?;
    for (name, h) in have {
        if h.current.as_deref() != Some(dir_name(&i.version).as_str()) {
            switch(ctx, &name, &i).await?;
            // A running member keeps its old binary until it restarts.
            ctx.mark(&name, "etcd");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> EtcdInstall {
        EtcdInstall {
            version: semver::Version::new(3, 5, 1),
            source: EtcdSource::Path("/x/etcd-v3.5.1-linux-amd64.tar.gz".into()),
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn probe_output_is_read() {
        let i = pin();
        let s = format!("current=v3.5.0\nstamp={}\n", stamp(&i));
        assert_eq!(
            parse_probe(&s, &i),
            HostInstall {
                current: Some("v3.5.0".into()),
                staged: true
            }
        );
        assert!(!parse_probe(&s, &i).converged(&i));
        let s = format!("current=/opt/hakube/etcd/v3.5.1/\nstamp={}\n", stamp(&i));
        assert!(parse_probe(&s, &i).converged(&i));
        // Another tarball of the same version is not this install.
        let s = "current=v3.5.1\nstamp=etcd v3.5.1 sha256 00\n";
        assert!(!parse_probe(s, &i).staged);
        assert_eq!(
            parse_probe("current=\nstamp=\n", &i),
            HostInstall::default()
        );
    }

    #[test]
    fn switch_is_a_rename_of_a_new_link() {
        let s = switch_script("v3.5.1");
        assert!(s.contains("ln -sfn 'v3.5.1' .current.tmp && mv -T .current.tmp current"));
        assert!(s.contains("'v3.5.1'/.hakube-version"));
    }

    #[test]
    fn unpack_checks_sum_binaries_and_version_before_the_rename() {
        let s = unpack_script(&pin());
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} missing"));
        assert!(at("sha256sum") < at("tar -xzf"));
        assert!(at("tar -xzf") < at("for b in etcd etcdctl etcdutl"));
        assert!(at("etcd Version: 3.5.1") < at("mv -T \"$tmp/x\""));
        assert!(at("> \"$tmp/x/.hakube-version\"") < at("mv -T \"$tmp/x\""));
        assert!(s.starts_with("set -e"));
    }

    /// The scripts run for real here: a fake release unpacks, a bad one is refused, the link
    /// switches and switches back.
    #[test]
    fn scripts_run_in_a_scratch_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("etcd");
        let rel = d.path().join("etcd-v3.5.1-linux-amd64");
        std::fs::create_dir(&rel).unwrap();
        for b in ["etcd", "etcdctl", "etcdutl"] {
            let p = rel.join(b);
            std::fs::write(&p, "#!/bin/sh\necho 'etcd Version: 3.5.1'\n").unwrap();
            std::process::Command::new("chmod")
                .arg("755")
                .arg(&p)
                .status()
                .unwrap();
        }
        let tgz = d.path().join("r.tar.gz");
        assert!(
            std::process::Command::new("tar")
                .arg("-czf")
                .arg(&tgz)
                .arg("-C")
                .arg(d.path())
                .arg("etcd-v3.5.1-linux-amd64")
                .status()
                .unwrap()
                .success()
        );
        let mut i = pin();
        i.sha256 = crate::install::sha256_file(&tgz).unwrap();
        let r = root.to_str().unwrap().to_string();
        let fix = |s: String| s.replace(&quote(ROOT), &quote(&r)).replace(ROOT, &r);
        let sh = |script: String, stdin: Option<&PathBuf>| {
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c").arg(script);
            if let Some(p) = stdin {
                cmd.stdin(std::fs::File::open(p).unwrap());
            }
            cmd.output().unwrap()
        };
        let o = sh(fix(unpack_script(&i)), Some(&tgz));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(root.join("v3.5.1/etcdutl").exists());
        let o = sh(fix(switch_script("v3.5.1")), None);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            std::fs::read_link(root.join("current")).unwrap(),
            PathBuf::from("v3.5.1")
        );
        let o = sh(fix(probe_script(&i)), None);
        assert!(parse_probe(&String::from_utf8_lossy(&o.stdout), &i).converged(&i));
        // Not installed: the link stays.
        let o = sh(fix(switch_script("v3.5.0")), None);
        assert!(!o.status.success());
        assert_eq!(
            std::fs::read_link(root.join("current")).unwrap(),
            PathBuf::from("v3.5.1")
        );
        // A tarball whose sum is not the spec's leaves nothing behind.
        let mut bad = i.clone();
        bad.version = semver::Version::new(3, 5, 2);
        bad.sha256 = "00".repeat(32);
        let o = sh(fix(unpack_script(&bad)), Some(&tgz));
        assert_eq!(o.status.code(), Some(3));
        assert!(!root.join("v3.5.2").exists());
        // The right sum but another release inside: refused by the version etcd reports.
        bad.sha256 = i.sha256.clone();
        let o = sh(fix(unpack_script(&bad)), Some(&tgz));
        assert_eq!(
            o.status.code(),
            Some(5),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!root.join("v3.5.2").exists());
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".incoming"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

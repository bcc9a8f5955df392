//! Hosts behind one transport trait. Production and the lab use SSH; tests can use the local
//! implementation. Everything hakube does on a host is a shell script run as root through
//! [`Transport::exec`], so the same code path serves every kind of host.

pub mod error;
pub mod fake;
pub mod jump;
pub mod local;
pub mod ssh;
pub mod tunnel;

pub use error::{ConnectCause, ConnectError, Error, Result, tail};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Output {
        Output {
            status: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).to_string()
    }
}

pub trait Transport: Send + Sync {
    /// The host name, for messages.
    fn host(&self) -> &str;
    /// Run `script` with `sh -c` as root on the host, feeding `stdin`. A non-zero exit is an
    /// [`Output`], not an error; errors are what kept the script from running to its end.
    fn exec<'a>(&'a self, script: &'a str, stdin: Option<&'a [u8]>) -> BoxFut<'a, Result<Output>>;
    /// Like [`Transport::exec`], with stdin streamed from `input` as the script reads it, so that
    /// a large file is never held in memory. The default reads it all first.
    fn exec_stream<'a>(
        &'a self,
        script: &'a str,
        mut input: Input<'a>,
    ) -> BoxFut<'a, Result<Output>> {
        Box::pin(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            input
                .read_to_end(&mut buf)
                .await
                .map_err(|source| Error::Input {
                    host: self.host().to_string(),
                    command: script.lines().next().unwrap_or("").to_string(),
                    source,
                })?;
            self.exec(script, Some(&buf)).await
        })
    }
}

/// A stream fed to a script's stdin.
pub type Input<'a> = Pin<Box<dyn tokio::io::AsyncRead + Send + 'a>>;

/// Feed `input` to a child's stdin while it runs; the child's own failure (it exited early, so
/// the pipe broke) is what the caller sees.
pub(crate) async fn feed_and_wait<W, F>(
    host: &str,
    script: &str,
    mut input: Input<'_>,
    mut pipe: W,
    wait: F,
) -> Result<Output>
where
    W: tokio::io::AsyncWrite + Unpin,
    F: Future<Output = Result<Output>>,
{
    use tokio::io::AsyncWriteExt;
    let feed = async move {
        tokio::io::copy(&mut input, &mut pipe).await?;
        pipe.shutdown().await?;
        std::io::Result::Ok(())
    };
    let (fed, out) = tokio::join!(feed, wait);
    let out = out?;
    if out.status == 0 {
        fed.map_err(|source| Error::Input {
            host: host.to_string(),
            command: script.lines().next().unwrap_or("").to_string(),
            source,
        })?;
    }
    Ok(out)
}

/// Default per-command timeout.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Run `script`; fail with the host, the command and the end of stderr if it exits non-zero.
pub async fn run(
    t: &dyn Transport,
    script: &str,
    display: &str,
    timeout: Duration,
) -> Result<Output> {
    run_with(t, script, None, display, timeout).await
}

/// [`run`] with `stdin`.
pub async fn run_with(
    t: &dyn Transport,
    script: &str,
    stdin: Option<&[u8]>,
    display: &str,
    timeout: Duration,
) -> Result<Output> {
    let out = tokio::time::timeout(timeout, t.exec(script, stdin))
        .await
        .map_err(|_| Error::Timeout {
            host: t.host().to_string(),
            command: display.to_string(),
            after: timeout,
        })?
        .map_err(|e| e.for_command(display))?;
    if out.status != 0 {
        return Err(Error::Exit {
            host: t.host().to_string(),
            command: display.to_string(),
            code: out.status,
            stderr: tail(&out.stderr, 8),
        });
    }
    Ok(out)
}

/// Whether every host runs commands as root: one `sudo -n sh -c true` per host (a no-op as
/// root), so that a user without passwordless sudo is refused once, for all hosts together,
/// before anything else runs. Other failures are left to the commands that follow.
pub async fn check_sudo(
    hosts: &std::collections::BTreeMap<String, std::sync::Arc<dyn Transport>>,
    concurrency: usize,
    outcome: &str,
) -> std::result::Result<(), String> {
    use futures::stream::StreamExt;
    let refused: Vec<(String, String, String)> =
        futures::stream::iter(hosts.values().map(|t| async move {
            match tokio::time::timeout(TIMEOUT, t.exec("true", None)).await {
                Ok(Err(Error::SudoRefused {
                    host, user, detail, ..
                })) => Some((user, detail, host)),
                _ => None,
            }
        }))
        .buffer_unordered(concurrency.max(1))
        .filter_map(|r| async move { r })
        .collect()
        .await;
    match error::sudo_refusals(refused, outcome) {
        Some(msg) => Err(msg),
        None => Ok(()),
    }
}

/// Single-quote `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The file next to a stamped file (a program) that records its sha256 and, as `size:inode:ctime`,
/// the file it was taken from. While the file's size, inode and change time (which no user can
/// set back, unlike the modification time) still match, the checksum is taken from the stamp and
/// the file is not read; any write, rename, chmod or chown changes the change time, and then the
/// file is hashed in full.
pub const STAMP_SUFFIX: &str = ".hakube-stamp";

/// `size:inode:ctime` of a file, as the stamp records it.
const STAT: &str = "stat -c '%s:%i:%.9Z'";

/// One wanted file's checksum on a host, as [`hash_lines`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sum {
    Missing,
    Hash(String),
    /// A stamped file hashed in full (no stamp, or a stale one), with what `stat` said before.
    Hashed {
        hash: String,
        stat: String,
    },
}

impl Sum {
    pub fn hash(&self) -> Option<&str> {
        match self {
            Sum::Missing => None,
            Sum::Hash(h) | Sum::Hashed { hash: h, .. } => Some(h),
        }
    }

    /// One line of [`hash_lines`]' output.
    pub fn parse(line: &str) -> Option<Sum> {
        let mut w = line.split_whitespace();
        let sum = match (w.next()?, w.next(), w.next()) {
            ("-", None, _) => Sum::Missing,
            (h, None, _) if is_sha256(h) => Sum::Hash(h.into()),
            (h, Some("hashed"), Some(stat)) if is_sha256(h) => Sum::Hashed {
                hash: h.into(),
                stat: stat.into(),
            },
            _ => return None,
        };
        Some(sum)
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Shell lines that print one line per `(path, stamped)`: the file's sha256, or `-` when it does
/// not exist; for a stamped file whose stamp still matches, the stamp's sha256 (the file is not
/// read), else its full sum followed by `hashed` and the `stat` seen before hashing.
pub fn hash_lines<'a>(files: impl IntoIterator<Item = (&'a str, bool)>) -> String {
    let mut script = String::new();
    for (p, stamped) in files {
        let q = quote(p);
        if stamped {
            let st = quote(&format!("{p}{STAMP_SUFFIX}"));
            script.push_str(&format!(
                "if [ -f {q} ]; then s=$(cat {st} 2>/dev/null); m=$({STAT} {q} 2>/dev/null); \
                 if [ -n \"$m\" ] && [ \"${{s#* }}\" = \"$m\" ]; then echo \"${{s%% *}}\"; \
                 else echo \"$(sha256sum < {q} | cut -d' ' -f1) hashed ${{m:-none}}\"; fi; else echo -; fi\n"
            ));
        } else {
            script.push_str(&format!(
                "if [ -f {q} ]; then sha256sum < {q} | cut -d' ' -f1; else echo -; fi\n"
            ));
        }
    }
    script
}

/// Read [`hash_lines`]' output: exactly `n` sums.
pub fn parse_sums(host: &str, text: &str, n: usize) -> anyhow::Result<Vec<Sum>> {
    let v: Vec<Sum> = text
        .lines()
        .map(|l| {
            Sum::parse(l)
                .ok_or_else(|| anyhow::anyhow!("{host}: unexpected line {l:?} among the checksums"))
        })
        .collect::<anyhow::Result<_>>()?;
    if v.len() != n {
        anyhow::bail!("{host}: expected {n} checksums, got {}", v.len());
    }
    Ok(v)
}

/// sha256 of each path on the host (`None` where the file does not exist), in one round trip.
pub async fn remote_hashes(
    t: &dyn Transport,
    paths: &[String],
) -> anyhow::Result<Vec<Option<String>>> {
    if paths.is_empty() {
        return Ok(vec![]);
    }
    let script = hash_lines(paths.iter().map(|p| (p.as_str(), false)));
    let out = run(t, &script, "sha256sum (compare files)", TIMEOUT).await?;
    Ok(parse_sums(t.host(), &out.stdout_str(), paths.len())?
        .iter()
        .map(|s| s.hash().map(String::from))
        .collect())
}

/// Read a file from the host; `None` if it does not exist.
pub async fn read_file(t: &dyn Transport, path: &str) -> Result<Option<Vec<u8>>> {
    let q = quote(path);
    let out = run(
        t,
        &format!("if [ -f {q} ]; then cat {q}; else exit 3; fi"),
        &format!("cat {path}"),
        TIMEOUT,
    )
    .await;
    match out {
        Ok(o) => Ok(Some(o.stdout)),
        Err(e) if e.exit_code() == Some(3) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The first line of [`write_files`]'s script, by which the fake transport knows it.
pub const WRITE_FILES: &str = "# hakube write_files";

/// Write several files so that they change together: every one is staged next to its path
/// first, then all are renamed in place back to back. A certificate and its key then never
/// disagree for longer than two renames. Each file's previous version is kept as
/// `path.hakube-prev`. The contents go on stdin as `path`, `mode`, base64 lines.
pub async fn write_files(t: &dyn Transport, files: &[(&str, &[u8], u32)]) -> Result<()> {
    use base64::Engine;
    // The script splits its list on blanks and `|`: other paths go one at a time.
    let plain = |p: &str| !p.contains(|c: char| c.is_whitespace() || c == '|');
    if files.len() < 2 || !files.iter().all(|f| plain(f.0)) {
        for (path, content, mode) in files {
            write_file(t, path, content, *mode).await?;
        }
        return Ok(());
    }
    let mut input = String::new();
    for (path, content, mode) in files {
        input.push_str(&format!(
            "{path}\n{mode:o}\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(content)
        ));
    }
    let script = format!(
        "{WRITE_FILES}\nset -e; umask 077; staged=''\n\
         trap 'for x in $staged; do rm -f \"${{x%%|*}}\"; done' EXIT\n\
         while IFS= read -r p && IFS= read -r m && IFS= read -r b; do\n\
         d=$(dirname \"$p\"); mkdir -p \"$d\"; tmp=$(mktemp \"$d/.hakube.XXXXXX\")\n\
         printf '%s' \"$b\" | base64 -d > \"$tmp\"; chmod \"$m\" \"$tmp\"; chown root:root \"$tmp\" 2>/dev/null || true\n\
         staged=\"$staged $tmp|$p\"\n\
         done\n\
         for x in $staged; do p=${{x#*|}}; if [ -f \"$p\" ]; then cp -p \"$p\" \"$p.hakube-prev\"; fi; done\n\
         for x in $staged; do mv -f \"${{x%%|*}}\" \"${{x#*|}}\"; done\n\
         staged=''\n"
    );
    let names: Vec<&str> = files.iter().map(|f| f.0).collect();
    run_with(
        t,
        &script,
        Some(input.as_bytes()),
        &format!("write {}", names.join(", ")),
        TIMEOUT,
    )
    .await?;
    Ok(())
}

/// Write `content` to `path` atomically: a temporary file in the same directory with the final
/// mode, then a rename. The previous version is kept as `path.hakube-prev` for rollback.
pub async fn write_file(t: &dyn Transport, path: &str, content: &[u8], mode: u32) -> Result<()> {
    let script = write_script(path, mode, None);
    run_with(t, &script, Some(content), &format!("write {path}"), TIMEOUT).await?;
    Ok(())
}

/// [`write_file`] for a program, streamed from `input` (never held in memory), then its stamp
/// (see [`STAMP_SUFFIX`]) with `sha256`, the checksum of what `input` holds.
pub async fn write_stamped(
    t: &dyn Transport,
    path: &str,
    input: Input<'_>,
    mode: u32,
    sha256: &str,
) -> Result<()> {
    let script = write_script(path, mode, Some(sha256));
    let display = format!("write {path}");
    let out = tokio::time::timeout(TIMEOUT * 3, t.exec_stream(&script, input))
        .await
        .map_err(|_| Error::Timeout {
            host: t.host().to_string(),
            command: display.clone(),
            after: TIMEOUT * 3,
        })?
        .map_err(|e| e.for_command(&display))?;
    if out.status != 0 {
        return Err(Error::Exit {
            host: t.host().to_string(),
            command: display,
            code: out.status,
            stderr: tail(&out.stderr, 8),
        });
    }
    Ok(())
}

/// Record the stamp of a file that was hashed in full and found as wanted, only if it is still
/// the file that was hashed (`stat` unchanged), so that later runs need not read it.
pub async fn restamp(t: &dyn Transport, path: &str, sha256: &str, stat: &str) -> Result<()> {
    let q = quote(path);
    let st = quote(&format!("{path}{STAMP_SUFFIX}"));
    let script = format!(
        "[ \"$({STAT} {q} 2>/dev/null)\" = {m} ] || exit 0; umask 022; \
         printf '%s %s\\n' {sha} {m} > {st}.tmp && mv -f {st}.tmp {st}",
        m = quote(stat),
        sha = quote(sha256),
    );
    run(t, &script, &format!("stamp {path}"), TIMEOUT).await?;
    Ok(())
}

fn write_script(path: &str, mode: u32, stamp: Option<&str>) -> String {
    let q = quote(path);
    // A program's copy is checked before it replaces anything: the local file may have changed
    // since it was hashed, and its stamp must never vouch for other bytes.
    let check = match stamp {
        Some(sha) => format!(
            "got=$(sha256sum < \"$tmp\" | cut -d' ' -f1); if [ \"$got\" != {sha} ]; then rm -f \"$tmp\"; \
             echo \"the copy's sha256 is $got, not {sha}: the local file changed while it was sent\" >&2; exit 1; fi; ",
            sha = quote(sha)
        ),
        None => String::new(),
    };
    let mut script = format!(
        "set -e; umask 077; d=$(dirname {q}); mkdir -p \"$d\"; tmp=$(mktemp \"$d/.hakube.XXXXXX\"); \
         cat > \"$tmp\"; {check}chmod {mode:o} \"$tmp\"; chown root:root \"$tmp\" 2>/dev/null || true; \
         if [ -f {q} ]; then cp -p {q} {q}.hakube-prev; fi; mv -f \"$tmp\" {q}"
    );
    if let Some(sha) = stamp {
        let st = quote(&format!("{path}{STAMP_SUFFIX}"));
        // Without a stamp of the new file, the next run hashes it: never a stale match.
        script.push_str(&format!(
            "; rm -f {st}; m=$({STAT} {q} 2>/dev/null) || exit 0; umask 022; \
             printf '%s %s\\n' {sha} \"$m\" > {st}.tmp && mv -f {st}.tmp {st}",
            sha = quote(sha)
        ));
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn sha(data: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(data))
    }

    async fn probe(t: &dyn Transport, path: &str) -> Sum {
        let out = run(t, &hash_lines([(path, true)]), "probe", TIMEOUT)
            .await
            .expect("probe");
        parse_sums("h", &out.stdout_str(), 1).expect("sums")[0].clone()
    }

    /// The stamp spares reading the program, and any write to it (even one that keeps its size
    /// and modification time) makes the next probe hash it in full.
    #[tokio::test]
    async fn a_stamped_program_is_read_only_when_it_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prog");
        let p = path.to_str().expect("utf-8 path");
        let t = local::Local::new("h");
        assert_eq!(probe(&t, p).await, Sum::Missing);

        let v1 = b"program v1\n".repeat(1000);
        write_stamped(&t, p, Box::pin(&v1[..]), 0o755, &sha(&v1))
            .await
            .expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), v1);
        assert_eq!(
            probe(&t, p).await,
            Sum::Hash(sha(&v1)),
            "taken from the stamp"
        );
        // The stamp is what the probe believes: one that claims another checksum for this very
        // file is believed (hence the stamp is written only by hakube, next to a root-owned file).
        let stamp = format!("{p}{STAMP_SUFFIX}");
        let text = std::fs::read_to_string(&stamp).expect("stamp");
        let (_, stat) = text.trim().split_once(' ').expect("sha and stat");
        std::fs::write(&stamp, format!("{} {stat}\n", "ab".repeat(32))).expect("forge");
        assert_eq!(probe(&t, p).await, Sum::Hash("ab".repeat(32)));

        // Same size, modification time put back: the change time still moves.
        let mut v2 = v1.clone();
        v2[100] = b'X';
        run(
            &t,
            &format!(
                "cp -p {q} {q}.old && printf X | dd of={q} bs=1 seek=100 conv=notrunc 2>/dev/null && touch -r {q}.old {q}",
                q = quote(p)
            ),
            "edit by hand",
            TIMEOUT,
        )
        .await
        .expect("edit");
        assert_eq!(std::fs::read(&path).expect("read"), v2);
        let Sum::Hashed { hash, stat } = probe(&t, p).await else {
            panic!("a changed program must be hashed in full");
        };
        assert_eq!(hash, sha(&v2));

        // A stamp is recorded only for the file that was hashed.
        restamp(&t, p, &hash, "0:0:0").await.expect("restamp");
        assert!(matches!(probe(&t, p).await, Sum::Hashed { .. }));
        restamp(&t, p, &hash, &stat).await.expect("restamp");
        assert_eq!(probe(&t, p).await, Sum::Hash(sha(&v2)));

        // No stamp at all: hashed in full.
        std::fs::remove_file(&stamp).expect("rm stamp");
        assert!(matches!(probe(&t, p).await, Sum::Hashed { hash, .. } if hash == sha(&v2)));
    }

    /// A copy whose checksum is not the one its stamp would record replaces nothing.
    #[tokio::test]
    async fn a_program_that_changed_while_it_was_sent_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prog");
        let p = path.to_str().expect("utf-8 path");
        let t = local::Local::new("h");
        write_stamped(&t, p, Box::pin(&b"old"[..]), 0o755, &sha(b"old"))
            .await
            .expect("write");
        let e = write_stamped(&t, p, Box::pin(&b"new"[..]), 0o755, &sha(b"other"))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("changed while it was sent"), "{e}");
        assert_eq!(std::fs::read(&path).expect("read"), b"old");
        assert_eq!(probe(&t, p).await, Sum::Hash(sha(b"old")));
    }

    #[test]
    fn sums_are_read_strictly() {
        let h = "a".repeat(64);
        assert_eq!(Sum::parse("-"), Some(Sum::Missing));
        assert_eq!(Sum::parse(&h), Some(Sum::Hash(h.clone())));
        assert_eq!(
            Sum::parse(&format!("{h} hashed 1:2:3.4")),
            Some(Sum::Hashed {
                hash: h.clone(),
                stat: "1:2:3.4".into()
            })
        );
        assert_eq!(Sum::parse("sha256sum: not found"), None);
        assert!(parse_sums("h", &format!("{h}\n-\n"), 3).is_err());
    }
}

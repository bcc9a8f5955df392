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

/// sha256 of each path on the host (`None` where the file does not exist), in one round trip.
pub async fn remote_hashes(
    t: &dyn Transport,
    paths: &[String],
) -> anyhow::Result<Vec<Option<String>>> {
    if paths.is_empty() {
        return Ok(vec![]);
    }
    let mut script = String::new();
    for p in paths {
        script.push_str(&format!(
            "if [ -f {q} ]; then sha256sum < {q} | cut -d' ' -f1; else echo -; fi\n",
            q = quote(p)
        ));
    }
    let out = run(t, &script, "sha256sum (compare files)", TIMEOUT).await?;
    let text = out.stdout_str();
    let v: Vec<Option<String>> = text
        .lines()
        .map(|l| {
            if l.trim() == "-" {
                None
            } else {
                Some(l.trim().to_string())
            }
        })
        .collect();
    if v.len() != paths.len() {
        anyhow::bail!(
            "{}: expected {} checksums, got {}",
            t.host(),
            paths.len(),
            v.len()
        );
    }
    Ok(v)
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
    let q = quote(path);
    let script = format!(
        "set -e; umask 077; d=$(dirname {q}); mkdir -p \"$d\"; tmp=$(mktemp \"$d/.hakube.XXXXXX\"); \
         cat > \"$tmp\"; chmod {mode:o} \"$tmp\"; chown root:root \"$tmp\" 2>/dev/null || true; \
         if [ -f {q} ]; then cp -p {q} {q}.hakube-prev; fi; mv -f \"$tmp\" {q}"
    );
    run_with(t, &script, Some(content), &format!("write {path}"), TIMEOUT).await?;
    Ok(())
}

//! Runs scripts on this machine. For tests, and for running hakube on a host itself.

use super::{BoxFut, Error, Output, Result, Transport};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

pub struct Local {
    name: String,
}

impl Local {
    pub fn new(name: impl Into<String>) -> Local {
        Local { name: name.into() }
    }
}

impl Transport for Local {
    fn host(&self) -> &str {
        &self.name
    }

    fn exec<'a>(&'a self, script: &'a str, stdin: Option<&'a [u8]>) -> BoxFut<'a, Result<Output>> {
        let spawn_err = |source: std::io::Error| Error::Spawn {
            host: self.name.clone(),
            command: "sh".into(),
            source,
        };
        Box::pin(async move {
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(spawn_err)?;
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(data).await.map_err(spawn_err)?;
                drop(pipe);
            }
            let out = child.wait_with_output().await.map_err(spawn_err)?;
            Ok(Output::from(out))
        })
    }

    fn exec_stream<'a>(
        &'a self,
        script: &'a str,
        input: super::Input<'a>,
    ) -> BoxFut<'a, Result<Output>> {
        let spawn_err = |source: std::io::Error| Error::Spawn {
            host: self.name.clone(),
            command: "sh".into(),
            source,
        };
        Box::pin(async move {
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(spawn_err)?;
            let pipe = child
                .stdin
                .take()
                .ok_or_else(|| spawn_err(std::io::Error::other("the child has no stdin pipe")))?;
            let wait = async {
                Ok(Output::from(
                    child.wait_with_output().await.map_err(spawn_err)?,
                ))
            };
            super::feed_and_wait(&self.name, script, input, pipe, wait).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The real script, run by the real `sh`: all files land with their modes, the previous
    /// versions are kept, and nothing is left staged.
    #[tokio::test]
    async fn write_files_changes_them_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n).display().to_string();
        let (crt, key, new) = (p("pki/server.crt"), p("pki/server.key"), p("other/x.conf"));
        std::fs::create_dir_all(dir.path().join("pki")).expect("mkdir");
        std::fs::write(&crt, "old cert\n").expect("seed");
        let t = Local::new("local");
        let bin = [0u8, 255, 10, 13, b'\'', b'|'];
        super::super::write_files(
            &t,
            &[
                (crt.as_str(), b"new cert\n", 0o644),
                (key.as_str(), b"new key\n", 0o600),
                (new.as_str(), &bin, 0o640),
            ],
        )
        .await
        .expect("write_files");
        let read = |f: &str| std::fs::read(f).expect("read");
        let mode = |f: &str| std::fs::metadata(f).expect("stat").permissions().mode() & 0o777;
        assert_eq!(read(&crt), b"new cert\n");
        assert_eq!(read(&format!("{crt}.hakube-prev")), b"old cert\n");
        assert_eq!(read(&key), b"new key\n");
        assert_eq!(read(&new), bin);
        assert_eq!((mode(&crt), mode(&key), mode(&new)), (0o644, 0o600, 0o640));
        let staged: Vec<_> = std::fs::read_dir(dir.path().join("pki"))
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".hakube."))
            .collect();
        assert!(staged.is_empty(), "{staged:?}");
    }

    /// A failure while staging changes nothing and leaves no staged file behind.
    #[tokio::test]
    async fn write_files_failing_midway_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a").display().to_string();
        std::fs::write(&a, "kept\n").expect("seed");
        // A directory cannot be made under a regular file.
        let bad = dir.path().join("a/b/c").display().to_string();
        let t = Local::new("local");
        let r = super::super::write_files(
            &t,
            &[(a.as_str(), b"new\n", 0o644), (bad.as_str(), b"x", 0o644)],
        )
        .await;
        assert!(r.is_err());
        assert_eq!(std::fs::read(&a).expect("read"), b"kept\n");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, vec!["a".to_string()]);
    }
}

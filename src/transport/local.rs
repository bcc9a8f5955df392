//! Runs scripts on this machine. For tests, and for running hakube on a host itself.

use super::{BoxFut, Output, Transport};
use anyhow::{Context, Result};
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
                .context("cannot start sh")?;
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(data).await?;
                drop(pipe);
            }
            let out = child.wait_with_output().await?;
            Ok(Output::from(out))
        })
    }

    fn exec_stream<'a>(
        &'a self,
        script: &'a str,
        input: super::Input<'a>,
    ) -> BoxFut<'a, Result<Output>> {
        Box::pin(async move {
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start sh")?;
            let pipe = child.stdin.take().context("no stdin")?;
            let wait = async { Ok(Output::from(child.wait_with_output().await?)) };
            super::feed_and_wait(input, pipe, wait).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(bytes: Vec<u8>) -> super::super::Input<'static> {
        Box::pin(std::io::Cursor::new(bytes))
    }

    #[tokio::test]
    async fn a_stream_reaches_the_script_whole() {
        let data: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
        let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
        let o = Local::new("here")
            .exec_stream("sha256sum | cut -d' ' -f1", input(data))
            .await
            .unwrap();
        assert_eq!(o.status, 0, "{}", o.stderr);
        assert_eq!(o.stdout_str().trim(), want);
    }

    #[tokio::test]
    async fn a_script_that_stops_reading_reports_its_own_failure() {
        let o = Local::new("here")
            .exec_stream("echo no room >&2; exit 7", input(vec![0u8; 8 << 20]))
            .await
            .unwrap();
        assert_eq!(o.status, 7);
        assert!(o.stderr.contains("no room"));
    }
}

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

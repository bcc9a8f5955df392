//! A scripted host for tests: an in-memory file system that understands this module's own file
//! primitives ([`super::write_file`], [`super::read_file`], [`super::remote_hashes`]), and
//! answers every other script by the first rule whose text it contains (exit 0 and no output
//! when none matches). It records every script, so a test can say what a phase ran.

use super::{BoxFut, Output, Result, Transport};
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::Mutex;

pub struct Fake {
    name: String,
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    rules: Mutex<Vec<(String, Output)>>,
    ran: Mutex<Vec<String>>,
}

impl Fake {
    pub fn new(name: impl Into<String>) -> Fake {
        Fake {
            name: name.into(),
            files: Mutex::new(BTreeMap::new()),
            rules: Mutex::new(Vec::new()),
            ran: Mutex::new(Vec::new()),
        }
    }

    /// Answer scripts containing `needle` with this exit status and stdout (first rule wins).
    pub fn on(&self, needle: &str, status: i32, stdout: &str) -> &Self {
        lock(&self.rules).push((
            needle.to_string(),
            Output {
                status,
                stdout: stdout.as_bytes().to_vec(),
                stderr: if status == 0 {
                    String::new()
                } else {
                    format!("{needle}: failed (scripted)")
                },
            },
        ));
        self
    }

    pub fn put(&self, path: &str, data: &[u8]) {
        lock(&self.files).insert(path.to_string(), data.to_vec());
    }

    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        lock(&self.files).get(path).cloned()
    }

    /// Every script run that was not a file primitive, in order.
    pub fn ran(&self) -> Vec<String> {
        lock(&self.ran).clone()
    }

    /// Paths written, in order.
    pub fn written(&self) -> Vec<String> {
        self.ran()
            .iter()
            .filter_map(|s| s.strip_prefix("write "))
            .map(String::from)
            .collect()
    }

    fn answer(&self, script: &str, stdin: Option<&[u8]>) -> Output {
        let ok = |stdout: Vec<u8>| Output {
            status: 0,
            stdout,
            stderr: String::new(),
        };
        // write_file: `... d=$(dirname 'PATH'); ...`
        if script.starts_with("set -e; umask 077; d=$(dirname ")
            && let Some(path) = first_quoted(script)
        {
            self.put(&path, stdin.unwrap_or_default());
            lock(&self.ran).push(format!("write {path}"));
            return ok(vec![]);
        }
        // write_files: `path`, `mode`, base64 lines on stdin.
        if script.starts_with(super::WRITE_FILES) {
            use base64::Engine;
            let input = String::from_utf8_lossy(stdin.unwrap_or_default()).to_string();
            let lines: Vec<&str> = input.lines().collect();
            for f in lines.chunks(3) {
                if let [path, _mode, b64] = f {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_default();
                    self.put(path, &data);
                    lock(&self.ran).push(format!("write {path}"));
                }
            }
            return ok(vec![]);
        }
        // read_file: `if [ -f 'PATH' ]; then cat 'PATH'; else exit 3; fi`
        if script.starts_with("if [ -f ")
            && script.contains("; then cat ")
            && let Some(path) = first_quoted(script)
        {
            return match self.file(&path) {
                Some(d) => ok(d),
                None => Output {
                    status: 3,
                    stdout: vec![],
                    stderr: String::new(),
                },
            };
        }
        // remote_hashes: one `if [ -f 'PATH' ]; then sha256sum ...` line per path.
        if script.starts_with("if [ -f ") && script.contains("then sha256sum") {
            let mut out = String::new();
            for line in script.lines() {
                let sum = first_quoted(line)
                    .and_then(|p| self.file(&p))
                    .map(|d| hex::encode(sha2::Sha256::digest(&d)));
                out.push_str(sum.as_deref().unwrap_or("-"));
                out.push('\n');
            }
            return ok(out.into_bytes());
        }
        lock(&self.ran).push(script.to_string());
        lock(&self.rules)
            .iter()
            .find(|(needle, _)| script.contains(needle.as_str()))
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| ok(vec![]))
    }
}

impl Transport for Fake {
    fn host(&self) -> &str {
        &self.name
    }

    fn exec<'a>(&'a self, script: &'a str, stdin: Option<&'a [u8]>) -> BoxFut<'a, Result<Output>> {
        Box::pin(async move { Ok(self.answer(script, stdin)) })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first `'...'` word of a script, undoing [`super::quote`]'s `'\''`.
fn first_quoted(s: &str) -> Option<String> {
    let start = s.find('\'')? + 1;
    let mut out = String::new();
    let mut rest = &s[start..];
    loop {
        let end = rest.find('\'')?;
        out.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix("\\''") {
            Some(r) => {
                out.push('\'');
                rest = r;
            }
            None => return Some(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport;

    #[tokio::test]
    async fn understands_the_file_primitives() {
        let f = Fake::new("h");
        let p = "/etc/it's here.conf";
        assert_eq!(transport::read_file(&f, p).await.ok(), Some(None));
        transport::write_file(&f, p, b"x\n", 0o600)
            .await
            .expect("write");
        assert_eq!(
            transport::read_file(&f, p).await.ok(),
            Some(Some(b"x\n".to_vec()))
        );
        let sums = transport::remote_hashes(&f, &[p.to_string(), "/nope".to_string()])
            .await
            .expect("hashes");
        assert_eq!(
            sums,
            vec![Some(hex::encode(sha2::Sha256::digest(b"x\n"))), None]
        );
        assert_eq!(f.written(), vec![p.to_string()]);
    }

    #[tokio::test]
    async fn rules_answer_and_scripts_are_recorded() {
        let f = Fake::new("h");
        f.on("apt-get", 100, "");
        let o = f.exec("apt-get install -y x", None).await.expect("exec");
        assert_eq!(o.status, 100);
        let o = f.exec("true", None).await.expect("exec");
        assert_eq!(o.status, 0);
        assert_eq!(f.ran(), vec!["apt-get install -y x", "true"]);
    }
}

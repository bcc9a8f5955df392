//! `hakube … | head` and the lab's `systemctl status … | head`: when the reader of stdout is
//! gone, the binary ends quietly (killed by SIGPIPE, as other command-line tools are), never
//! with a panic (exit 101).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

const HAKUBE: &str = env!("CARGO_BIN_EXE_hakube");

/// Run `cmd` with its stdout (or stderr) on a pipe whose read end is already closed, so its
/// first write there fails (what `| head` does once head has exited).
fn with_closed(stream: Stream, cmd: &mut Command) -> Output {
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    cmd.stdin(Stdio::null());
    match stream {
        Stream::Stdout => cmd.stdout(Stdio::from(write)).stderr(Stdio::piped()),
        Stream::Stderr => cmd.stdout(Stdio::null()).stderr(Stdio::from(write)),
    };
    cmd.output().expect("run")
}

enum Stream {
    Stdout,
    Stderr,
}

fn assert_quiet_end(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{what} must end quietly on a closed stdout, stderr:\n{stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(nix::libc::SIGPIPE),
        "{what} must end as killed by SIGPIPE ({:?}), stderr:\n{stderr}",
        out.status
    );
}

#[test]
fn plan_and_render_end_quietly_when_stdout_is_closed() {
    let out = with_closed(
        Stream::Stdout,
        Command::new(HAKUBE).args(["plan", "-f", "examples/seed.yaml"]),
    );
    assert_quiet_end("hakube plan", &out);
    let out = with_closed(
        Stream::Stdout,
        Command::new(HAKUBE).args(["plan", "--help"]),
    );
    assert_quiet_end("hakube plan --help", &out);
}

#[test]
fn a_closed_stderr_ends_quietly_too() {
    // plan writes its notes to stderr: `hakube plan 2>&1 >/dev/null | head`.
    let out = with_closed(
        Stream::Stderr,
        Command::new(HAKUBE).args(["plan", "-f", "examples/seed.yaml"]),
    );
    assert_eq!(
        out.status.signal(),
        Some(nix::libc::SIGPIPE),
        "{:?}",
        out.status
    );
}

#[test]
fn lab_systemctl_status_ends_quietly_when_stdout_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc/systemd/system")).expect("unit dir");
    std::fs::write(
        root.join("etc/systemd/system/idle.service"),
        "[Unit]\nDescription=idle\n[Service]\nExecStart=/bin/sleep 100\n",
    )
    .expect("unit");
    let bin = dir.path().join("systemctl");
    std::os::unix::fs::symlink(HAKUBE, &bin).expect("link");
    let out = with_closed(
        Stream::Stdout,
        Command::new(&bin)
            .args(["status", "idle"])
            .env("HAKUBE_SYSTEMCTL_ROOT", &root),
    );
    assert_quiet_end("systemctl status", &out);
}

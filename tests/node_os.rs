//! A bare host's way to kubeadm, checked with the real tools this machine has: containerd loads
//! the rendered config, and the repository key step (run with sh, curl and gpg) takes the
//! pinned key and refuses any other.

use hakube::apply::ops::{Apt, Op};
use hakube::render::{self, Secrets};
use hakube::spec;
use std::path::Path;
use std::process::Command;

const SEED: &str = include_str!("../examples/seed.yaml");

fn rendered(host: &str, path: &str) -> String {
    let l = spec::load_str(SEED, "cluster.yaml", Path::new("/nonexistent"));
    let c = l.cluster.expect("seed is valid");
    let secrets = Secrets {
        stats_password: "x".into(),
    };
    render::render(&c, &secrets)
        .expect("renders")
        .into_iter()
        .find(|f| f.host == host && f.path == path)
        .unwrap_or_else(|| panic!("{host}:{path} not rendered"))
        .content
}

#[test]
fn containerd_loads_the_rendered_config_with_systemd_cgroups_and_the_pause_image() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, rendered("worker1", "/etc/containerd/config.toml")).expect("write");
    let out = Command::new("containerd")
        .arg("--config")
        .arg(&cfg)
        .args(["config", "dump"])
        .output()
        .expect("containerd (scripts/setup.sh installs it)");
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The merged config, as containerd will run it: the values sit under the CRI plugin.
    let cri = dump
        .find("[plugins.\"io.containerd.grpc.v1.cri\"]")
        .expect("cri plugin");
    let sandbox = dump
        .find("sandbox_image = \"registry.k8s.io/pause:3.10.1\"")
        .expect("sandbox image");
    let runc = dump
        .find("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]")
        .expect("runc options");
    let systemd = dump[runc..]
        .find("SystemdCgroup = true")
        .expect("SystemdCgroup");
    assert!(cri < sandbox && sandbox < runc && systemd > 0);

    // The same check catches a broken file.
    std::fs::write(&cfg, "version = 2\n[plugins\n").expect("write");
    let out = Command::new("containerd")
        .arg("--config")
        .arg(&cfg)
        .args(["config", "dump"])
        .output()
        .expect("containerd");
    assert!(!out.status.success(), "a broken config must be refused");
}

fn gpg(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new("gpg")
        .env("GNUPGHOME", home)
        .args([
            "--batch",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ])
        .args(args)
        .output()
        .expect("gpg (scripts/setup.sh installs it)")
}

#[test]
fn the_repository_key_step_takes_only_the_pinned_fingerprint() {
    let dir = tempfile::tempdir().expect("tmp");
    let home = dir.path().join("gnupg");
    std::fs::create_dir(&home).expect("home");
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("mode");
    let made = gpg(
        &home,
        &[
            "--quick-gen-key",
            "hakube test repo <repo@example.invalid>",
            "ed25519",
            "sign",
            "1d",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let key = dir.path().join("Release.key");
    let export = gpg(
        &home,
        &[
            "--armor",
            "--output",
            key.to_str().expect("utf8"),
            "--export",
        ],
    );
    assert!(export.status.success());
    let colons = gpg(&home, &["--with-colons", "--list-keys"]);
    let fpr = String::from_utf8_lossy(&colons.stdout)
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .expect("fingerprint")
        .to_string();
    let keyring = dir.path().join("keyrings/repo.gpg");
    let op = |fingerprint: &str| {
        Op::from(Apt::Key {
            url: format!("file://{}", key.display()),
            fingerprint: fingerprint.into(),
            keyring: keyring.display().to_string(),
        })
    };
    let run = |op: Op| {
        Command::new("sh")
            .args(["-c", &op.script()])
            .env("GNUPGHOME", &home)
            .output()
            .expect("sh")
    };

    let wrong = "DE15B14486CD377B9E876E1A234654DA9A296436";
    let out = run(op(wrong));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("has fingerprint {fpr}, not the pinned {wrong}")),
        "{err}"
    );
    assert!(!keyring.exists(), "a refused key is not installed");

    let out = run(op(&fpr));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&keyring).expect("keyring written");
    assert_ne!(
        bytes.first(),
        Some(&b'-'),
        "stored dearmored, as apt's signed-by wants"
    );
}

//! Pinned installs: components hakube puts on the hosts itself, at the version the spec names.
//!
//! etcd comes from a release tarball (a local file first, since air-gapped sites are the usual
//! case, or a URL), checked against the spec's SHA-256 on the operator machine before any host
//! is touched and again on each host, unpacked into a versioned folder and switched to with an
//! atomic symlink ([`etcd`]). HAProxy and keepalived are Debian packages pinned with
//! `apt-get install NAME=VERSION` (the prepare phase).

pub mod etcd;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// SHA-256 of a file, lower-case hex, read in blocks (a release tarball is tens of MiB).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The packages to (re)install on a load balancer so that its pinned versions hold: `name=ver`
/// for each pin the host does not have, in name order.
pub fn package_pins(
    pins: &std::collections::BTreeMap<String, String>,
    installed: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    pins.iter()
        .filter(|(name, ver)| installed(name).as_deref() != Some(ver.as_str()))
        .map(|(name, ver)| format!("{name}={ver}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha256_file(&d.path().join("missing")).is_err());
    }

    #[test]
    fn pins_only_what_differs() {
        let pins = [
            ("haproxy".to_string(), "2.6.12-1+deb12u4".to_string()),
            ("keepalived".to_string(), "1:2.2.7-1+b2".to_string()),
        ]
        .into_iter()
        .collect();
        let have = |n: &str| match n {
            "haproxy" => Some("2.6.12-1+deb12u4".to_string()),
            _ => None,
        };
        assert_eq!(package_pins(&pins, have), vec!["keepalived=1:2.2.7-1+b2"]);
        assert_eq!(
            package_pins(&pins, |_| None),
            vec!["haproxy=2.6.12-1+deb12u4", "keepalived=1:2.2.7-1+b2"]
        );
    }
}

//! Certificates: the etcd CA and its server, peer and client certificates, and the cluster CA.
//!
//! A deliberately small PKI on rcgen with ECDSA P-256 keys: a CA kept as `ca.crt`/`ca.key` in a
//! folder (created on first use, the key 0600), and leaf certificates issued from it with the
//! SANs (IP addresses and DNS names) the caller gives.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a leaf certificate is for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server only (for example the API server, or etcd's client port).
    Server,
    /// TLS client only (for example the API server talking to etcd).
    Client,
    /// Both server and client: etcd peers authenticate each other with one certificate.
    Peer,
}

/// A certificate authority loaded from (or created in) a folder.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The CA certificate's file name inside the CA folder.
pub const CA_CERT: &str = "ca.crt";
/// The CA key's file name inside the CA folder (mode 0600).
pub const CA_KEY: &str = "ca.key";

impl Ca {
    /// Load `dir/ca.crt` and `dir/ca.key`, or create both (10 years) when neither exists.
    /// A folder holding only one of the two is refused rather than silently replaced.
    pub fn load_or_create(dir: &Path, cn: &str) -> Result<Ca> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(dir),
            (false, false) => Self::create(dir, cn),
            (c, _) => bail!(
                "the CA folder {} holds {} but not {}\n  help: restore the missing file, or remove the folder to create a new CA (every certificate issued by the old one stops working)",
                dir.display(),
                if c { CA_CERT } else { CA_KEY },
                if c { CA_KEY } else { CA_CERT }
            ),
        }
    }

    /// Load `dir/ca.crt` and `dir/ca.key`; both must exist.
    pub fn load(dir: &Path) -> Result<Ca> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let cert_pem = fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read the CA certificate {}", cert_path.display()))?;
        let key_pem = fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read the CA key {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{} is not a PEM CA certificate", cert_path.display()))?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_pem,
            issuer,
        })
    }

    fn create(dir: &Path, cn: &str) -> Result<Ca> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the CA folder {}", dir.display()))?;
        let (ca, key_pem) = Self::generate(dir, cn)?;
        // Key first: a crash in between leaves a folder that load_or_create refuses loudly.
        write_secret(&dir.join(CA_KEY), &key_pem)?;
        write_public(&dir.join(CA_CERT), &ca.cert_pem)?;
        Ok(ca)
    }

    /// A new CA (10 years) in memory only, as it would be kept in `dir`; returns it with its
    /// key's PEM. A dry-run plans with one of these and writes nothing.
    pub fn generate(dir: &Path, cn: &str) -> Result<(Ca, String)> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("cannot generate the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, std::time::Duration::from_secs(3650 * 86400));
        let cert = params
            .self_signed(&key)
            .context("cannot self-sign the CA certificate")?;
        let key_pem = key.serialize_pem();
        let ca = Ca {
            dir: dir.to_path_buf(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of the CA certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// Issue a leaf certificate. `sans` are IP addresses or DNS names; returns `(cert_pem, key_pem)`.
    pub fn issue(
        &self,
        cn: &str,
        sans: &[String],
        usage: Usage,
        validity: std::time::Duration,
    ) -> Result<(String, String)> {
        let mut params = CertificateParams::new(sans.to_vec()).with_context(|| {
            format!("invalid subject alternative name in {sans:?} (use IP addresses or DNS names)")
        })?;
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("cannot generate a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("cannot sign the certificate for {cn}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issue a certificate and write it as `dir/NAME.crt` and `dir/NAME.key` (0600).
    pub fn issue_to(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        sans: &[String],
        usage: Usage,
        validity: std::time::Duration,
    ) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.issue(cn, sans, usage, validity)?;
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        write_secret(&key_path, &key)?;
        write_public(&cert_path, &cert)?;
        Ok((cert_path, key_path))
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: std::time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::seconds(validity.as_secs() as i64);
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // positive, as RFC 5280 asks
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

/// Write a secret (a private key) with mode 0600, replacing the file atomically.
pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
    write_mode(path, contents, 0o600)
}

/// Write a public file (a certificate) with mode 0644, replacing the file atomically.
pub fn write_public(path: &Path, contents: &str) -> Result<()> {
    write_mode(path, contents, 0o644)
}

fn write_mode(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode above only applies to new files; make sure of it.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn ca_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "test-ca").unwrap();
        let mode = fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let again = Ca::load_or_create(dir.path(), "ignored").unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path(), "test-ca").unwrap();
        fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let err = Ca::load_or_create(dir.path(), "test-ca")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ca.key"), "{err}");
    }

    #[test]
    fn leaf_has_sans_usage_and_is_signed_by_the_reloaded_ca() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path(), "etcd-ca").unwrap();
        let ca = Ca::load_or_create(dir.path(), "etcd-ca").unwrap();
        let sans = vec![
            "10.77.0.101".to_string(),
            "master1".to_string(),
            "127.0.0.1".to_string(),
        ];
        let (cert_path, key_path) = ca
            .issue_to(
                dir.path(),
                "peer",
                "master1",
                &sans,
                Usage::Peer,
                std::time::Duration::from_secs(365 * 86400),
            )
            .unwrap();
        assert_eq!(
            fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let pem = fs::read(&cert_path).unwrap();
        let (_, p) = parse_x509_pem(&pem).unwrap();
        let cert = p.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|g| match g {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => ip
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join("."),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, vec!["10.77.0.101", "master1", "127.0.0.1"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.is_ca());

        let ca_pem = fs::read(dir.path().join(CA_CERT)).unwrap();
        let (_, ca_p) = parse_x509_pem(&ca_pem).unwrap();
        let ca_cert = ca_p.parse_x509().unwrap();
        assert!(ca_cert.is_ca());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn usages_differ() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "ca").unwrap();
        for (usage, server, client) in [(Usage::Server, true, false), (Usage::Client, false, true)]
        {
            let (pem, _) = ca
                .issue(
                    "x",
                    &["x.local".into()],
                    usage,
                    std::time::Duration::from_secs(86400),
                )
                .unwrap();
            let (_, p) = parse_x509_pem(pem.as_bytes()).unwrap();
            let cert = p.parse_x509().unwrap();
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert_eq!((eku.server_auth, eku.client_auth), (server, client));
        }
    }
}

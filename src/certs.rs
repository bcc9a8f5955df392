//! `hakube certs check` and `hakube certs renew`: every certificate hakube issued, what the live
//! endpoints serve, and renewal one host at a time.
//!
//! The certificates live in the operator state (`.hakube/<cluster>/pki`); apply copies them to
//! the hosts. Renewing retires the expiring ones from the state (moved aside, never deleted),
//! and the normal apply path then issues new ones, copies them, and restarts etcd members and
//! API servers one at a time behind health gates.
//!
//! With `bootstrap: kubeadm`, [`kubeadm`] adds what kubeadm keeps on each control plane and the
//! client certificates in kubeconfigs, and renews them one control plane at a time.

pub mod kubeadm;

use crate::spec::{Bootstrap, Cluster};
use crate::state::State;
use crate::status::Cert as Served;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One certificate kept in the operator state.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    /// `etcd/master1-server`, `cluster/ca`, ...
    pub name: String,
    pub path: PathBuf,
    pub is_ca: bool,
    pub not_after: String,
    pub not_after_unix: i64,
    pub seconds_left: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
    pub fix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kept: Vec<Kept>,
    pub served: Vec<Served>,
    /// `kubeadm certs check-expiration` on each control plane (kubeadm clusters).
    pub kubeadm: Vec<kubeadm::OnHost>,
    /// Client certificates in the operator's kubeconfigs (kubeadm clusters).
    pub kubeconfigs: Vec<kubeadm::OnHost>,
    pub findings: Vec<Finding>,
    pub within_seconds: u64,
}

impl Report {
    /// 0 nothing to do, 1 something inside the threshold or not served yet, 2 expired.
    pub fn exit_code(&self) -> i32 {
        match self.findings.iter().map(|f| f.severity).max() {
            Some(Severity::Critical) => 2,
            Some(Severity::Warning) => 1,
            _ => 0,
        }
    }
}

/// `12 days left`, or `42 minutes left` inside a day.
fn left_words(seconds: i64) -> String {
    let days = seconds.div_euclid(86400);
    if days > 0 {
        format!("{days} days left")
    } else {
        format!("{} minutes left", seconds / 60)
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Expiry of a PEM certificate: (not_after as text, as unix seconds, is a CA).
pub fn expiry(pem: &str) -> Result<(String, i64, bool)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let x = p
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let na = x.validity().not_after;
    Ok((na.to_string(), na.timestamp(), x.is_ca()))
}

/// Every certificate in the state's pki folder (`<sub>/<name>.crt`), sorted by name.
pub fn kept(state: &State) -> Result<Vec<Kept>> {
    let pki = state.dir().join("pki");
    let now = now_unix();
    let mut out = vec![];
    for sub in ["etcd", "cluster"] {
        let dir = pki.join(sub);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "crt") {
                continue;
            }
            let pem =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let (not_after, unix, is_ca) =
                expiry(&pem).with_context(|| format!("{}", p.display()))?;
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
            out.push(Kept {
                name: format!("{sub}/{stem}"),
                path: p.clone(),
                is_ca,
                not_after,
                not_after_unix: unix,
                seconds_left: unix - now,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The kept certificate a live endpoint should serve: `<host>-apiserver` for the lab API
/// server, `<host>-server` for etcd's client port, `<host>-peer` for its peer port.
fn kept_for<'a>(kept: &'a [Kept], s: &Served) -> Option<&'a Kept> {
    let name = match s.name.as_str() {
        "apiserver" => format!("cluster/{}-apiserver", s.host),
        "etcd-server" => format!("etcd/{}-server", s.host),
        "etcd-peer" => format!("etcd/{}-peer", s.host),
        _ => return None,
    };
    kept.iter().find(|k| k.name == name)
}

/// The findings: expired or expiring certificates, and renewed ones not served yet.
pub fn findings(kept: &[Kept], served: &[Served], within: Duration) -> Vec<Finding> {
    let within = within.as_secs() as i64;
    let mut out = vec![];
    for k in kept {
        let fix = if k.is_ca {
            "hakube does not rotate CAs yet: plan a CA rotation (apply --replace-ca, with downtime)"
                .to_string()
        } else {
            "hakube certs renew -f SPEC".to_string()
        };
        if k.seconds_left <= 0 {
            out.push(Finding {
                severity: Severity::Critical,
                what: format!("{} expired on {}", k.name, k.not_after),
                fix,
            });
        } else if k.seconds_left <= within {
            out.push(Finding {
                severity: Severity::Warning,
                what: format!(
                    "{} expires on {} ({})",
                    k.name,
                    k.not_after,
                    left_words(k.seconds_left)
                ),
                fix,
            });
        }
    }
    for s in served {
        let Some(k) = kept_for(kept, s) else { continue };
        // The endpoint serves an older certificate than the one kept (and copied): renewed,
        // but the service was not restarted yet.
        let served_unix = now_unix() + s.seconds_left;
        if (k.not_after_unix - served_unix).abs() > 60 {
            out.push(Finding {
                severity: Severity::Warning,
                what: format!(
                    "{} on {} serves a certificate valid until {}, but {} is valid until {}: \
                     renewed, not served yet",
                    s.name, s.host, s.not_after, k.name, k.not_after
                ),
                fix: "hakube apply -f SPEC (etcd loads it on the next connection; an API server \
                      restarts, one host at a time)"
                    .into(),
            });
        }
        if s.seconds_left <= 0 {
            out.push(Finding {
                severity: Severity::Critical,
                what: format!("{} on {} serves an expired certificate", s.name, s.host),
                fix: "hakube certs renew -f SPEC".into(),
            });
        }
    }
    out
}

/// Look at everything: the state's certificates and what the live endpoints serve, and with
/// kubeadm what it reports on each control plane and the admin kubeconfig's client certificate.
pub async fn check(c: &Cluster, within: Duration) -> Result<Report> {
    let state = State::open(c)?;
    let kept = kept(&state)?;
    let tls = state.operator_etcd_tls()?;
    let served = crate::status::probes::certs(c, state.api_ca_pem().as_deref(), &tls).await;
    let mut findings = findings(&kept, &served, within);
    let (kubeadm, kubeconfigs) = if c.kubernetes.bootstrap == Bootstrap::Kubeadm {
        let (k, kc, problems) = kubeadm::check(c).await;
        findings.extend(problems);
        findings.extend(kubeadm::findings(&k, within));
        findings.extend(kubeadm::findings(&kc, within));
        (k, kc)
    } else {
        (vec![], vec![])
    };
    Ok(Report {
        kept,
        served,
        kubeadm,
        kubeconfigs,
        findings,
        within_seconds: within.as_secs(),
    })
}

/// The leaves to issue again: those that expire within `within`, or all with `None`. CAs are
/// never among them.
pub fn due(kept: &[Kept], within: Option<Duration>) -> std::collections::BTreeSet<String> {
    kept.iter()
        .filter(|k| !k.is_ca)
        .filter(|k| within.is_none_or(|w| k.seconds_left <= w.as_secs() as i64))
        .map(|k| k.name.clone())
        .collect()
}

/// The report as a table.
pub fn render_text(r: &Report) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec!["certificate", "where", "expires", "left"]);
    let left = |s: i64| {
        if s <= 0 {
            "EXPIRED".to_string()
        } else if s >= 86400 {
            format!("{} d", s / 86400)
        } else {
            format!("{} min", s / 60)
        }
    };
    for k in &r.kept {
        t.add_row(vec![
            k.name.clone(),
            "operator state".into(),
            k.not_after.clone(),
            left(k.seconds_left),
        ]);
    }
    for s in &r.served {
        t.add_row(vec![
            s.name.clone(),
            format!("served by {}", s.host),
            s.not_after.clone(),
            left(s.seconds_left),
        ]);
    }
    for c in r.kubeadm.iter().chain(&r.kubeconfigs) {
        let place = if c.host == "operator" {
            "kubeconfig (operator)".to_string()
        } else {
            format!("kubeadm on {}", c.host)
        };
        let name = if c.is_ca {
            format!("{} (CA)", c.name)
        } else {
            c.name.clone()
        };
        t.add_row(vec![
            name,
            place,
            c.not_after.clone().unwrap_or_else(|| "MISSING".into()),
            c.seconds_left.map(left).unwrap_or_default(),
        ]);
    }
    let mut out = format!("{t}\n");
    if r.findings.is_empty() {
        out.push_str(&format!(
            "every certificate is valid for more than {} days, and served\n",
            r.within_seconds / 86400
        ));
    }
    for f in &r.findings {
        let mark = match f.severity {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Ok => "ok",
        };
        out.push_str(&format!("{mark}: {}\n  fix: {}\n", f.what, f.fix));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn kept_one(name: &str, left: i64, is_ca: bool) -> Kept {
        Kept {
            name: name.into(),
            path: PathBuf::from(format!("/x/{name}.crt")),
            is_ca,
            not_after: "then".into(),
            not_after_unix: now_unix() + left,
            seconds_left: left,
        }
    }

    fn served(name: &str, host: &str, left: i64) -> Served {
        Served {
            name: name.into(),
            host: host.into(),
            not_after: "then".into(),
            seconds_left: left,
            days_left: left.div_euclid(86400),
        }
    }

    #[test]
    fn expired_expiring_and_fine() {
        let day = 86400;
        let kept = vec![
            kept_one("etcd/m1-server", -5, false),
            kept_one("etcd/m1-peer", 10 * day, false),
            kept_one("etcd/m2-peer", 300 * day, false),
            kept_one("etcd/ca", 3000 * day, true),
        ];
        let f = findings(&kept, &[], Duration::from_secs(30 * day as u64));
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(f[0].what.contains("m1-server expired"));
        assert_eq!(f[1].severity, Severity::Warning);
        assert!(f[1].what.contains("10 days left"), "{}", f[1].what);
        assert!(f[1].fix.contains("certs renew"));
    }

    #[test]
    fn a_renewed_certificate_not_served_yet_is_a_finding() {
        let day = 86400;
        let kept = vec![kept_one("cluster/m1-apiserver", 365 * day, false)];
        let old = served("apiserver", "m1", 600);
        let f = findings(&kept, &[old], Duration::from_secs(60));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].what.contains("not served yet"), "{}", f[0].what);
        let new = served("apiserver", "m1", 365 * day);
        assert!(findings(&kept, &[new], Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn renewing_issues_due_leaves_again_once_and_keeps_the_old_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let src = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed.yaml"),
        )
        .unwrap();
        let c = crate::spec::load_str(&src, "seed.yaml", tmp.path())
            .cluster
            .unwrap();
        let st = State::open_or_init(&c).unwrap();
        let first = st.operator_etcd_tls().unwrap();
        let kept_now = kept(&st).unwrap();
        // Nothing expires within a day; --all picks the leaf and never a CA.
        assert!(due(&kept_now, Some(Duration::from_secs(86400))).is_empty());
        let all = due(&kept_now, None);
        assert_eq!(all.iter().collect::<Vec<_>>(), vec!["etcd/hakube-operator"]);
        let st = State::open_or_init(&c).unwrap().renewing(all);
        let second = st.operator_etcd_tls().unwrap();
        assert_ne!(first.cert_pem, second.cert_pem, "issued again");
        assert_eq!(
            st.operator_etcd_tls().unwrap().cert_pem,
            second.cert_pem,
            "once"
        );
        assert!(st.dir().join("pki/retired").exists(), "the old one is kept");
        // A dry-run issues in memory and moves nothing.
        let plan = State::plan(&c)
            .unwrap()
            .renewing(due(&kept(&st).unwrap(), None));
        let third = plan.operator_etcd_tls().unwrap();
        assert_ne!(third.cert_pem, second.cert_pem);
        assert_eq!(
            std::fs::read_to_string(st.dir().join("pki/etcd/hakube-operator.crt")).unwrap(),
            second.cert_pem
        );
    }
}

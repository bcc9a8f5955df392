//! `spec.pki`.

use super::field;
use crate::spec::cluster::*;
use crate::spec::diag::Diagnostics;
use crate::spec::model;
use std::time::Duration;

/// Leaf certificates last between a minute (tests) and the CAs' ten years.
pub(super) fn pki(p: &model::Pki, d: &mut Diagnostics) -> Option<Pki> {
    const PATH: &str = "spec.pki.certificateValidity";
    let raw = p.certificate_validity.as_deref().unwrap_or("365d");
    let v = field::duration(d, PATH, Some(raw), "365d", "365d or 10m")?;
    if v < Duration::from_secs(60) || v > Duration::from_secs(3650 * 86400) {
        d.error(
            PATH,
            format!("{raw} is outside 1m-3650d"),
            "leaf certificates must outlive a renewal (at least 1m) and not the CAs (10 years); 365d is usual",
        );
        return None;
    }
    if v < Duration::from_secs(7 * 86400) {
        d.warn(
            PATH,
            format!("certificates last only {raw}"),
            "fine for tests; in production renew with `hakube certs renew` well before they expire, or use 365d",
        );
    }
    Some(Pki {
        certificate_validity: v,
    })
}

//! `spec.monitoring`.

use super::field;
use crate::spec::cluster::*;
use crate::spec::diag::Diagnostics;
use crate::spec::model;
use std::time::Duration;

/// Label names and values as Kubernetes takes them; an interval Prometheus can keep.
pub(super) fn monitoring(m: &model::Monitoring, d: &mut Diagnostics) -> Option<Monitoring> {
    let mut ok = true;
    for (k, v) in &m.labels {
        let name = k.rsplit('/').next().unwrap_or(k);
        let valid = |s: &str, max: usize| {
            s.len() <= max
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
                && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
        };
        if name.is_empty() || !valid(name, 63) || !valid(v, 63) {
            ok = false;
            d.error(
                format!("spec.monitoring.labels.{k}"),
                format!("{k}: {v} is not a Kubernetes label"),
                "names and values are at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            );
        }
    }
    let exporter_raw = m.exporter.as_deref().unwrap_or(EXPORTER_ADDR);
    let exporter = match exporter_raw.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(a),
        Err(e) => {
            d.error(
                "spec.monitoring.exporter",
                format!("{exporter_raw} is not an address and port: {e}"),
                "write it like 127.0.0.1:9468 or [::1]:9468",
            );
            None
        }
    };
    let raw = m.scrape_interval.as_deref().unwrap_or("15s");
    let scrape_interval = match field::parse_duration(raw) {
        Ok(v) if v >= Duration::from_secs(1) && v <= Duration::from_secs(300) => Some(v),
        Ok(_) => {
            d.error(
                "spec.monitoring.scrapeInterval",
                format!("{raw} is outside 1s-5m"),
                "15s is usual; the lab uses 1s so drills see alerts fire",
            );
            None
        }
        Err(e) => {
            d.error(
                "spec.monitoring.scrapeInterval",
                format!("not a duration: {e}"),
                "write it like 15s",
            );
            None
        }
    };
    if let Some(u) = &m.prometheus_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        ok = false;
        d.error(
            "spec.monitoring.prometheusUrl",
            format!("{u} is not an http(s) URL"),
            "write it like http://prometheus.example:9090",
        );
    }
    if !ok {
        return None;
    }
    Some(Monitoring {
        labels: m.labels.clone(),
        namespace: m.namespace.clone().unwrap_or_else(|| "monitoring".into()),
        exporter: exporter?,
        etcd_cert_dir: m
            .etcd_cert_dir
            .clone()
            .unwrap_or_else(|| ETCD_CERT_DIR.into()),
        scrape_interval: scrape_interval?,
        prometheus_url: m
            .prometheus_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
    })
}

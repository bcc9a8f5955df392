//! Numbers the spec accepts must fit what the rendered files' readers accept: HAProxy's timers
//! and counters, etcd's millisecond flags, and ports.

use super::cluster::{Etcd, Kubernetes, LoadBalancer};
use super::diag::Diagnostics;
use std::time::Duration;

/// HAProxy refuses a timer above 2147483647 ms ("timer overflow", about 24.8 days).
pub const HAPROXY_MAX_TIMER: Duration = Duration::from_millis(i32::MAX as u64);
/// HAProxy reads `fall` and `rise` as a C int; larger values wrap and are refused.
pub const HAPROXY_MAX_COUNT: u32 = i32::MAX as u32;
/// etcd refuses an election timeout of 50 s or more.
pub const ETCD_MAX_ELECTION: Duration = Duration::from_secs(50);

fn timer(d: &mut Diagnostics, path: &str, what: &str, v: Duration, max: Duration) {
    if v.subsec_nanos() % 1_000_000 != 0 {
        d.error(
            path,
            format!(
                "{} is not a whole number of milliseconds; {what} takes milliseconds, so it would be cut to {} ms",
                humantime::format_duration(v),
                v.as_millis()
            ),
            "write it in whole milliseconds, for example 400ms",
        );
    } else if v > max {
        d.error(
            path,
            format!(
                "{} is more than {what} accepts ({})",
                humantime::format_duration(v),
                humantime::format_duration(max)
            ),
            "use a value within that limit",
        );
    }
}

/// Check what validation accepted against the readers' limits.
pub fn check(
    lb: Option<&LoadBalancer>,
    etcd: Option<&Etcd>,
    k8s: Option<&Kubernetes>,
    d: &mut Diagnostics,
) {
    let hc_path = "spec.loadBalancer.healthCheck";
    let mut ports: Vec<(String, u16)> = Vec::new();
    if let Some(lb) = lb {
        let hc = &lb.health_check;
        for (f, v) in [
            ("interval", hc.interval),
            ("timeout", hc.timeout),
            ("connectTimeout", hc.connect_timeout),
        ] {
            timer(
                d,
                &format!("{hc_path}.{f}"),
                "HAProxy",
                v,
                HAPROXY_MAX_TIMER,
            );
        }
        for (f, v) in [("fall", hc.fall), ("rise", hc.rise)] {
            if v > HAPROXY_MAX_COUNT {
                d.error(
                    format!("{hc_path}.{f}"),
                    format!("{f} {v} is more than HAProxy accepts ({HAPROXY_MAX_COUNT})"),
                    "2 or 3 is a good value",
                );
            }
        }
        let l = "spec.loadBalancer";
        ports.extend([
            (format!("{l}.apiPort"), lb.api_port),
            (format!("{l}.vrrp.trackPort"), lb.vrrp.track_port),
        ]);
        if lb.stats.enabled {
            ports.push((format!("{l}.stats.port"), lb.stats.port));
        }
        if lb.metrics.enabled {
            ports.push((format!("{l}.metrics.port"), lb.metrics.port));
        }
        if let Some(i) = &lb.ingress {
            ports.extend([
                (format!("{l}.ingress.httpPort"), i.http_port),
                (format!("{l}.ingress.httpsPort"), i.https_port),
                (format!("{l}.ingress.httpNodePort"), i.http_node_port),
                (format!("{l}.ingress.httpsNodePort"), i.https_node_port),
            ]);
        }
    }
    if let Some(e) = etcd {
        timer(
            d,
            "spec.etcd.heartbeatInterval",
            "etcd",
            e.heartbeat_interval,
            ETCD_MAX_ELECTION,
        );
        timer(
            d,
            "spec.etcd.electionTimeout",
            "etcd",
            e.election_timeout,
            ETCD_MAX_ELECTION - Duration::from_millis(1),
        );
        ports.extend([
            ("spec.etcd.clientPort".to_string(), e.client_port),
            ("spec.etcd.peerPort".to_string(), e.peer_port),
        ]);
    }
    if let Some(k) = k8s {
        ports.push(("spec.kubernetes.apiServerPort".into(), k.api_server_port));
    }
    for (path, p) in ports {
        if p == 0 {
            d.error(
                path,
                "port 0 is not a port anything can listen on or connect to",
                "pick a port in 1-65535",
            );
        }
    }
}

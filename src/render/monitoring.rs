//! Monitoring: Prometheus alert rules (plain and as a PrometheusRule), scrape configs for
//! HAProxy's built-in exporter and etcd, and the etcd ServiceMonitor for prometheus-operator.

use super::{CLUSTER_DIR, HEADER, RenderedFile};
use crate::observe::API_BACKEND;
use crate::spec::{Cluster, EtcdManagement};
use serde_json::{Value, json};

pub const DIR: &str = "/monitoring";
pub const RULES_FILE: &str = "hakube-alerts.rules.yml";

fn rule(
    alert: &str,
    expr: &str,
    for_: &str,
    severity: &str,
    summary: &str,
    description: &str,
) -> Value {
    json!({
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    })
}

/// The alert rule groups. `hakube_*` metrics come from `hakube status --prometheus`.
pub fn rule_groups() -> Value {
    json!([
        {"name": "etcd", "rules": [
            rule("EtcdMemberDown", "up{job=\"etcd\"} == 0", "5m", "critical",
                "etcd member is down",
                "etcd member {{ $labels.instance }} is down for more than 5 minutes."),
            rule("EtcdHighCommitDurations",
                "histogram_quantile(0.99, sum(rate(etcd_disk_backend_commit_duration_seconds_bucket{job=\"etcd\"}[5m])) by (instance, le)) > 0.25",
                "10m", "warning", "etcd high commit durations",
                "etcd commit durations are high on {{ $labels.instance }} (p99 {{ $value | printf \"%.2f\" }}s); check disk latency."),
            rule("EtcdNoLeader", "etcd_server_has_leader{job=\"etcd\"} == 0", "1m", "critical",
                "etcd member has no leader",
                "etcd member {{ $labels.instance }} has had no leader for 1 minute: it cannot serve writes."),
            rule("EtcdInsufficientMembers",
                "sum by (job) (up{job=\"etcd\"} == bool 1) < ((count by (job) (up{job=\"etcd\"}) + 1) / 2)",
                "1m", "critical", "etcd has lost quorum",
                "Fewer than a majority of etcd members are up: the cluster cannot accept writes."),
            rule("EtcdHighNumberOfLeaderChanges",
                "increase(etcd_server_leader_changes_seen_total{job=\"etcd\"}[15m]) >= 4",
                "5m", "warning", "etcd leader changes too often",
                "etcd member {{ $labels.instance }} saw {{ $value }} leader changes in 15 minutes; check the network and disk between members."),
            rule("EtcdDatabaseQuotaLowSpace",
                "(last_over_time(etcd_mvcc_db_total_size_in_bytes{job=\"etcd\"}[5m]) / last_over_time(etcd_server_quota_backend_bytes{job=\"etcd\"}[5m])) * 100 > 80",
                "10m", "warning", "etcd database is near its quota",
                "etcd member {{ $labels.instance }} uses {{ $value }}% of its quota; at 100% it raises NOSPACE and refuses writes. Compact and defragment."),
        ]},
        {"name": "haproxy", "rules": [
            rule("HAProxyDown", "up{job=\"haproxy\"} == 0", "1m", "critical",
                "HAProxy is down", "HAProxy on {{ $labels.instance }} does not answer its metrics endpoint."),
            rule("HAProxyAPIServerDown",
                &format!("haproxy_server_status{{proxy=\"{API_BACKEND}\",state=\"DOWN\"}} == 1"),
                "1m", "warning", "an API server is out of rotation",
                "HAProxy on {{ $labels.instance }} marks API server {{ $labels.server }} DOWN (GET /readyz fails)."),
            rule("HAProxyAPIBackendDown",
                &format!("haproxy_backend_active_servers{{proxy=\"{API_BACKEND}\"}} == 0"),
                "30s", "critical", "no API server is in rotation",
                "HAProxy on {{ $labels.instance }} has no ready API server: the API is down through the VIP."),
        ]},
        {"name": "hakube", "rules": [
            rule("HakubeVIPSplitBrain", "hakube_vip_holders > 1", "10s", "critical",
                "the API VIP is on more than one load balancer",
                "{{ $value }} load balancers hold the VIP of cluster {{ $labels.cluster }} (split brain); check VRRP traffic between them."),
            rule("HakubeVIPMissing", "hakube_vip_holders == 0", "30s", "critical",
                "no load balancer holds the API VIP",
                "No load balancer holds the VIP of cluster {{ $labels.cluster }}; check keepalived on the load balancers."),
            rule("HakubeCertificateExpirySoon", "hakube_certificate_expiry_seconds < 30 * 86400", "1h", "warning",
                "a certificate expires within 30 days",
                "{{ $labels.certificate }} on {{ $labels.host }} expires in less than 30 days; run `kubeadm certs renew` or `hakube apply`."),
            rule("HakubeCertificateExpiryCritical", "hakube_certificate_expiry_seconds < 7 * 86400", "10m", "critical",
                "a certificate expires within 7 days",
                "{{ $labels.certificate }} on {{ $labels.host }} expires in less than 7 days."),
        ]},
    ])
}

/// Backups: no verified backup for `spec.backup.maxAge` (25 h by default), from any source, or
/// no backup metric at all for as long. `hakube_backup_*` come from `hakube status --prometheus`.
pub fn backup_rules(max_age: std::time::Duration) -> Value {
    let s = max_age.as_secs();
    let h = if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else {
        humantime::format_duration(max_age).to_string()
    };
    json!({"name": "hakube-backup", "rules": [
        rule("HakubeBackupTooOld",
            &format!("time() - max by (cluster) (hakube_backup_last_verified_timestamp_seconds) > {s}"),
            "10m", "warning", "no verified backup for too long",
            &format!("The newest verified backup of cluster {{{{ $labels.cluster }}}} is {{{{ $value | humanizeDuration }}}} old (more than {h}); run `hakube backup` and check the scheduled backups with `hakube doctor`.")),
        rule("HakubeBackupMissing",
            "absent(hakube_backup_last_verified_timestamp_seconds)",
            &format!("{s}s"), "warning", "no verified backup is known",
            &format!("No source has reported a verified backup for {h}: none was taken, or `hakube status --prometheus` is not collected; run `hakube backup`.")),
    ]})
}

fn yaml(v: &Value) -> anyhow::Result<String> {
    Ok(format!("# {HEADER}\n{}", serde_saphyr::to_string(v)?))
}

fn f(name: &str, content: String) -> RenderedFile {
    RenderedFile {
        host: CLUSTER_DIR.into(),
        path: format!("{DIR}/{name}"),
        mode: 0o644,
        content,
        secret: false,
        services: vec![],
        ..Default::default()
    }
}

pub fn render(c: &Cluster) -> anyhow::Result<Vec<RenderedFile>> {
    let mut groups = rule_groups();
    if let Some(g) = groups.as_array_mut() {
        g.push(backup_rules(c.backup.max_age));
    }
    let mut out = vec![f(RULES_FILE, yaml(&json!({"groups": groups}))?)];
    out.push(f(
        "prometheusrule.yaml",
        yaml(&json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": format!("{}-ha", c.name), "namespace": "monitoring"},
            "spec": {"groups": groups},
        }))?,
    ));
    let port = |a: std::net::IpAddr, p: u16| format!("{}:{p}", super::bind_addr(a));
    let haproxy_targets: Vec<String> = if c.lb.metrics.enabled {
        c.load_balancers()
            .map(|h| port(h.address, c.lb.metrics.port))
            .collect()
    } else {
        vec![]
    };
    let etcd_targets: Vec<String> = c
        .control_planes()
        .map(|h| port(h.address, c.etcd.client_port))
        .collect();
    let mut scrape = vec![json!({
        "job_name": "etcd",
        "scheme": "https",
        "tls_config": {
            "ca_file": "/etc/prometheus/secrets/etcd-certs/ca.crt",
            "cert_file": "/etc/prometheus/secrets/etcd-certs/client.crt",
            "key_file": "/etc/prometheus/secrets/etcd-certs/client.key",
        },
        "static_configs": [{"targets": etcd_targets, "labels": {"cluster": c.name}}],
    })];
    if !haproxy_targets.is_empty() {
        scrape.push(json!({
            "job_name": "haproxy",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": haproxy_targets, "labels": {"cluster": c.name}}],
        }));
    }
    out.push(f(
        "prometheus.yml",
        yaml(&json!({
            "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
            "rule_files": [RULES_FILE],
            "scrape_configs": scrape,
        }))?,
    ));
    if c.etcd.management == EtcdManagement::Hakube {
        // etcd runs outside Kubernetes: a selector-less Service and its endpoints give the
        // ServiceMonitor something to select.
        let addrs: Vec<String> = c.control_planes().map(|h| h.address.to_string()).collect();
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "etcd", "namespace": "kube-system", "labels": {"component": "etcd"}},
            "spec": {"clusterIP": "None", "ports": [{"name": "http-metrics", "port": c.etcd.client_port, "targetPort": c.etcd.client_port}]},
        });
        let eps = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "etcd", "namespace": "kube-system",
                "labels": {"component": "etcd", "kubernetes.io/service-name": "etcd"}},
            "addressType": if c.lb.vip.is_ipv6() { "IPv6" } else { "IPv4" },
            "ports": [{"name": "http-metrics", "port": c.etcd.client_port}],
            "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
        });
        out.push(f(
            "etcd-endpoints.yaml",
            format!("{}---\n{}", yaml(&svc)?, serde_saphyr::to_string(&eps)?),
        ));
    }
    out.push(f(
        "servicemonitor-etcd.yaml",
        yaml(&json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "etcd", "namespace": "monitoring"},
            "spec": {
                "namespaceSelector": {"matchNames": ["kube-system"]},
                "selector": {"matchLabels": {"component": "etcd"}},
                "endpoints": [{
                    "port": "http-metrics",
                    "interval": "30s",
                    "scheme": "https",
                    "tlsConfig": {
                        "caFile": "/etc/prometheus/secrets/etcd-certs/ca.crt",
                        "certFile": "/etc/prometheus/secrets/etcd-certs/client.crt",
                        "keyFile": "/etc/prometheus/secrets/etcd-certs/client.key",
                        "insecureSkipVerify": false,
                    },
                }],
            },
        }))?,
    ));
    Ok(out)
}

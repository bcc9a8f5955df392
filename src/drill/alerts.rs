//! With a Prometheus that runs the rendered rules (`spec.monitoring.prometheusUrl`), each drill
//! reads `/api/v1/alerts` while it runs and records when its expected alerts went pending,
//! fired and resolved, relative to the injection. A drill whose expected alert never fired
//! has failed: the monitoring would have missed the fault.

use super::scenario::Scenario;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the alerts are read.
const POLL: Duration = Duration::from_millis(250);

/// The alerts a scenario must raise.
pub fn expected(sc: Scenario) -> &'static [&'static str] {
    match sc {
        Scenario::EtcdMemberDown | Scenario::EtcdLeaderLoss => &["EtcdMemberDown"],
        // The VIP holder's HAProxy stops (or the whole host goes): its exporter is down and the
        // VIP moves to the other LB.
        Scenario::LbFailover | Scenario::LbHostLoss => &["HAProxyDown", "HakubeVIPMoved"],
        Scenario::ApiserverDown | Scenario::ControlPlanePartition => &["HAProxyAPIServerDown"],
        Scenario::WorkerLoss | Scenario::Soak => &[],
    }
}

/// One alert's life during a drill, in ms since the injection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AlertTiming {
    pub alert: String,
    pub expected: bool,
    /// Active already before the fault (from an earlier one): its times say little.
    pub active_before: bool,
    pub pending_ms: Option<f64>,
    pub firing_ms: Option<f64>,
    pub resolved_ms: Option<f64>,
}

#[derive(Default)]
struct Seen {
    timings: BTreeMap<String, AlertTiming>,
    last_error: Option<String>,
}

/// Polls Prometheus in the background.
pub struct Watch {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
    inject: Arc<Mutex<Option<Instant>>>,
}

fn ms(t: Instant, since: Option<Instant>) -> Option<f64> {
    since.map(|s| {
        if t >= s {
            (t - s).as_secs_f64() * 1000.0
        } else {
            -((s - t).as_secs_f64() * 1000.0)
        }
    })
}

/// Alert name -> "pending" or "firing" (the furthest state of any of its series).
fn parse(body: &str) -> Result<BTreeMap<String, String>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let mut out = BTreeMap::new();
    for a in v["data"]["alerts"].as_array().ok_or("no data.alerts")? {
        let (Some(name), Some(state)) = (a["labels"]["alertname"].as_str(), a["state"].as_str())
        else {
            continue;
        };
        let e = out.entry(name.to_string()).or_insert_with(String::new);
        if e.as_str() != "firing" {
            *e = state.to_string();
        }
    }
    Ok(out)
}

impl Watch {
    pub fn start(url: &str, sc: Scenario) -> Watch {
        let seen = Arc::new(Mutex::new(Seen::default()));
        {
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            for a in expected(sc) {
                s.timings.insert(
                    a.to_string(),
                    AlertTiming {
                        alert: a.to_string(),
                        expected: true,
                        ..Default::default()
                    },
                );
            }
        }
        let inject: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let url = format!("{url}/api/v1/alerts");
        let (s2, i2) = (seen.clone(), inject.clone());
        let task = tokio::spawn(async move {
            let mut active: BTreeMap<String, String> = BTreeMap::new();
            loop {
                let got = crate::lab::monitoring::get(&url, Duration::from_secs(2))
                    .await
                    .map_err(|e| format!("{e:#}"))
                    .and_then(|b| parse(&b));
                let now = Instant::now();
                let inj = *i2.lock().unwrap_or_else(|e| e.into_inner());
                {
                    let mut s = s2.lock().unwrap_or_else(|e| e.into_inner());
                    match got {
                        Err(e) => s.last_error = Some(e),
                        Ok(cur) => {
                            for (name, state) in &cur {
                                // Only the expected ones, and those that start after the injection.
                                let Some(t) = s.timings.get_mut(name) else {
                                    continue;
                                };
                                if inj.is_none() {
                                    t.active_before = true;
                                    continue;
                                }
                                if t.pending_ms.is_none() {
                                    t.pending_ms = ms(now, inj);
                                }
                                if state == "firing" && t.firing_ms.is_none() {
                                    t.firing_ms = ms(now, inj);
                                }
                            }
                            for name in active.keys() {
                                if !cur.contains_key(name)
                                    && let Some(t) = s.timings.get_mut(name)
                                    && t.firing_ms.is_some()
                                    && t.resolved_ms.is_none()
                                {
                                    t.resolved_ms = ms(now, inj);
                                }
                            }
                            if inj.is_none() {
                                // Before the fault, an alert that clears again no longer counts.
                                for t in s.timings.values_mut() {
                                    t.active_before = cur.contains_key(&t.alert);
                                }
                            }
                            active = cur;
                        }
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Watch { seen, task, inject }
    }

    pub fn injected(&self, at: Instant) {
        *self.inject.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    fn all(&self, f: impl Fn(&AlertTiming) -> bool) -> bool {
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        s.timings.values().filter(|t| t.expected).all(f)
    }

    pub fn all_fired(&self) -> bool {
        self.all(|t| t.firing_ms.is_some())
    }

    pub fn all_resolved(&self) -> bool {
        self.all(|t| t.firing_ms.is_none() || t.resolved_ms.is_some())
    }

    pub fn stop(&self) -> (Vec<AlertTiming>, Option<String>) {
        self.task.abort();
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        (s.timings.values().cloned().collect(), s.last_error.clone())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the monitoring failed the drill, if it did.
pub fn missed(timings: &[AlertTiming], last_error: Option<&str>) -> Option<String> {
    let never: Vec<&str> = timings
        .iter()
        .filter(|t| t.expected && t.firing_ms.is_none())
        .map(|t| t.alert.as_str())
        .collect();
    if never.is_empty() {
        return None;
    }
    Some(format!(
        "expected alert{} {} never fired{}",
        if never.len() == 1 { "" } else { "s" },
        never.join(", "),
        last_error
            .map(|e| format!(" (last error reading Prometheus: {e})"))
            .unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_furthest_state_of_an_alert_wins() {
        let body = r#"{"status":"success","data":{"alerts":[
            {"labels":{"alertname":"HAProxyDown","instance":"a"},"state":"pending"},
            {"labels":{"alertname":"HAProxyDown","instance":"b"},"state":"firing"},
            {"labels":{"alertname":"EtcdMemberDown"},"state":"pending"}]}}"#;
        let m = parse(body).expect("parses");
        assert_eq!(m["HAProxyDown"], "firing");
        assert_eq!(m["EtcdMemberDown"], "pending");
        assert!(parse("{}").is_err());
    }

    #[test]
    fn an_expected_alert_that_never_fired_fails_the_drill() {
        let t = |name: &str, fired: bool| AlertTiming {
            alert: name.into(),
            expected: true,
            firing_ms: fired.then_some(1200.0),
            ..Default::default()
        };
        assert_eq!(missed(&[t("A", true)], None), None);
        let m = missed(&[t("A", true), t("B", false)], Some("refused")).expect("fails");
        assert!(m.contains("B never fired") && m.contains("refused"), "{m}");
    }
}

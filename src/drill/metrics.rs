//! What clients saw, computed from the probe's samples: pure functions, so they are unit-tested
//! without a cluster.

use serde::Serialize;
use std::collections::BTreeMap;

/// The two probe streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    /// A new TCP + TLS connection for every request.
    Fresh,
    /// One kept-alive connection, reopened only when it breaks.
    KeepAlive,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Fresh, Stream::KeepAlive];
    pub fn name(self) -> &'static str {
        match self {
            Stream::Fresh => "fresh",
            Stream::KeepAlive => "keep-alive",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `PUT /kv/KEY` with a unique key and value.
    Write,
    /// `GET /kv/KEY` of the stream's last acknowledged write; the value must match.
    Read,
    Readyz,
    Version,
}

/// One request of the probe.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub stream: Stream,
    pub kind: Kind,
    /// When the request started, in ms on the drill's clock.
    pub start_ms: f64,
    pub latency_ms: f64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A GET sent again on a new connection after the kept-alive one closed before any answer
    /// (what Go's net/http, and so kubectl and client-go, do; writes are not sent again).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retried: bool,
    /// The request opened a new connection (always for the fresh stream).
    pub new_connection: bool,
}

impl Sample {
    pub fn end_ms(&self) -> f64 {
        self.start_ms + self.latency_ms
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StreamStats {
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    /// Requests that succeeded only after a transparent retry on a new connection.
    pub retried: usize,
    /// Connections opened after the first one (keep-alive stream: reconnects).
    pub connections: usize,
    /// The longest time with no successful answer, from the last success before the fault to
    /// the end of the drill.
    pub longest_gap_ms: f64,
    /// Where that gap starts, in ms relative to the fault.
    pub longest_gap_from_ms: f64,
    /// The first success among requests started after the fault, relative to the fault.
    pub first_success_after_fault_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Metrics {
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    /// Client-visible downtime: the longest gap of the worse stream.
    pub downtime_ms: f64,
    pub downtime_stream: Option<Stream>,
    /// The first success after the fault on either stream, relative to the fault.
    pub first_success_after_fault_ms: Option<f64>,
    /// The first failed request (by start time) at or after the fault, relative to the fault.
    pub first_failure_after_fault_ms: Option<f64>,
    /// Latency of successful requests.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub streams: BTreeMap<Stream, StreamStats>,
}

/// Nearest-rank percentile of sorted values; 0 for none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The longest stretch without a successful answer in `[from, to]`, given the end times of
/// successes: (length, start). It starts at the last success at or before `from` (or `from`).
pub fn longest_gap(success_ends: &[f64], from: f64, to: f64) -> (f64, f64) {
    let mut ends: Vec<f64> = success_ends.to_vec();
    ends.sort_by(f64::total_cmp);
    let start = ends.iter().copied().rfind(|e| *e <= from).unwrap_or(from);
    let mut points = vec![start];
    points.extend(ends.iter().copied().filter(|e| *e > from && *e < to));
    points.push(to.max(start));
    points
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .fold((0.0, start), |best, g| if g.0 > best.0 { g } else { best })
}

/// Everything clients saw. `fault_ms` is when the fault was injected and `end_ms` when the probe
/// stopped, both on the drill's clock; results are relative to `fault_ms`.
pub fn compute(samples: &[Sample], fault_ms: f64, end_ms: f64) -> Metrics {
    let mut m = Metrics::default();
    let mut lat: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency_ms)
        .collect();
    lat.sort_by(f64::total_cmp);
    m.latency_p50_ms = percentile(&lat, 0.50);
    m.latency_p99_ms = percentile(&lat, 0.99);
    m.latency_max_ms = lat.last().copied().unwrap_or(0.0);
    m.requests = samples.len();
    m.ok = samples.iter().filter(|s| s.ok).count();
    m.failed = m.requests - m.ok;
    m.first_failure_after_fault_ms = samples
        .iter()
        .filter(|s| !s.ok && s.start_ms >= fault_ms)
        .map(|s| s.start_ms - fault_ms)
        .min_by(f64::total_cmp);
    for stream in Stream::ALL {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.stream == stream).collect();
        if mine.is_empty() {
            continue;
        }
        let ends: Vec<f64> = mine.iter().filter(|s| s.ok).map(|s| s.end_ms()).collect();
        let (gap, gap_from) = longest_gap(&ends, fault_ms, end_ms);
        let st = StreamStats {
            requests: mine.len(),
            ok: ends.len(),
            failed: mine.len() - ends.len(),
            retried: mine.iter().filter(|s| s.retried).count(),
            connections: mine.iter().filter(|s| s.new_connection).count(),
            longest_gap_ms: gap,
            longest_gap_from_ms: gap_from - fault_ms,
            first_success_after_fault_ms: mine
                .iter()
                .filter(|s| s.ok && s.start_ms >= fault_ms)
                .map(|s| s.end_ms() - fault_ms)
                .min_by(f64::total_cmp),
        };
        if st.longest_gap_ms > m.downtime_ms || m.downtime_stream.is_none() {
            m.downtime_ms = st.longest_gap_ms;
            m.downtime_stream = Some(stream);
        }
        m.first_success_after_fault_ms = match (
            m.first_success_after_fault_ms,
            st.first_success_after_fault_ms,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        m.streams.insert(stream, st);
    }
    m
}

/// Failed requests grouped into runs (consecutive failures of one stream with the same error),
/// for the timeline: (stream, first start, last end, count, error).
pub fn failure_runs(samples: &[Sample]) -> Vec<(Stream, f64, f64, usize, String)> {
    let mut runs: Vec<(Stream, f64, f64, usize, String)> = Vec::new();
    for stream in Stream::ALL {
        let mut mine: Vec<&Sample> = samples.iter().filter(|s| s.stream == stream).collect();
        mine.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        let mut current: Option<(Stream, f64, f64, usize, String)> = None;
        for s in mine {
            if s.ok {
                runs.extend(current.take());
                continue;
            }
            let why = s
                .error
                .clone()
                .or_else(|| s.status.map(|c| format!("HTTP {c}")))
                .unwrap_or_else(|| "failed".into());
            match &mut current {
                Some(r) if r.4 == why => {
                    r.2 = r.2.max(s.end_ms());
                    r.3 += 1;
                }
                _ => {
                    runs.extend(current.take());
                    current = Some((stream, s.start_ms, s.end_ms(), 1, why));
                }
            }
        }
        runs.extend(current);
    }
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(stream: Stream, start: f64, lat: f64, ok: bool) -> Sample {
        Sample {
            stream,
            kind: Kind::Write,
            start_ms: start,
            latency_ms: lat,
            ok,
            status: ok.then_some(200),
            error: (!ok).then(|| "connection refused".to_string()),
            retried: false,
            new_connection: stream == Stream::Fresh,
        }
    }

    /// A stream that answers every 50 ms, except for failures in [from, to).
    fn stream(stream: Stream, until: f64, fail: (f64, f64)) -> Vec<Sample> {
        (0..)
            .map(|i| i as f64 * 50.0)
            .take_while(|t| *t < until)
            .map(|t| s(stream, t, 5.0, !(t >= fail.0 && t < fail.1)))
            .collect()
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn gaps_start_at_the_last_success_before_the_fault_and_run_to_the_end() {
        // Successes at 10, 20, 30; fault at 25; nothing until 100.
        assert_eq!(longest_gap(&[10.0, 20.0, 30.0], 25.0, 100.0), (70.0, 30.0));
        // The gap that spans the fault counts from the last success before it.
        assert_eq!(longest_gap(&[10.0, 20.0, 80.0], 25.0, 90.0), (60.0, 20.0));
        // No success at all: the whole window.
        assert_eq!(longest_gap(&[], 25.0, 90.0), (65.0, 25.0));
    }

    #[test]
    fn an_outage_on_one_stream_is_the_downtime() {
        let mut v = stream(Stream::Fresh, 3000.0, (1000.0, 1600.0));
        v.extend(stream(Stream::KeepAlive, 3000.0, (0.0, 0.0)));
        let m = compute(&v, 1000.0, 3000.0);
        assert_eq!(m.failed, 12);
        assert_eq!(m.streams[&Stream::Fresh].failed, 12);
        assert_eq!(m.streams[&Stream::KeepAlive].failed, 0);
        // Last success ends at 955, next at 1605: 650 ms.
        assert_eq!(m.downtime_ms, 650.0);
        assert_eq!(m.downtime_stream, Some(Stream::Fresh));
        assert_eq!(m.streams[&Stream::Fresh].longest_gap_from_ms, -45.0);
        assert_eq!(m.first_failure_after_fault_ms, Some(0.0));
        // The keep-alive stream answered right after the fault.
        assert_eq!(m.first_success_after_fault_ms, Some(5.0));
        assert_eq!(
            m.streams[&Stream::Fresh].first_success_after_fault_ms,
            Some(605.0)
        );
        assert_eq!(m.latency_p50_ms, 5.0);
    }

    #[test]
    fn no_impact_means_a_gap_of_one_probe_interval() {
        let v = stream(Stream::KeepAlive, 2000.0, (0.0, 0.0));
        let m = compute(&v, 500.0, 2000.0);
        assert_eq!(m.failed, 0);
        assert_eq!(m.downtime_ms, 50.0);
        assert_eq!(m.first_failure_after_fault_ms, None);
    }

    #[test]
    fn failures_are_grouped_by_stream_and_error() {
        let mut v = stream(Stream::Fresh, 1000.0, (100.0, 300.0));
        v[5].error = Some("timed out".into());
        let runs = failure_runs(&v);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(
            (runs[0].3, runs[0].4.as_str(), runs[1].3, runs[1].4.as_str()),
            (3, "connection refused", 1, "timed out")
        );
    }
}

//! The drill chart, written as SVG text: request latency over time (log scale) for both probe
//! streams, failed requests in a lane of their own, the fault window shaded, and the VIP moves,
//! leader changes and HAProxy verdicts as marked lines.

use super::ScenarioReport;
use super::metrics::Stream;
use super::watch::Event;
use std::fmt::Write as _;

const W: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const PLOT_H: f64 = 300.0;
const FAIL_Y: f64 = TOP + PLOT_H + 30.0;
const H: f64 = FAIL_Y + 70.0;
/// Latency axis: 10^0 .. 10^4 ms.
const DECADES: f64 = 4.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(s: Stream) -> &'static str {
    match s {
        Stream::Fresh => "#1f77b4",
        Stream::KeepAlive => "#ff7f0e",
    }
}

/// A tick step (ms) that gives at most about 15 ticks over `span` ms.
fn tick_step(span: f64) -> f64 {
    [
        250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 30000.0, 60000.0, 120000.0,
    ]
    .into_iter()
    .find(|s| span / s <= 15.0)
    .unwrap_or(300000.0)
}

pub fn chart(r: &ScenarioReport) -> String {
    let x0 = r.probe_start_ms;
    let x1 = r.probe_end_ms.max(x0 + 1.0);
    let pw = W - LEFT - RIGHT;
    let px = |t: f64| LEFT + (t.clamp(x0, x1) - x0) / (x1 - x0) * pw;
    let py = |ms: f64| TOP + PLOT_H - ms.clamp(1.0, 10f64.powf(DECADES)).log10() / DECADES * PLOT_H;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    // Title.
    let fault = r.fault_text();
    let summary = match &r.metrics {
        Some(m) => format!(
            "downtime {:.2} s, {} of {} requests failed, {} lost writes",
            m.downtime_ms / 1000.0,
            m.failed,
            m.requests,
            r.lost_writes()
        ),
        None => String::new(),
    };
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">hakube drill {} — {}</text>"#,
        esc(r.scenario.name()),
        esc(&fault)
    );
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="38">{} (injected at {})</text>"#,
        esc(&summary),
        esc(r.injected_at.as_deref().unwrap_or("?"))
    );
    // Fault window and recovery.
    let fault_end = r.restored_after_ms.unwrap_or(x1);
    let _ = writeln!(
        o,
        r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#d62728" fill-opacity="0.12"/>"##,
        px(0.0),
        (px(fault_end) - px(0.0)).max(1.0),
        FAIL_Y + 15.0 - TOP
    );
    if let Some(rec) = r.recovered_after_ms {
        let _ = writeln!(
            o,
            r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#ffbf00" fill-opacity="0.15"/>"##,
            px(fault_end),
            (px(rec) - px(fault_end)).max(0.0),
            FAIL_Y + 15.0 - TOP
        );
    }
    // Axes and grid.
    for d in 0..=(DECADES as i32) {
        let ms = 10f64.powi(d);
        let y = py(ms);
        let label = if ms >= 1000.0 {
            format!("{} s", ms / 1000.0)
        } else {
            format!("{ms} ms")
        };
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let step = tick_step(x1 - x0);
    let mut t = (x0 / step).ceil() * step;
    while t <= x1 {
        let x = px(t);
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{:+.1} s</text>"##,
            FAIL_Y + 15.0,
            FAIL_Y + 32.0,
            t / 1000.0
        );
        t += step;
    }
    let _ = writeln!(
        o,
        r##"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">latency (log)</text><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#d62728">failed</text><text x="{:.1}" y="{:.1}" text-anchor="middle">time since the fault was injected</text>"##,
        TOP + PLOT_H / 2.0,
        TOP + PLOT_H / 2.0,
        LEFT - 6.0,
        FAIL_Y + 4.0,
        LEFT + pw / 2.0,
        FAIL_Y + 50.0
    );
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{PLOT_H}" fill="none" stroke="#999"/>"##
    );
    // Requests.
    for s in &r.samples {
        let x = px(s.start_ms);
        let c = color(s.stream);
        if s.ok {
            match s.stream {
                Stream::Fresh => {
                    let _ = writeln!(
                        o,
                        r#"<circle cx="{x:.1}" cy="{:.1}" r="2" fill="{c}"/>"#,
                        py(s.latency_ms)
                    );
                }
                Stream::KeepAlive => {
                    let _ = writeln!(
                        o,
                        r#"<rect x="{:.1}" y="{:.1}" width="4" height="4" fill="{c}"/>"#,
                        x - 2.0,
                        py(s.latency_ms) - 2.0
                    );
                }
            }
        } else {
            let y = FAIL_Y + if s.stream == Stream::Fresh { -5.0 } else { 5.0 };
            let _ = writeln!(
                o,
                r#"<path d="M{:.1} {:.1}l6 6m0 -6l-6 6" stroke="{c}" stroke-width="1.5"><title>{}</title></path>"#,
                x - 3.0,
                y - 3.0,
                esc(s.error.as_deref().unwrap_or("failed"))
            );
        }
    }
    // Events.
    let mut marks: Vec<(f64, &str, String)> = Vec::new();
    for c in &r.changes {
        match &c.event {
            Event::Vip { to, .. } => marks.push((c.t_ms, "#2ca02c", format!("VIP → {to}"))),
            Event::Leader { to, .. } => marks.push((c.t_ms, "#9467bd", format!("leader → {to}"))),
            // HAProxy's verdicts: marked DOWN, and UP again after DOWN.
            Event::Backend { from, to, .. }
                if (to.is_down() && !from.is_down()) || (to.is_up() && from.is_down()) =>
            {
                marks.push((c.t_ms, "#7f7f7f", format!("{} {to}", c.subject())))
            }
            Event::Backend { .. } => {}
        }
    }
    if let Some(t) = r.recovered_after_ms {
        marks.push((t, "#17becf", "recovered".into()));
    }
    for (i, (t, c, label)) in marks.iter().enumerate() {
        let x = px(*t);
        let y = TOP + 12.0 + (i % 6) as f64 * 12.0;
        let _ = writeln!(
            o,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" stroke="{c}" stroke-dasharray="4 3"/><text x="{:.1}" y="{y:.1}" fill="{c}" font-size="10">{}</text>"#,
            TOP + PLOT_H,
            x + 3.0,
            esc(label)
        );
    }
    // Legend.
    let ly = 56.0;
    let _ = writeln!(
        o,
        r##"<circle cx="{LEFT}" cy="{ly}" r="3" fill="{}"/><text x="{:.1}" y="{:.1}">new connection per request</text><rect x="{:.1}" y="{:.1}" width="5" height="5" fill="{}"/><text x="{:.1}" y="{:.1}">kept-alive connection</text><rect x="{:.1}" y="{:.1}" width="12" height="9" fill="#d62728" fill-opacity="0.2"/><text x="{:.1}" y="{:.1}">fault held</text><rect x="{:.1}" y="{:.1}" width="12" height="9" fill="#ffbf00" fill-opacity="0.3"/><text x="{:.1}" y="{:.1}">restored, recovering</text>"##,
        color(Stream::Fresh),
        LEFT + 8.0,
        ly + 4.0,
        LEFT + 190.0,
        ly - 2.5,
        color(Stream::KeepAlive),
        LEFT + 200.0,
        ly + 4.0,
        LEFT + 360.0,
        ly - 5.0,
        LEFT + 376.0,
        ly + 4.0,
        LEFT + 460.0,
        ly - 5.0,
        LEFT + 476.0,
        ly + 4.0
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::metrics::{Kind, Sample};

    #[test]
    fn ticks_stay_readable() {
        assert_eq!(tick_step(3000.0), 250.0);
        assert_eq!(tick_step(10000.0), 1000.0);
        assert_eq!(tick_step(60000.0), 5000.0);
    }

    #[test]
    fn the_chart_is_well_formed_and_escapes_text() {
        let mut r = crate::drill::ScenarioReport::new(
            crate::drill::scenario::Scenario::LbFailover,
            "c",
            crate::drill::fault::Kind::Lab,
        );
        r.probe_start_ms = -1000.0;
        r.probe_end_ms = 4000.0;
        r.restored_after_ms = Some(2000.0);
        r.recovered_after_ms = Some(3000.0);
        r.samples = vec![Sample {
            stream: Stream::Fresh,
            kind: Kind::Write,
            start_ms: 10.0,
            latency_ms: 3.0,
            ok: false,
            status: None,
            error: Some("a <b> & c".into()),
            retried: false,
            new_connection: true,
        }];
        let svg = chart(&r);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }
}

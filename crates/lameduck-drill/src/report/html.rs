//! One self-contained HTML page: a timeline chart in inline SVG and the
//! summary table. No scripts, fonts or styles from anywhere else.

use std::fmt::Write;

use super::{Report, table};
use crate::record::{BUCKET, Bucket};

const WIDTH: f64 = 960.0;
const PANEL: f64 = 150.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

/// A line of a panel: its label, colour and value per bucket.
type Series<'a> = (&'a str, &'a str, Box<dyn Fn(&Bucket) -> f64 + 'a>);

/// The report as an HTML page.
pub fn html(r: &Report) -> String {
    let per_sec = 1000.0 / BUCKET.as_millis() as f64;
    let count = |name: &'static str| {
        move |b: &Bucket| b.counts.get(name).copied().unwrap_or(0) as f64 * per_sec
    };
    let panels: Vec<(&str, Vec<Series<'_>>)> = vec![
        (
            "responses per second",
            vec![
                ("ok", "#2e7d32", Box::new(count("ok"))),
                ("5xx", "#ef6c00", Box::new(count("http_5xx"))),
            ],
        ),
        (
            "errors per second",
            vec![
                ("refused", "#9e9e9e", Box::new(count("refused"))),
                (
                    "refused after stop",
                    "#cfcfcf",
                    Box::new(count("refused_after_stop")),
                ),
                ("LOST", "#c62828", Box::new(count("lost"))),
                ("cut", "#ad1457", Box::new(count("cut"))),
                ("ws abrupt", "#6a1b9a", Box::new(count("ws_abrupt"))),
                ("ws unechoed", "#4527a0", Box::new(count("ws_unechoed"))),
                ("sse abrupt", "#283593", Box::new(count("sse_abrupt"))),
                ("sse gap", "#5d4037", Box::new(count("sse_gap"))),
            ],
        ),
        (
            "reconnects per second (WebSocket and SSE)",
            vec![("reconnects", "#e65100", Box::new(count("reconnect")))],
        ),
        (
            "open connections",
            vec![
                ("http", "#1565c0", Box::new(|b: &Bucket| b.open_http as f64)),
                (
                    "websocket",
                    "#00838f",
                    Box::new(|b: &Bucket| b.open_ws as f64),
                ),
                ("sse", "#f9a825", Box::new(|b: &Bucket| b.open_sse as f64)),
            ],
        ),
    ];
    let end = r.end_ms.max(1) as f64;
    let x = |ms: f64| LEFT + (WIDTH - LEFT - RIGHT) * ms / end;
    let height = panels.len() as f64 * (PANEL + 40.0) + 30.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    for (i, (title, series)) in panels.iter().enumerate() {
        let top = 20.0 + i as f64 * (PANEL + 40.0);
        let bottom = top + PANEL;
        let max = r
            .timeline
            .iter()
            .flat_map(|b| series.iter().map(move |(_, _, f)| f(b)))
            .fold(0.0_f64, f64::max)
            .max(1.0);
        let y = |v: f64| bottom - PANEL * v / max;
        let _ = write!(
            svg,
            r##"<text x="{LEFT}" y="{}" font-weight="bold">{title}</text><rect x="{LEFT}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#bbb"/><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{bottom}" text-anchor="end">0</text>"##,
            top - 6.0,
            WIDTH - LEFT - RIGHT,
            LEFT - 4.0,
            top + 10.0,
            max.round(),
            LEFT - 4.0,
        );
        for (j, (label, colour, f)) in series.iter().enumerate() {
            let points: Vec<String> = r
                .timeline
                .iter()
                .map(|b| format!("{:.1},{:.1}", x(b.t_ms as f64), y(f(b))))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{colour}">{label}</text>"#,
                points.join(" "),
                LEFT + 10.0 + j as f64 * 90.0,
                top + 14.0,
            );
        }
        let restarts = r
            .restarts
            .iter()
            .map(|x| (Some(x.at_ms), format!("restart {}", x.n)));
        let stop = [
            (r.signal_at_ms, "signal".to_owned()),
            (r.exit_at_ms, "exit".to_owned()),
        ];
        for (ms, label) in restarts.chain(stop) {
            if let Some(ms) = ms {
                let at = x(ms as f64);
                let _ = write!(
                    svg,
                    r##"<line x1="{at:.1}" y1="{top}" x2="{at:.1}" y2="{bottom}" stroke="#000" stroke-dasharray="4 3"/><text x="{:.1}" y="{}">{label}</text>"##,
                    at + 3.0,
                    bottom - 4.0,
                );
            }
        }
        // Seconds along the bottom.
        let step = ((end / 1000.0 / 10.0).ceil() * 1000.0).max(1000.0);
        let mut t = 0.0;
        while t <= end {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}s</text>"#,
                x(t),
                bottom + 13.0,
                t / 1000.0
            );
            t += step;
        }
    }
    svg.push_str("</svg>");
    let verdict = if r.passed { "PASS" } else { "FAIL" };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lameduck drill: {verdict}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}}pre{{background:#f5f5f5;padding:12px;font-size:13px;white-space:pre-wrap;overflow-wrap:anywhere}}h1{{font-size:20px}}.PASS{{color:#2e7d32}}.FAIL{{color:#c62828}}</style>
</head><body>
<h1>lameduck drill: <span class="{verdict}">{verdict}</span></h1>
{svg}
<pre>{}</pre>
</body></html>
"#,
        escape(&table(r))
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

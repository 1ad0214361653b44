//! The summary on stdout.

use std::fmt::Write;

use super::Report;
use crate::record::Latency;

/// The report as a plain-text table.
pub fn table(r: &Report) -> String {
    let c = |name: &str| r.counts.get(name).copied().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "lameduck drill: {}", r.target);
    let _ = writeln!(out, "scenarios: {}", r.scenarios.join(", "));
    let _ = writeln!(out, "protocol: {}", r.protocol);
    let ms = |ms: u64| format!("{:.2} s", ms as f64 / 1e3);
    for r in &r.restarts {
        let mut line = format!("restart {} ({}) at {}", r.n, r.means, ms(r.at_ms));
        if let Some(pid) = r.pid_before {
            let _ = write!(line, " to pid {pid}");
        }
        match (r.ready_after_ms, r.pid_after) {
            (Some(t), Some(pid)) if Some(pid) != r.pid_before => {
                let _ = write!(line, "; ready {} after it as pid {pid}", ms(t));
            }
            (Some(t), _) => {
                let _ = write!(line, "; ready {} after it, same pid", ms(t));
            }
            _ => {}
        }
        if let Some(t) = r.old_exit_after_ms {
            let status = r.old_exit_status.as_deref().unwrap_or("status unknown");
            let _ = write!(line, "; old process gone {} after it ({status})", ms(t));
        }
        if let Some(why) = &r.failure {
            let _ = write!(line, "; FAILED: {why}");
        }
        let _ = writeln!(out, "{line}");
    }
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if let Some(at) = r.signal_at_ms {
        let exit = match (r.exit_after_ms, &r.exit_status) {
            (Some(t), Some(status)) => format!("exited {} after it ({status})", ms(t)),
            (Some(t), None) => format!("gone {} after it", ms(t)),
            _ if c("no_exit") > 0 => {
                "still running at the drill's limit (then killed, if spawned)".into()
            }
            _ => "exit not observed".into(),
        };
        let _ = writeln!(out, "{} at {}; {exit}", r.trigger, ms(at));
    } else if !r.trigger.is_empty() {
        let _ = writeln!(out, "{}", r.trigger);
    }
    let _ = writeln!(out, "drill ended at {}", ms(r.end_ms));
    let _ = writeln!(out);
    let rows: [(&str, Vec<(&str, u64)>); 6] = [
        (
            "HTTP requests",
            vec![
                ("ok", c("ok")),
                ("refused", c("refused")),
                ("refused after stop", c("refused_after_stop")),
                ("LOST", c("lost")),
                ("cut", c("cut")),
                ("5xx", c("http_5xx")),
                ("retried", c("retried")),
                ("h2 GOAWAY", c("h2_goaway")),
            ],
        ),
        (
            "idle keep-alive",
            vec![("closed", c("idle_closed")), ("reset", c("idle_reset"))],
        ),
        (
            "WebSocket",
            vec![
                ("closed", c("ws_closed")),
                ("abrupt", c("ws_abrupt")),
                ("open", r.still_open.websocket as u64),
                ("echoed", c("ws_echoed")),
                ("unechoed", c("ws_unechoed")),
                ("crossed", c("ws_crossed")),
            ],
        ),
        (
            "SSE",
            vec![
                ("clean", c("sse_clean")),
                ("abrupt", c("sse_abrupt")),
                ("open", r.still_open.sse as u64),
                ("events", c("sse_event")),
                ("gaps", c("sse_gap")),
            ],
        ),
        (
            "reconnects",
            vec![
                ("WS+SSE", c("reconnect")),
                ("peak/100ms", r.reconnect_peak_per_100ms),
            ],
        ),
        (
            "service",
            vec![
                ("restarts", r.restarts.len() as u64),
                ("restart_failed", c("restart_failed")),
                ("no_exit", c("no_exit")),
            ],
        ),
    ];
    for (label, cells) in rows {
        let cells: Vec<String> = cells.iter().map(|(k, v)| format!("{k} {v:>7}")).collect();
        let _ = writeln!(out, "{label:<16} {}", cells.join("  "));
    }
    if !r.close_codes.is_empty() {
        let codes: Vec<String> = r
            .close_codes
            .iter()
            .map(|(code, n)| format!("{code} x{n}"))
            .collect();
        let _ = writeln!(out, "{:<16} {}", "close codes", codes.join(", "));
    }
    let lat = |l: &Latency| {
        if l.count == 0 {
            "-".to_owned()
        } else {
            format!(
                "p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} (n={})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            )
        }
    };
    let _ = writeln!(
        out,
        "{:<16} before  {}",
        "latency (ms)",
        lat(&r.latency.before)
    );
    let _ = writeln!(out, "{:<16} during  {}", "", lat(&r.latency.during));
    let _ = writeln!(out, "{:<16} after   {}", "", lat(&r.latency.after));
    let _ = writeln!(out);
    if r.passed {
        let allowed = if r.allowed.is_empty() {
            String::new()
        } else {
            format!(" (allowed: {})", r.allowed.join(", "))
        };
        let _ = writeln!(out, "PASS: nothing lost{allowed}");
    } else {
        let failed: Vec<String> = r.failures.iter().map(|f| format!("{f} {}", c(f))).collect();
        let _ = writeln!(out, "FAIL: {}", failed.join(", "));
    }
    out
}

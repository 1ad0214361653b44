//! HTTP/1.1 clients: `load`, `inflight` and the idle half of `idle`.

use std::time::{Duration, Instant};

use tokio::{io::AsyncReadExt, task::JoinSet};

use super::Ctx;
use crate::{
    record::{Class, Kind},
    wire::http::{KeepAlive, Outcome},
};

/// Records one request's outcome, and its latency if `timed` (slow
/// requests are slow on purpose); true when the connection can be reused.
fn record(ctx: &Ctx, outcome: &Outcome, took: Duration, timed: bool) -> bool {
    match outcome {
        Outcome::Ok(res) => {
            if timed {
                ctx.rec.latency(took);
            }
            ctx.rec.count(if res.status >= 500 {
                Class::Http5xx
            } else {
                Class::Ok
            });
            !res.closes()
        }
        Outcome::NotSent(_) => {
            ctx.rec.count(Class::Retried);
            false
        }
        Outcome::Lost(_) => {
            ctx.rec.count(Class::Lost);
            false
        }
        Outcome::Cut(_) => {
            ctx.rec.count(Class::Cut);
            false
        }
    }
}

/// A connection, counted as open while it lives.
async fn connect(ctx: &Ctx) -> Option<KeepAlive> {
    match KeepAlive::dial(&ctx.dialer).await {
        Ok(conn) => {
            let conn = conn.with_host(&ctx.host);
            ctx.rec.open(Kind::Http, 1);
            Some(conn)
        }
        Err(_) => {
            ctx.rec.count(Class::Refused);
            None
        }
    }
}

fn close(ctx: &Ctx, conn: KeepAlive) {
    drop(conn);
    ctx.rec.open(Kind::Http, -1);
}

/// `load` (and the HTTP part of `restart`): keep-alive clients loop the
/// ping path until the drill stops, reconnecting when the server closes.
pub(super) fn load(ctx: &Ctx, clients: usize, tasks: &mut JoinSet<()>) {
    for _ in 0..clients {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let mut conn = None;
            while !ctx.stop.is_cancelled() {
                let c = match conn.take() {
                    Some(c) => c,
                    None => match connect(&ctx).await {
                        Some(c) => c,
                        None if ctx.pause().await => continue,
                        None => break,
                    },
                };
                let mut c = c;
                let started = Instant::now();
                let outcome = c
                    .get(&ctx.settings.ping, ctx.settings.request_timeout)
                    .await;
                if record(&ctx, &outcome, started.elapsed(), true) {
                    conn = Some(c);
                } else {
                    close(&ctx, c);
                }
                if !ctx.settings.load_pause.is_zero() {
                    tokio::time::sleep(ctx.settings.load_pause).await;
                }
            }
            if let Some(c) = conn {
                close(&ctx, c);
            }
        });
    }
}

/// `inflight`: slow requests sent when `ctx.inflight_go` fires, half their
/// duration before the stop, so that the stop arrives while they are in
/// progress.
pub(super) fn inflight(ctx: &Ctx, tasks: &mut JoinSet<()>) {
    let sep = if ctx.settings.slow.contains('?') {
        '&'
    } else {
        '?'
    };
    let path = format!("{}{sep}ms={}", ctx.settings.slow, ctx.settings.slow_ms);
    for _ in 0..ctx.settings.inflight {
        let ctx = ctx.clone();
        let path = path.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = ctx.inflight_go.cancelled() => {}
                () = ctx.stop.cancelled() => return,
            }
            let Some(mut conn) = connect(&ctx).await else {
                return;
            };
            let started = Instant::now();
            let outcome = conn.get(&path, ctx.settings.request_timeout).await;
            record(&ctx, &outcome, started.elapsed(), false);
            close(&ctx, conn);
        });
    }
}

/// The HTTP half of `idle`: keep-alive connections that send one request,
/// then wait for the server to close them.
pub(super) async fn idle(ctx: &Ctx, tasks: &mut JoinSet<()>) {
    for _ in 0..ctx.settings.idle_http {
        let Some(mut conn) = connect(ctx).await else {
            continue;
        };
        let started = Instant::now();
        let outcome = conn
            .get(&ctx.settings.ping, ctx.settings.request_timeout)
            .await;
        if !record(ctx, &outcome, started.elapsed(), true) {
            close(ctx, conn);
            continue;
        }
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let mut stream = conn.into_stream();
            let mut byte = [0u8; 1];
            tokio::select! {
                read = stream.read(&mut byte) => ctx.rec.count(match read {
                    Ok(0) => Class::IdleClosed,
                    // Unasked-for bytes on an idle connection: not a clean close.
                    Ok(_) | Err(_) => Class::IdleReset,
                }),
                () = ctx.stop.cancelled() => {}
            }
            ctx.rec.open(Kind::Http, -1);
        });
    }
}

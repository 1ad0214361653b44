//! `load` over HTTP/2 (`Settings::http2`): each client is one connection
//! carrying several streams at once. A stream the server refused with its
//! GOAWAY (never processed) is sent again on a new connection and counted
//! `retried`; one whose response began and ended early is `cut`; one that
//! got nothing is `lost`. Every connection the server ends with GOAWAY is
//! counted (`h2_goaway`).

use std::time::Instant;

use bytes::Bytes;
use h2::{Reason, client::SendRequest};
use tokio::task::JoinSet;

use super::{Ctx, H2_STREAMS};
use crate::record::{Class, Kind};

pub(super) fn load(ctx: &Ctx, clients: usize, tasks: &mut JoinSet<()>) {
    let dialer = ctx.dialer.h2();
    let scheme = if dialer.is_tls() { "https" } else { "http" };
    // `--host` and `--ping` come from the command line: a URI they do not
    // make is reported as lost requests, one a client, not a panic.
    let Ok(uri) = format!("{scheme}://{}{}", ctx.host, ctx.settings.ping).parse::<http::Uri>()
    else {
        for _ in 0..clients {
            ctx.rec.count(Class::Lost);
        }
        return;
    };
    for _ in 0..clients {
        let (ctx, dialer, uri) = (ctx.clone(), dialer.clone(), uri.clone());
        tasks.spawn(async move {
            while !ctx.stop.is_cancelled() {
                let Ok(conn) = dialer.connect().await else {
                    ctx.rec.count(Class::Refused);
                    if ctx.pause().await {
                        continue;
                    }
                    break;
                };
                let Ok((send, connection)) = h2::client::handshake(conn).await else {
                    // Accepted and closed before the preface was answered.
                    ctx.rec.count(Class::Refused);
                    if ctx.pause().await {
                        continue;
                    }
                    break;
                };
                ctx.rec.open(Kind::Http, 1);
                let driver = tokio::spawn(connection);
                let mut streams = JoinSet::new();
                for _ in 0..H2_STREAMS {
                    streams.spawn(streams_of(ctx.clone(), send.clone(), uri.clone()));
                }
                drop(send);
                let mut goaway = false;
                while let Some(ended) = streams.join_next().await {
                    goaway |= ended.unwrap_or(false);
                }
                if goaway {
                    ctx.rec.count(Class::H2Goaway);
                }
                driver.abort();
                ctx.rec.open(Kind::Http, -1);
            }
        });
    }
}

/// Whether a stream error is the server's graceful refusal: a GOAWAY (or
/// a REFUSED_STREAM) for a stream it did not process, safe to send again.
fn refused(e: &h2::Error) -> bool {
    (e.is_go_away() && e.reason() == Some(Reason::NO_ERROR))
        || e.reason() == Some(Reason::REFUSED_STREAM)
}

/// One stream at a time on `send` until the connection ends (true when it
/// ended by GOAWAY) or the drill stops.
async fn streams_of(ctx: Ctx, mut send: SendRequest<Bytes>, uri: http::Uri) -> bool {
    while !ctx.stop.is_cancelled() {
        send = match send.ready().await {
            Ok(send) => send,
            // Nothing sent: the connection is going away.
            Err(e) => return e.is_go_away(),
        };
        // A parsed URI and no headers: building cannot fail.
        let Ok(request) = http::Request::get(uri.clone()).body(()) else {
            ctx.rec.count(Class::Lost);
            return false;
        };
        let started = Instant::now();
        let Ok((response, _)) = send.send_request(request, true) else {
            return true;
        };
        // The response and its body, bounded together.
        let exchange = async {
            let response = response.await?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|_| Failure::Body)?;
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Ok::<_, Failure>(status)
        };
        match tokio::time::timeout(ctx.settings.request_timeout, exchange).await {
            Ok(Ok(status)) => {
                ctx.rec.latency(started.elapsed());
                ctx.rec.count(if status >= 500 {
                    Class::Http5xx
                } else {
                    Class::Ok
                });
            }
            Ok(Err(Failure::Head(e))) if refused(&e) => {
                ctx.rec.count(Class::Retried);
                return true;
            }
            Ok(Err(Failure::Body)) => {
                ctx.rec.count(Class::Cut);
                return false;
            }
            Ok(Err(Failure::Head(_))) | Err(_) => {
                ctx.rec.count(Class::Lost);
                return false;
            }
        }
    }
    false
}

/// How a stream failed: before its response head (lost, or refused), or
/// in its body (cut).
enum Failure {
    Head(h2::Error),
    Body,
}

impl From<h2::Error> for Failure {
    fn from(e: h2::Error) -> Self {
        Failure::Head(e)
    }
}

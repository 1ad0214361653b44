//! `sse`: streams read over raw TCP, so that a clean end (the chunked
//! body's last chunk) can be told from an abrupt one (EOF or reset).

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinSet,
};

use super::Ctx;
use crate::{
    record::{Class, Kind},
    wire::Conn,
};

/// How a stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    Abrupt,
    /// No stream began: no answer (counted as lost) or an error status.
    NoStream,
    Stopped,
}

/// Decodes a chunked body as it arrives, and reads the event ids in it.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    raw: Vec<u8>,
    /// Inside a chunk: bytes of it still to come.
    left: usize,
    lines: Vec<u8>,
    ended: bool,
    /// The last event id seen.
    pub(crate) last: Option<u64>,
}

impl Stream {
    /// Takes `bytes`; returns the event ids completed by them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<u64> {
        self.raw.extend_from_slice(bytes);
        loop {
            if self.ended {
                break;
            }
            if self.left > 0 {
                let n = self.left.min(self.raw.len());
                if n == 0 {
                    break;
                }
                self.lines.extend(self.raw.drain(..n));
                self.left -= n;
                continue;
            }
            // A chunk's CRLF, then the next size line.
            let Some(pos) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = String::from_utf8_lossy(&self.raw[..pos]).into_owned();
            self.raw.drain(..pos + 2);
            if line.is_empty() {
                continue;
            }
            match usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16) {
                Ok(0) => self.ended = true,
                Ok(size) => self.left = size,
                // Not chunked framing: treat it all as stream data.
                Err(_) => self.lines.extend_from_slice(line.as_bytes()),
            }
        }
        let mut ids = Vec::new();
        while let Some(pos) = self.lines.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.lines.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(id) = line.strip_prefix("id:").and_then(|v| v.trim().parse().ok()) {
                ids.push(id);
                self.last = Some(id);
            }
        }
        ids
    }
}

/// `sse` (and the SSE part of `restart`): streams that reconnect when they
/// end, with `Last-Event-ID`, as a browser's `EventSource` does; an id
/// that does not follow the last one seen, on the same stream or across a
/// reconnect, is a gap.
pub(super) async fn streams(ctx: &Ctx, clients: usize, tasks: &mut JoinSet<()>) {
    for _ in 0..clients {
        let first = connect(ctx, None).await;
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let mut last = None;
            let mut had_stream = first.is_some();
            let mut tcp = first;
            while !ctx.stop.is_cancelled() {
                let mut conn = match tcp.take() {
                    Some(conn) => conn,
                    None => match connect(&ctx, last).await {
                        Some(conn) => {
                            if had_stream {
                                ctx.rec.count(Class::Reconnect);
                            }
                            had_stream = true;
                            conn
                        }
                        None if ctx.pause().await => continue,
                        None => break,
                    },
                };
                let last_before = last;
                let end = tokio::select! {
                    end = read(&ctx, &mut conn, &mut last) => end,
                    () = ctx.stop.cancelled() => End::Stopped,
                };
                match end {
                    End::Clean => ctx.rec.count(Class::SseClean),
                    End::Abrupt => ctx.rec.count(Class::SseAbrupt),
                    End::NoStream => {}
                    End::Stopped => {}
                }
                ctx.rec.open(Kind::Sse, -1);
                // A stream that ended without one event id (a path that is
                // not a stream, say) is not retried in a tight loop.
                if (end == End::NoStream || last == last_before) && !ctx.pause().await {
                    break;
                }
            }
        });
    }
}

/// A stream's request written, resuming after `last`; counted as open.
async fn connect(ctx: &Ctx, last: Option<u64>) -> Option<Conn> {
    let Ok(mut tcp) = ctx.dialer.connect().await else {
        ctx.rec.count(Class::Refused);
        return None;
    };
    let resume = last.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
        ctx.settings.sse, ctx.host
    );
    if tcp.write_all(request.as_bytes()).await.is_err() {
        // Accepted, then closed before the request could be written: the
        // server refused it without answering, as a closed listener does.
        ctx.rec.count(Class::Refused);
        return None;
    }
    ctx.rec.open(Kind::Sse, 1);
    Some(tcp)
}

async fn read(ctx: &Ctx, tcp: &mut Conn, last: &mut Option<u64>) -> End {
    let mut buf = vec![0u8; 8192];
    let mut head = Vec::new();
    // The response head.
    let body_start = loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => {
                ctx.rec.count(Class::Lost);
                return End::NoStream;
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if let Some(pos) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
    if !text.starts_with("http/1.1 200") {
        ctx.rec.count(Class::Http5xx);
        return End::NoStream;
    }
    let chunked = text.contains("transfer-encoding: chunked");
    let mut stream = Stream {
        last: *last,
        ..Stream::default()
    };
    let events = |bytes: &[u8], stream: &mut Stream| {
        let mut prev = stream.last;
        for id in stream.feed(bytes) {
            ctx.rec.count(Class::SseEvent);
            if prev.is_some_and(|p| id != p + 1) {
                ctx.rec.count(Class::SseGap);
            }
            prev = Some(id);
        }
    };
    events(&head[body_start..], &mut stream);
    let end = loop {
        if stream.ended {
            break End::Clean;
        }
        match tcp.read(&mut buf).await {
            // Without chunked framing the body ends with the connection.
            Ok(0) if !chunked => break End::Clean,
            Ok(0) | Err(_) => break End::Abrupt,
            Ok(n) => events(&buf[..n], &mut stream),
        }
    };
    *last = stream.last;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_events_split_anywhere() {
        let body = b"e\r\nid: 1\ndata: 1\n\r\ne\r\nid: 2\ndata: 2\n\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut s = Stream::default();
            let mut ids = s.feed(&body[..split]);
            ids.extend(s.feed(&body[split..]));
            assert_eq!(ids, vec![1, 2], "split at {split}");
            assert!(s.ended, "split at {split}");
        }
    }
}

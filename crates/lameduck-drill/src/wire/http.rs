//! A raw HTTP/1.1 client that classifies every request's outcome.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::timeout,
};

use super::{Conn, Dialer};

/// A parsed response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body (framed by Content-Length, chunked, or by the end of the
    /// connection).
    pub body: Vec<u8>,
    /// Whether the connection may carry another request (RFC 9112, 9.3):
    /// not after `Connection: close`, an HTTP/1.0 response without
    /// `Connection: keep-alive`, or a body that ended with the connection.
    pub persistent: bool,
}

impl Response {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the server closes the connection after this response.
    pub fn closes(&self) -> bool {
        !self.persistent
    }
}

/// What happened to one request.
#[derive(Debug)]
pub enum Outcome {
    /// A complete response.
    Ok(Response),
    /// The request could not be written (the server had closed the
    /// connection before we sent anything). Safe to retry.
    NotSent(io::Error),
    /// The request was written and not one byte of a response came: the
    /// bad case.
    Lost(String),
    /// A response began but the connection ended (closed or reset) before
    /// it was complete.
    Cut(String),
}

/// One keep-alive connection, one request at a time.
#[derive(Debug)]
pub struct KeepAlive {
    stream: Conn,
    host: String,
    buf: Vec<u8>,
    /// Whether bytes of the current response were consumed already.
    began: bool,
}

impl KeepAlive {
    /// Connects to `addr` over plain TCP; requests carry `Host: addr`.
    ///
    /// # Errors
    ///
    /// As `TcpStream::connect` (connection refused, typically).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        Self::dial(&Dialer::plain(addr)).await
    }

    /// Connects with `dialer` (TLS when it says so); requests carry
    /// `Host: ADDR`.
    ///
    /// # Errors
    ///
    /// As [`Dialer::connect`].
    pub async fn dial(dialer: &Dialer) -> io::Result<Self> {
        let stream = dialer.connect().await?;
        Ok(Self {
            stream,
            host: dialer.addr().to_string(),
            buf: Vec::with_capacity(1024),
            began: false,
        })
    }

    /// Requests carry `Host: host` (a name-based virtual host).
    pub fn with_host(mut self, host: &str) -> Self {
        host.clone_into(&mut self.host);
        self
    }

    /// Sends `GET path` and reads the response, within `limit`.
    pub async fn get(&mut self, path: &str, limit: Duration) -> Outcome {
        self.request("GET", path, &[], b"", limit).await
    }

    /// Sends a request with extra `headers` and a `body` (framed with
    /// Content-Length), and reads the response, within `limit`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        limit: Duration,
    ) -> Outcome {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        if let Err(err) = self.stream.write_all(&bytes).await {
            return Outcome::NotSent(err);
        }
        let started = self.buf.len();
        let read = timeout(limit, self.read_response()).await;
        let began = self.buf.len() > started || self.began;
        self.began = false;
        match read {
            Ok(Ok(res)) => Outcome::Ok(res),
            Ok(Err(err)) if began => Outcome::Cut(err.to_string()),
            Ok(Err(err)) => Outcome::Lost(err.to_string()),
            Err(_) if began => Outcome::Cut(format!("incomplete response after {limit:?}")),
            Err(_) => Outcome::Lost(format!("no response within {limit:?}")),
        }
    }

    /// The connection, for waiting on the server with nothing to send.
    pub fn into_stream(self) -> Conn {
        self.stream
    }

    /// Waits up to `limit` for the server to close the connection; true if
    /// it did (end of stream or reset) with no stray bytes.
    pub async fn closed_by_server(&mut self, limit: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            timeout(limit, self.stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let http10 = status_line.starts_with("HTTP/1.0");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad status line"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let length: Option<usize> = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok());
        let connection = headers
            .iter()
            .find(|(n, _)| n == "connection")
            .map(|(_, v)| v.to_ascii_lowercase());
        let mut persistent = match connection.as_deref() {
            Some(v) if v.contains("close") => false,
            Some(v) if v.contains("keep-alive") => true,
            _ => !http10,
        };
        let body = if matches!(status, 100..=199 | 204 | 304) {
            self.buf.drain(..head_end);
            Vec::new()
        } else if chunked {
            self.buf.drain(..head_end);
            self.began = true;
            self.read_chunked().await?
        } else if let Some(length) = length {
            while self.buf.len() < head_end + length {
                self.fill().await?;
            }
            let body = self.buf[head_end..head_end + length].to_vec();
            self.buf.drain(..head_end + length);
            body
        } else {
            // Neither length nor chunks: the body ends with the connection.
            self.began = true;
            let mut chunk = [0u8; 4096];
            loop {
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            persistent = false;
            self.buf.drain(..).skip(head_end).collect()
        };
        Ok(Response {
            status,
            headers,
            body,
            persistent,
        })
    }

    /// A chunked body, the head already consumed.
    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(pos) = find(&self.buf, b"\r\n") {
                    break pos;
                }
                self.fill().await?;
            };
            let size = std::str::from_utf8(&self.buf[..line_end])
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| invalid("bad chunk size"))?;
            // The chunk, then its CRLF (after the last, empty chunk: the
            // final CRLF, no trailers here).
            while self.buf.len() < line_end + 2 + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a complete response",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// `GET path` on a new connection, within `limit`.
///
/// # Errors
///
/// When the connection is refused, or the response is lost.
pub async fn get(addr: SocketAddr, path: &str, limit: Duration) -> io::Result<Response> {
    get_from(&Dialer::plain(addr), &addr.to_string(), path, limit).await
}

/// `GET path` with `Host: host` on a new connection of `dialer`, within
/// `limit`.
///
/// # Errors
///
/// When the connection is refused, or the response is lost.
pub async fn get_from(
    dialer: &Dialer,
    host: &str,
    path: &str,
    limit: Duration,
) -> io::Result<Response> {
    let mut conn = timeout(limit, KeepAlive::dial(dialer))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??
        .with_host(host);
    match conn.get(path, limit).await {
        Outcome::Ok(res) => Ok(res),
        Outcome::NotSent(err) => Err(err),
        Outcome::Lost(why) | Outcome::Cut(why) => Err(io::Error::other(why)),
    }
}

/// `POST path` with a JSON body (and extra `headers`) on a new connection,
/// within `limit`.
///
/// # Errors
///
/// When the connection is refused, or the response is lost.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    limit: Duration,
) -> io::Result<Response> {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    send(addr, "POST", path, &all, body.as_bytes(), limit).await
}

/// Any request on a new connection, within `limit`.
///
/// # Errors
///
/// When the connection is refused, or the response is lost.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limit: Duration,
) -> io::Result<Response> {
    let mut conn = timeout(limit, KeepAlive::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    match conn.request(method, path, headers, body, limit).await {
        Outcome::Ok(res) => Ok(res),
        Outcome::NotSent(err) => Err(err),
        Outcome::Lost(why) | Outcome::Cut(why) => Err(io::Error::other(why)),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncReadExt, net::TcpListener};

    use super::*;

    /// Reads one request head from a test server's side of `listener`, and
    /// answers it with `response`.
    async fn serve_one(listener: TcpListener, response: &'static [u8]) -> String {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while find(&head, b"\r\n\r\n").is_none() {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "request head incomplete");
            head.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(response).await.unwrap();
        String::from_utf8(head).unwrap()
    }

    #[tokio::test]
    async fn host_is_the_address_or_the_name_given() {
        for (host, want) in [
            (None, None),
            (Some("drill.test:8080"), Some("drill.test:8080")),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(serve_one(
                listener,
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            ));
            let mut conn = KeepAlive::connect(addr).await.unwrap();
            if let Some(host) = host {
                conn = conn.with_host(host);
            }
            let Outcome::Ok(res) = conn.get("/x", Duration::from_secs(5)).await else {
                panic!("no response");
            };
            assert_eq!(res.body, b"ok");
            let head = server.await.unwrap();
            let want = want.map_or_else(|| addr.to_string(), str::to_owned);
            assert!(head.contains(&format!("\r\nHost: {want}\r\n")), "{head}");
        }
    }

    #[tokio::test]
    async fn http10_and_close_delimited_bodies_end_the_connection() {
        for (response, body) in [
            // HTTP/1.0 without keep-alive, with a length.
            (
                &b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
                &b"ok"[..],
            ),
            // No length, no chunks: the body runs to the end of the stream.
            (
                &b"HTTP/1.1 200 OK\r\n\r\nuntil the end"[..],
                &b"until the end"[..],
            ),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(serve_one(listener, response));
            let mut conn = KeepAlive::connect(addr).await.unwrap();
            // The server side closes once it has answered.
            let got = conn.get("/x", Duration::from_secs(5)).await;
            server.await.unwrap();
            let Outcome::Ok(res) = got else {
                panic!("{got:?}");
            };
            assert_eq!(res.body, body);
            assert!(res.closes(), "{res:?}");
        }
    }
}

//! WebSocket over raw TCP, for tests that send frames no well-behaved
//! client library would, or that must control exactly what is read.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// A WebSocket handshake on `/ws` over raw TCP (with `Origin` if given);
/// returns the stream and the response head.
///
/// # Panics
///
/// When the server does not answer within 5 s.
pub async fn handshake(addr: SocketAddr, origin: Option<&str>) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(
            timeout(Duration::from_secs(5), tcp.read(&mut byte))
                .await
                .unwrap()
                .unwrap()
                == 1,
            "eof in head"
        );
        head.push(byte[0]);
    }
    (tcp, String::from_utf8_lossy(&head).into_owned())
}

/// A client frame: `first` is FIN/RSV/opcode, masked unless `unmasked`.
pub fn frame(first: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if unmasked {
        out.extend_from_slice(payload);
    } else {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    }
    out
}

/// Reads server frames until a Close; returns its code.
pub async fn close_code(tcp: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Parse what we have: server frames are unmasked, short here.
        while buf.len() >= 2 {
            let len = (buf[1] & 0x7f) as usize;
            assert!(len < 126, "unexpected long server frame");
            if buf.len() < 2 + len {
                break;
            }
            let (opcode, payload) = (buf[0] & 0x0f, buf[2..2 + len].to_vec());
            buf.drain(..2 + len);
            if opcode == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        let n = timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

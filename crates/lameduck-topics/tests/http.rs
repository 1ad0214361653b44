//! The HTTP wire of the library, served on a real socket: the authorization
//! hook decides per request and topic, and what it refuses stores nothing.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::http::request::Parts;
use lameduck_test_support::send;
use lameduck_topics::{
    MemoryStore, Retention, Store, TopicName,
    http::{Access, Denied, Topics},
};

const WAIT: Duration = Duration::from_secs(5);

/// Serves `topics` on a free loopback port until the test ends.
async fn serve(topics: Topics) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, topics.router()).await });
    addr
}

// A closure hook: `private` is read only with `x-reader`, `admin-*` is
// published only with `x-admin`. Refused requests get the hook's status
// and reason, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_decides_per_request_and_topic() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Retention::default()));
    let hook = |request: &Parts, topic: &TopicName, access: Access| {
        let has = |h: &str| request.headers.contains_key(h);
        match (topic.as_str(), access) {
            ("private", Access::Subscribe) if !has("x-reader") => {
                Err(Denied::unauthorized("readers only"))
            }
            (name, Access::Publish) if name.starts_with("admin-") && !has("x-admin") => {
                Err(Denied::forbidden("admins only"))
            }
            _ => Ok(()),
        }
    };
    let addr = serve(Topics::new(store.clone()).authorize(hook)).await;

    let res = send(addr, "POST", "/topics/admin-x", &[], b"m", WAIT)
        .await
        .unwrap();
    assert_eq!(res.status, 403);
    assert!(String::from_utf8_lossy(&res.body).contains("admins only"));
    let admin = TopicName::new("admin-x").unwrap();
    assert_eq!(store.head(&admin).await.unwrap().last, 0, "nothing stored");
    let res = send(
        addr,
        "POST",
        "/topics/admin-x",
        &[("x-admin", "1")],
        b"m",
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 202);
    assert_eq!(store.head(&admin).await.unwrap().last, 1);

    let res = send(addr, "GET", "/topics/private/events", &[], b"", WAIT)
        .await
        .unwrap();
    assert_eq!(res.status, 401);
    assert_eq!(res.header("www-authenticate"), Some("Bearer"));
    // Other topics are open: an SSE stream starts (read with a short
    // timeout, as it never ends by itself).
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /topics/open/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
}

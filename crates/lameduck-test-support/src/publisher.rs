//! A publisher of numbered messages to a topic of `lameduck serve`.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

/// Posts `1`, `2`, ... (or `NAME-1`, `NAME-2`, ...) to `/topics/{topic}`
/// every 10 ms, each with its text as `Idempotency-Key` and retried with
/// it through anything that fails (a refusal, a cut connection, a 503),
/// until finished; says the last number stored, and which process stored
/// each (the process prefix of the response's `x-request-id`).
#[derive(Debug)]
pub struct TopicPublisher {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    served_by: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`TopicPublisher`] stored.
#[derive(Debug)]
pub struct Published {
    /// The last number stored (all before it were too).
    pub last: u64,
    /// For each number stored, in order, the process prefix of the
    /// `x-request-id` that answered it.
    pub served_by: Vec<String>,
}

impl TopicPublisher {
    /// Starts publishing `1`, `2`, ... to `topic` at `addr`.
    pub fn start(addr: SocketAddr, topic: &str) -> Self {
        Self::start_named(addr, topic, None)
    }

    /// Starts publishing `NAME-1`, `NAME-2`, ... to `topic` at `addr`.
    pub fn start_as(addr: SocketAddr, topic: &str, name: &str) -> Self {
        Self::start_named(addr, topic, Some(name.to_owned()))
    }

    fn start_named(addr: SocketAddr, topic: &str, name: Option<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let served_by = Arc::new(Mutex::new(Vec::new()));
        let path = format!("/topics/{topic}");
        let task = tokio::spawn({
            let (stop, published, served_by) = (stop.clone(), published.clone(), served_by.clone());
            async move {
                let mut n = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = match &name {
                        Some(name) => format!("{name}-{n}"),
                        None => n.to_string(),
                    };
                    let headers = [("idempotency-key", key.as_str())];
                    match crate::send(
                        addr,
                        "POST",
                        &path,
                        &headers,
                        key.as_bytes(),
                        Duration::from_secs(5),
                    )
                    .await
                    {
                        Ok(res) if res.status == 202 => {
                            let id = res.header("x-request-id").unwrap_or("");
                            let prefix = id.split('-').next().unwrap_or("").to_owned();
                            served_by.lock().unwrap().push(prefix);
                            published.store(n, Ordering::Relaxed);
                            n += 1;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Self {
            stop,
            published,
            served_by,
            task,
        }
    }

    /// Stops (after the publish in progress, 20 s at most) and says what
    /// was stored.
    ///
    /// # Panics
    ///
    /// When the publisher does not stop in time.
    pub async fn finish(self) -> Published {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the publisher stops in time")
            .expect("the publisher ran");
        Published {
            last: self.published.load(Ordering::Relaxed),
            served_by: std::mem::take(&mut self.served_by.lock().unwrap()),
        }
    }
}

/// Asserts that `got` is `1..=last`, each once and in order, naming the
/// first breaks if not (a whole list would drown the message).
///
/// # Panics
///
/// When it is not.
pub fn assert_one_to(label: &str, got: &[u64], last: u64) {
    let breaks: Vec<(u64, u64)> = got
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .take(10)
        .collect();
    assert!(
        got.first() == Some(&1) && got.last() == Some(&last) && breaks.is_empty(),
        "{label}: every number once, in order, 1 to {last}; got {} from {:?} to {:?}, \
         breaks (after, next): {breaks:?}",
        got.len(),
        got.first(),
        got.last()
    );
}

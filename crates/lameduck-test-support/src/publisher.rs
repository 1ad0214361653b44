//! A publisher of numbered messages to a topic of `lameduck serve`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

/// Posts `1`, `2`, ... to `/topics/{topic}` every 10 ms, each with its
/// number as `Idempotency-Key` and retried with it through anything that
/// fails (a refusal, a cut connection, a 503), until finished; says the
/// last number stored.
#[derive(Debug)]
pub struct TopicPublisher {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TopicPublisher {
    /// Starts publishing to `topic` at `addr`.
    pub fn start(addr: SocketAddr, topic: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let path = format!("/topics/{topic}");
        let task = tokio::spawn({
            let (stop, published) = (stop.clone(), published.clone());
            async move {
                let mut n = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = n.to_string();
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
            task,
        }
    }

    /// Stops (after the publish in progress, 20 s at most) and returns the
    /// last number stored.
    ///
    /// # Panics
    ///
    /// When the publisher does not stop in time.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the publisher stops in time")
            .expect("the publisher ran");
        self.published.load(Ordering::Relaxed)
    }
}

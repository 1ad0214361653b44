//! "Jobs may be ready" notices: `LISTEN` on a connection of its own, so
//! that idle workers start a new job at once instead of at their next poll.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

/// Notices seen, and the tasks waiting for the next one.
#[derive(Debug, Default)]
pub(super) struct Notices {
    seen: AtomicU64,
    notify: Notify,
}

impl Notices {
    pub(super) fn count(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    fn arrived(&self) {
        self.seen.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Resolves once a notice after `seen` has arrived, or after `poll`.
    pub(super) async fn wait(&self, seen: u64, poll: Duration) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check: a notice in between still wakes us.
        notified.as_mut().enable();
        if self.count() != seen {
            return;
        }
        let _ = tokio::time::timeout(poll, notified).await;
    }
}

/// The channel of `schema`'s journal: channels are per database, so two
/// journals in two schemas do not wake each other.
pub(super) fn channel(schema: &str) -> String {
    format!("lameduck_jobs.{schema}")
}

/// Listens on `channel` until dropped, reconnecting with back-off; every
/// (re)connection counts as a notice too, since one may have been missed
/// meanwhile. A connection pooler in transaction mode (PgBouncer) cannot
/// carry `LISTEN`: then this keeps failing, says so once, and the workers'
/// polls go on.
pub(super) async fn listen(config: tokio_postgres::Config, channel: String, notices: Arc<Notices>) {
    let mut backoff = Duration::from_millis(100);
    let mut said = false;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let sql = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
                let listening = client.batch_execute(&sql);
                tokio::pin!(listening);
                // The connection is driven while the LISTEN completes.
                let ready = loop {
                    tokio::select! {
                        r = &mut listening => break r.is_ok(),
                        m = messages.next() => match m {
                            Some(Ok(AsyncMessage::Notification(_))) => notices.arrived(),
                            Some(Ok(_)) => {}
                            _ => break false,
                        },
                    }
                };
                if ready {
                    backoff = Duration::from_millis(100);
                    said = false;
                    notices.arrived();
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => notices.arrived(),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                }
            }
            Err(e) if !said => {
                said = true;
                tracing::warn!(error = %e, "job.journal_listen_failed");
            }
            Err(_) => {}
        }
        notices.arrived();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

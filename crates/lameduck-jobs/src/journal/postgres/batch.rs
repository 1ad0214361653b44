//! Group commit for Postgres: calls made while a statement is in flight
//! wait, and go together in the next one. Each commit of a job write is a
//! WAL flush, and an enqueue's commit also takes the server-wide lock that
//! orders notifications; one statement for many jobs pays each once.

use std::future::Future;

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::JournalError;

type Waiter<T, R> = (T, oneshot::Sender<Result<R, JournalError>>);

/// A task that runs `T`s in batches and answers each caller with its `R`.
pub(super) struct Batcher<T, R> {
    tx: mpsc::UnboundedSender<Waiter<T, R>>,
    task: JoinHandle<()>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Spawns the task: it takes the first waiting call and every other one
    /// already queued (up to `max`), and hands them to `run`, which answers
    /// them in order. One batch at a time: while it runs, the next gathers.
    pub(super) fn spawn<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<R, JournalError>>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter<T, R>>();
        let task = tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(max);
            while rx.recv_many(&mut waiting, max).await > 0 {
                let (items, replies): (Vec<T>, Vec<_>) = waiting.drain(..).unzip();
                let answers = run(items).await;
                debug_assert_eq!(answers.len(), replies.len());
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
        });
        Self { tx, task }
    }

    /// Runs `item` with whatever else is waiting; returns its answer.
    pub(super) async fn call(&self, item: T) -> Result<R, JournalError> {
        let gone = || JournalError::unavailable("Postgres journal", "the journal was dropped");
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl<T, R> Drop for Batcher<T, R> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Which server's request is being handled on this thread, for
//! [`super::Drain::current`].
//!
//! Each lifecycle gets a number and a place in a process-wide table; while
//! a request's application future is polled, the thread holds that number
//! in a plain `Cell`. Setting and restoring it costs a few instructions a
//! poll, where a tokio task-local (a `RefCell` of the value, moved in and
//! out) cost about 190 a request. Looking the lifecycle up (a read lock
//! and a scan of the few servers of the process) is paid only by a handler
//! that asks for its `Drain`.

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
};

use super::Lifecycle;

/// Every live lifecycle, by number.
static LIVE: RwLock<Vec<(u32, Weak<Lifecycle>)>> = RwLock::new(Vec::new());

/// The next lifecycle's number; 0 means none.
static NEXT: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// The number of the lifecycle whose request is being polled here.
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// A new lifecycle's number.
pub(super) fn next_id() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Makes `lifecycle` findable by its number.
pub(super) fn register(lifecycle: &Arc<Lifecycle>) {
    let mut live = LIVE.write().unwrap_or_else(|e| e.into_inner());
    live.push((lifecycle.id, Arc::downgrade(lifecycle)));
}

/// Forgets the lifecycle numbered `id` (it is being dropped).
pub(super) fn unregister(id: u32) {
    let mut live = LIVE.write().unwrap_or_else(|e| e.into_inner());
    live.retain(|(live_id, _)| *live_id != id);
}

/// The lifecycle whose request is being polled on this thread, if any.
pub(super) fn lifecycle() -> Option<Arc<Lifecycle>> {
    let id = CURRENT.get();
    if id == 0 {
        return None;
    }
    let live = LIVE.read().unwrap_or_else(|e| e.into_inner());
    live.iter()
        .find(|(live_id, _)| *live_id == id)
        .and_then(|(_, lifecycle)| lifecycle.upgrade())
}

/// What the server sets around each request's application future.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestDrain(u32);

impl RequestDrain {
    pub(crate) fn of(lifecycle: &Lifecycle) -> Self {
        Self(lifecycle.id)
    }

    /// `future`, with this server's drain as [`super::Drain::current`]
    /// while it is polled.
    pub(crate) fn scope<F: Future>(self, future: F) -> Scoped<F> {
        Scoped { id: self.0, future }
    }
}

pin_project_lite::pin_project! {
    /// A future polled with its server's number set on the thread.
    pub(crate) struct Scoped<F> {
        id: u32,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _restore = Restore(CURRENT.replace(*this.id));
        this.future.poll(cx)
    }
}

/// Puts the number that was set before back, also when the poll panics.
struct Restore(u32);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.set(self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;
    use crate::Config;

    fn current_id() -> Option<u32> {
        lifecycle().map(|l| l.id)
    }

    // Each scope sees its own server, a nested one restores the outer one,
    // nothing is set outside, and a dropped server is found no more.
    #[tokio::test]
    async fn scopes_nest_and_restore() {
        let a = Lifecycle::new(Config::default());
        let b = Lifecycle::new(Config::default());
        let (id_a, id_b) = (a.id, b.id);
        assert_ne!(id_a, id_b);
        assert_eq!(current_id(), None);
        let seen = RequestDrain::of(&a)
            .scope(async move {
                let outer = current_id();
                let inner = RequestDrain::of(&b)
                    .scope(poll_fn(|_| Poll::Ready(current_id())))
                    .await;
                (outer, inner, current_id())
            })
            .await;
        assert_eq!(seen, (Some(id_a), Some(id_b), Some(id_a)));
        assert_eq!(current_id(), None, "not outside the scope");

        drop(a);
        let gone = RequestDrain(id_a)
            .scope(poll_fn(|_| Poll::Ready(current_id())))
            .await;
        assert_eq!(gone, None, "a dropped server is not found");
    }
}

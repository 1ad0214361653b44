//! SSE streams that end properly when the server drains.
//!
//! On drain an [`SseStream`] sends one last event, `event: drain` with a
//! `retry:` hint, then ends the response, so the client's `EventSource`
//! reconnects (with `Last-Event-ID`) to another instance instead of seeing a
//! reset or waiting on a stream that never ends.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use crate::lifecycle::{Drain, DrainWaiter, Lifecycle};
use axum::response::sse::Event;
use futures_util::Stream;

/// The name of the last event of a drained stream.
pub const DRAIN_EVENT: &str = "drain";

pin_project_lite::pin_project! {
    /// A stream of SSE events that ends on drain with `event: drain`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{convert::Infallible, time::Duration};
    /// use axum::{Router, response::sse::{Event, Sse}, routing::get};
    /// use futures_util::stream;
    /// use lameduck::{Drain, sse::SseStream};
    ///
    /// async fn events(drain: Drain) -> Sse<SseStream<impl futures_util::Stream<Item = Result<Event, Infallible>>>> {
    ///     let ticks = stream::repeat_with(|| Ok(Event::default().data("tick")));
    ///     Sse::new(SseStream::new(ticks, drain).retry(Duration::from_millis(500)))
    /// }
    /// let _app: Router = Router::new().route("/events", get(events));
    /// ```
    #[must_use = "streams do nothing unless polled"]
    pub struct SseStream<S> {
        #[pin]
        inner: S,
        drained: DrainWaiter,
        retry: Duration,
        done: bool,
        guard: OpenStream,
    }
}

impl<S> std::fmt::Debug for SseStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("retry", &self.retry)
            .field("done", &self.done)
            .finish()
    }
}

impl<S> SseStream<S> {
    /// Wraps `events`; the stream counts as an open SSE stream of the server
    /// until it is dropped. The default `retry:` hint is 1 s.
    pub fn new(events: S, drain: Drain) -> Self {
        Self {
            inner: events,
            drained: DrainWaiter::new(drain.lifecycle().clone()),
            retry: Duration::from_secs(1),
            done: false,
            guard: OpenStream::new(drain.lifecycle().clone()),
        }
    }

    /// Sets the reconnection delay sent to the client with the drain event
    /// (each stream sends between half and one and a half times it, so
    /// that the clients of one drain spread their reconnects).
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }
}

impl<S, E> Stream for SseStream<S>
where
    S: Stream<Item = Result<Event, E>>,
{
    type Item = Result<Event, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if this.drained.poll_drained(cx).is_ready() {
            *this.done = true;
            // Jittered per stream (0.5 to 1.5 times the hint), so that the
            // clients of one drain do not all come back at the same instant.
            let retry = this.retry.mul_f64(0.5 + fastrand::f64());
            let last = Event::default()
                .event(DRAIN_EVENT)
                .retry(retry)
                .data("server draining, reconnect");
            return Poll::Ready(Some(Ok(last)));
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

/// Counts the stream in the server's live counts while it exists.
#[derive(Debug)]
struct OpenStream(Arc<Lifecycle>);

impl OpenStream {
    fn new(lifecycle: Arc<Lifecycle>) -> Self {
        lifecycle.stats().sse_opened();
        Self(lifecycle)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stats().sse_closed();
    }
}

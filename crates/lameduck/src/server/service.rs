//! The hyper service around the application's tower service: request
//! extensions, in-flight accounting, `Connection: close` during a drain.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{
    HeaderValue, Request, Response, StatusCode, Version,
    header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER},
};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tower::{Service, ServiceExt};

use tokio::sync::OwnedSemaphorePermit;

use super::io::ConnState;
use crate::{
    admission::Admit,
    lifecycle::{RequestDrain, Scoped},
    sessions,
    stats::ConnKind,
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub(crate) struct ConnService<S> {
    pub(crate) inner: S,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) drain: RequestDrain,
    pub(crate) peer: SocketAddr,
}

impl<S: Clone> Clone for ConnService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            conn: self.conn.clone(),
            drain: self.drain,
            peer: self.peer,
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = CallFuture<Scoped<tower::util::Oneshot<S, Request<Incoming>>>, B, S::Error>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let lifecycle = self.conn.lifecycle();
        let permit = if lifecycle.limits().any() {
            match self.limits(&mut req) {
                Ok(permit) => permit,
                Err(Limited::Queued) => return CallFuture::other(self.queued(req)),
                Err(Limited::Refused(answer)) => {
                    return CallFuture::Ready {
                        answer: Some(answer),
                    };
                }
                Err(Limited::RetryLater(secs)) => {
                    return CallFuture::other(Box::pin(async move {
                        Ok(match sessions::close_to_retry_later(req, secs).await {
                            Some(parts) => Response::from_parts(parts, TrackedBody::canned("")),
                            None => no_session(secs),
                        })
                    }));
                }
            }
        } else {
            None
        };
        let in_flight = InFlight::start(self.conn.clone(), permit);
        let http1 = req.version() != Version::HTTP_2;
        if !http1 && self.conn.kind() != ConnKind::Http2 {
            self.conn.set_kind(ConnKind::Http2);
        }
        if lifecycle.is_announcing() {
            let path = req.uri().path();
            if !lifecycle.config().health_paths.iter().any(|p| p == path) {
                lifecycle.stats().announce_traffic();
            }
        }
        if lifecycle.config().connect_info {
            req.extensions_mut().insert(ConnectInfo(self.peer));
        }
        CallFuture::App {
            // The request's `Drain` (see `Drain::current`).
            response: self.drain.scope(self.inner.clone().oneshot(req)),
            in_flight: Some(in_flight),
            http1,
        }
    }
}

/// A boxed future of [`ConnService::call`]'s rare paths (queued, a
/// browser's WebSocket refused).
type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<TrackedBody<B>>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// [`ConnService::call`]'s future: a named type rather than a boxed
    /// one, so that the common path (the application's answer) costs no
    /// allocation of its own.
    #[project = CallProj]
    pub(crate) enum CallFuture<F, B, E> {
        App {
            #[pin]
            response: F,
            in_flight: Option<InFlight>,
            http1: bool,
        },
        Ready {
            answer: Option<Box<Response<TrackedBody<B>>>>,
        },
        Other {
            future: Boxed<B, E>,
        },
    }
}

impl<F, B, E> CallFuture<F, B, E> {
    fn other(future: Boxed<B, E>) -> Self {
        CallFuture::Other { future }
    }
}

impl<F, B, E> Future for CallFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CallProj::App {
                response,
                in_flight,
                http1,
            } => {
                let mut res = std::task::ready!(response.poll(cx))?;
                let in_flight = in_flight.take().expect("polled after it was ready");
                if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                    in_flight.conn.set_kind(ConnKind::Websocket);
                } else if *http1 && in_flight.conn.lifecycle().is_draining() {
                    // Tells the client, and hyper, that this connection ends
                    // with this response.
                    res.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Poll::Ready(Ok(res.map(|inner| TrackedBody::app(inner, in_flight))))
            }
            CallProj::Ready { answer } => {
                Poll::Ready(Ok(*answer.take().expect("polled after it was ready")))
            }
            CallProj::Other { future } => future.as_mut().poll(cx),
        }
    }
}

/// A place under `max_in_flight` won in the queue, carried back into
/// [`ConnService::call`] with its request (extensions must be `Clone`;
/// `call` takes the place out, once).
#[derive(Clone)]
struct Admitted(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

/// Why [`ConnService::limits`] did not give a request its place.
enum Limited<B> {
    /// It waits in the `max_in_flight` queue.
    Queued,
    /// It is answered at once (429 or 503).
    Refused(Box<Response<TrackedBody<B>>>),
    /// A browser's WebSocket past the new-session rate: accepted and
    /// closed with 1013, to come back after this many seconds.
    RetryLater(u64),
}

impl<S, B> ConnService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// The rate limit, the new-session rate and the in-flight limit, in
    /// that order; the request's place under the last. Out of line and
    /// only called when a limit is set, so that `call` stays as it was for
    /// a server with none (one more branch).
    #[inline(never)]
    fn limits(
        &self,
        req: &mut Request<Incoming>,
    ) -> Result<Option<OwnedSemaphorePermit>, Limited<B>> {
        if let Some(Admitted(place)) = req.extensions_mut().remove::<Admitted>() {
            // Back from the queue with its place: it passed the rate and
            // session limits when it arrived, and is not charged again.
            return Ok(place.lock().unwrap_or_else(|e| e.into_inner()).take());
        }
        let lifecycle = self.conn.lifecycle();
        let (stats, limits) = (lifecycle.stats(), lifecycle.limits());
        if let Some(limiter) = limits.limiter() {
            let path = req.uri().path();
            if !lifecycle.config().health_paths.iter().any(|p| p == path) {
                if let Err(wait) = limiter.check(self.peer.ip(), req.headers()) {
                    return Err(Limited::Refused(Box::new(too_many(wait))));
                }
            }
        }
        if let Some(sessions) = limits.sessions() {
            if let Err(after) = sessions.admit(req) {
                if sessions::refused_inside(req) {
                    return Err(Limited::RetryLater(after));
                }
                return Err(Limited::Refused(Box::new(no_session(after))));
            }
        }
        let Some(admission) = limits.admission() else {
            return Ok(None);
        };
        match admission.try_admit() {
            Admit::Now(permit) => Ok(Some(permit)),
            Admit::Queued => Err(Limited::Queued),
            Admit::Full => {
                stats.request_rejected();
                Err(Limited::Refused(Box::new(overloaded(1))))
            }
        }
    }

    /// A request past the in-flight limit with a place in the queue: it
    /// counts as in flight while it waits (a drain waits for it), then is
    /// served with the place it won, or refused at the queue's timeout.
    /// Kept out of `call`, whose common path it would otherwise slow.
    fn queued(&self, mut req: Request<Incoming>) -> Boxed<B, S::Error> {
        let this = self.clone();
        let waiting = InFlight::start(self.conn.clone(), None);
        Box::pin(async move {
            let lifecycle = this.conn.lifecycle();
            let admission = lifecycle
                .limits()
                .admission()
                .expect("queued only under a limit");
            let Some(permit) = admission.wait().await else {
                lifecycle.stats().request_rejected();
                return Ok(overloaded(admission.retry_after_secs()));
            };
            req.extensions_mut()
                .insert(Admitted(Arc::new(std::sync::Mutex::new(Some(permit)))));
            // Counted by the served request from here (started before the
            // wait's count ends, so the connection never looks idle).
            let served = hyper::service::Service::call(&this, req);
            drop(waiting);
            served.await
        })
    }
}

/// A request counted as in flight (and its connection as busy) until its
/// response body is fully sent or dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    conn: Arc<ConnState>,
    /// Holds a place under `max_in_flight` (given back on drop).
    _admitted: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    fn start(conn: Arc<ConnState>, admitted: Option<OwnedSemaphorePermit>) -> Self {
        conn.request_started();
        Self {
            conn,
            _admitted: admitted,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.request_finished();
    }
}

const OVERLOADED: &str = r#"{"error":"too many requests in flight; retry later"}"#;

/// The answer past `max_in_flight`: 503, `Retry-After`, a JSON error.
fn overloaded<B>(retry_after_secs: u64) -> Response<TrackedBody<B>> {
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        retry_after_secs,
        OVERLOADED,
    )
}

const NO_SESSION: &str =
    r#"{"error":"too many new sessions at once; retry after the Retry-After seconds"}"#;

/// The answer to a new session past `max_new_sessions`: 503, a spread
/// `Retry-After`, a JSON error.
fn no_session<B>(retry_after_secs: u64) -> Response<TrackedBody<B>> {
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        retry_after_secs,
        NO_SESSION,
    )
}

const TOO_MANY: &str = r#"{"error":"rate limit exceeded; retry later"}"#;

/// The answer past a client's rate limit: 429, `Retry-After` (the wait
/// for its next token, in whole seconds, at least 1), a JSON error.
fn too_many<B>(wait: std::time::Duration) -> Response<TrackedBody<B>> {
    let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
    refusal(StatusCode::TOO_MANY_REQUESTS, secs, TOO_MANY)
}

/// A limit's answer, made without the application: `status`,
/// `Retry-After`, a JSON error.
fn refusal<B>(
    status: StatusCode,
    retry_after_secs: u64,
    json: &'static str,
) -> Response<TrackedBody<B>> {
    let mut res = Response::new(TrackedBody::canned(json));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's in-flight count when it ends
    /// (or a short answer of the server's own, such as a 503 past a limit).
    #[derive(Debug)]
    pub(crate) struct TrackedBody<B> {
        #[pin]
        state: BodyState<B>,
    }
}

pin_project_lite::pin_project! {
    #[derive(Debug)]
    #[project = BodyStateProj]
    enum BodyState<B> {
        App {
            #[pin]
            inner: B,
            in_flight: Option<InFlight>,
        },
        Canned {
            body: Option<Bytes>,
        },
    }
}

impl<B> TrackedBody<B> {
    fn app(inner: B, in_flight: InFlight) -> Self {
        Self {
            state: BodyState::App {
                inner,
                in_flight: Some(in_flight),
            },
        }
    }

    fn canned(body: &'static str) -> Self {
        Self {
            state: BodyState::Canned {
                body: Some(Bytes::from_static(body.as_bytes())),
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().state.project() {
            BodyStateProj::App { inner, in_flight } => {
                let frame = inner.poll_frame(cx);
                if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
                    in_flight.take();
                }
                frame
            }
            BodyStateProj::Canned { body } => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::App { inner, .. } => inner.is_end_stream(),
            BodyState::Canned { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::App { inner, .. } => inner.size_hint(),
            BodyState::Canned { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

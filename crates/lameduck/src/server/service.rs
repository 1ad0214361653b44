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
use http::{HeaderValue, Request, Response, StatusCode, Version, header::CONNECTION};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tower::{Service, ServiceExt};

use super::io::ConnState;
use crate::{lifecycle::DrainExt, stats::ConnKind};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub(crate) struct ConnService<S> {
    pub(crate) inner: S,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) drain: DrainExt,
    pub(crate) peer: SocketAddr,
}

impl<S: Clone> Clone for ConnService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            conn: self.conn.clone(),
            drain: self.drain.clone(),
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
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(self.conn.clone());
        let http1 = req.version() != Version::HTTP_2;
        if !http1 && self.conn.kind() != ConnKind::Http2 {
            self.conn.set_kind(ConnKind::Http2);
        }
        req.extensions_mut().insert(self.drain.clone());
        if self.conn.shared.config.connect_info {
            req.extensions_mut().insert(ConnectInfo(self.peer));
        }
        let response = self.inner.clone().oneshot(req);
        Box::pin(async move {
            let mut res = response.await?;
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                in_flight.conn.set_kind(ConnKind::Websocket);
            } else if http1 && in_flight.conn.shared.is_draining() {
                // Tells the client, and hyper, that this connection ends with
                // this response.
                res.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(res.map(|inner| TrackedBody {
                inner,
                in_flight: Some(in_flight),
            }))
        })
    }
}

/// A request counted as in flight (and its connection as busy) until its
/// response body is fully sent or dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    conn: Arc<ConnState>,
}

impl InFlight {
    fn start(conn: Arc<ConnState>) -> Self {
        conn.request_started();
        Self { conn }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.request_finished();
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's in-flight count when it ends.
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.in_flight.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! The one handler both throughput baselines serve, so that they differ only
//! in the server around it.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};

/// `GET /ping` → `pong`; anything else → 404.
pub(crate) async fn ping(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let res = if req.uri().path() == "/ping" {
        Response::new(Full::new(Bytes::from_static(b"pong")))
    } else {
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_FOUND;
        res
    };
    Ok(res)
}

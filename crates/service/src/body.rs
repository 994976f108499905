//! A request's body as the daemons' handlers read it: whole, bounded in
//! size and in time (a slow or huge body must not hold a connection or
//! memory), and the plain-text answer when it is not.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use crate::server::BODY_TIMEOUT;

/// A whole answer body.
pub type Body = Full<Bytes>;

/// A plain-text response.
pub fn text(status: u16, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Reads at most `max` bytes of body within [`BODY_TIMEOUT`]; a longer one
/// is refused with 413 (before reading it when `Content-Length` says so),
/// a slower one with 408.
pub async fn read_body<B>(req: Request<B>, max: usize) -> Result<(hyper::http::request::Parts, Bytes), Response<Body>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let too_large = || text(413, format!("body too large or unreadable (limit {max} bytes)"));
    let announced = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX)) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, max).collect()).await {
        Ok(Ok(c)) => Ok((parts, c.to_bytes())),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(text(408, format!("body not received within {BODY_TIMEOUT:?}"))),
    }
}

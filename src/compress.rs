//! Response compression with tower-http, applied per request and only to requests that
//! send Accept-Encoding: a client that cannot take it costs nothing.
//!
//! brotli, zstd or gzip (the client's preference first) at the fastest level, for bodies
//! over 256 bytes of compressible types; never for ranges, bodies already encoded (an app's
//! own, or a precompressed static sibling), images, media, archives, gRPC or event streams.
//! Vary: Accept-Encoding goes on every compressible response.

use std::convert::Infallible;

use http::{header, Request, Response};
use tower::{Layer, ServiceExt};
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::body::Body;

/// Bodies this small are never compressed.
const MIN_SIZE: u16 = 256;

/// A quick look that rules most responses out before tower-http's machinery runs (it costs
/// a few microseconds even when it decides not to compress): no body, a small one, or one
/// already encoded.
pub fn worth_a_look(resp: &Response<Body>) -> bool {
    let status = resp.status();
    if status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
        || resp.headers().contains_key(header::CONTENT_ENCODING)
    {
        return false;
    }
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .or_else(|| http_body::Body::size_hint(resp.body()).exact());
    declared.is_none_or(|n| n > u64::from(MIN_SIZE))
}

/// Compresses `resp` as the client's `accept` allows.
pub async fn compress(accept: &http::HeaderValue, resp: Response<Body>) -> Response<Body> {
    let was_encoded = resp.headers().contains_key(header::CONTENT_ENCODING);
    let mut resp = Some(resp);
    let predicate = SizeAbove::new(MIN_SIZE)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::SSE)
        .and(NotForContentType::const_new("video/"))
        .and(NotForContentType::const_new("audio/"))
        .and(NotForContentType::const_new("font/woff"))
        .and(NotForContentType::const_new("application/zip"))
        .and(NotForContentType::const_new("application/gzip"))
        .and(NotForContentType::const_new("application/zstd"))
        .and(NotForContentType::const_new("application/octet-stream"));
    let svc = CompressionLayer::new()
        .quality(CompressionLevel::Fastest)
        .compress_when(predicate)
        .layer(tower::service_fn(move |_: Request<()>| {
            // oneshot calls it once
            std::future::ready(Ok::<_, Infallible>(
                resp.take().unwrap_or_else(|| Response::new(Body::empty())),
            ))
        }));
    // the layer reads only Accept-Encoding from the request
    let mut req = Request::new(());
    req.headers_mut()
        .insert(header::ACCEPT_ENCODING, accept.clone());
    let mut resp = match svc.oneshot(req).await {
        Ok(r) => r.map(|b| Body::Compressed { body: Box::pin(b) }),
        Err(never) => match never {},
    };
    // compressed here: a strong ETag no longer names these bytes, so it becomes weak
    if !was_encoded && resp.headers().contains_key(header::CONTENT_ENCODING) {
        if let Some(tag) = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
        {
            if !tag.starts_with("W/") {
                if let Ok(weak) = http::HeaderValue::from_str(&format!("W/{tag}")) {
                    resp.headers_mut().insert(header::ETAG, weak);
                }
            }
        }
    }
    resp
}

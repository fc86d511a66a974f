//! Request bodies on the REST listener, for every handler that reads one (MindSpore's and the v2 routes): the
//! in-flight byte budget taken before the body is read, reading it within the size limit, and decoding a large one
//! off the I/O thread.

use super::budget;
use crate::service::Service;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;

/// Takes a request body's bytes from the server's in-flight budget (see `budget::ByteBudget`), before the body is
/// read, from its Content-Length; a body of unknown length counts as the largest allowed. The error is the text
/// for a 429. The handlers that read bodies call it; other routes (health, metrics) never touch the budget.
pub fn take_body_bytes(service: &Service, headers: &HeaderMap, max_bytes: usize) -> Result<budget::Taken, String> {
    let bytes = match declared_length(headers) {
        Some(length) => length.min(max_bytes.saturating_add(1)),
        None if headers.contains_key(header::TRANSFER_ENCODING) => max_bytes,
        None => 0,
    };
    service.bytes_in_flight.take(bytes)
}

/// The request's Content-Length, when it has a valid one.
pub fn declared_length(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(header::CONTENT_LENGTH)?.to_str().ok()?;
    value.trim().parse::<usize>().ok()
}

/// Reads a request body of at most `max_bytes`; `None` when it is longer or the client's stream fails. `size_hint` is
/// the declared Content-Length.
///
/// NOTE: a body of several frames goes into one buffer sized from Content-Length up front, so a large body is held
/// once while it arrives (`axum::body::to_bytes` keeps the frames and then joins them: twice the body at the end). A
/// body of one frame is kept as it came, without a copy.
pub async fn read_body(mut body: Body, size_hint: Option<usize>, max_bytes: usize) -> Option<Bytes> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else {
            continue; // trailers
        };
        let held = first.as_ref().map_or(0, Bytes::len) + joined.as_ref().map_or(0, BytesMut::len);
        if held + data.len() > max_bytes {
            return None;
        }
        if let Some(buffer) = joined.as_mut() {
            buffer.extend_from_slice(&data);
        } else if let Some(head) = first.take() {
            let capacity = size_hint.unwrap_or(0).clamp(head.len() + data.len(), max_bytes);
            let mut buffer = BytesMut::with_capacity(capacity);
            buffer.extend_from_slice(&head);
            buffer.extend_from_slice(&data);
            joined = Some(buffer);
        } else {
            first = Some(data);
        }
    }
    Some(joined.map_or_else(|| first.unwrap_or_default(), BytesMut::freeze))
}

/// Bodies from this size on are decoded on a blocking thread, so one large body never stalls the I/O thread's
/// other connections.
pub const OFFLOAD_DECODE_BYTES: usize = 1 << 20;

/// Runs `decode` on a blocking thread when `bytes` is large (see `OFFLOAD_DECODE_BYTES`), inline otherwise.
pub async fn decode_off_io<T, F>(bytes: usize, decode: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if bytes < OFFLOAD_DECODE_BYTES {
        return decode();
    }
    match tokio::task::spawn_blocking(decode).await {
        Ok(decoded) => decoded,
        // The closure panicked: let the request's task fail the way an inline panic would.
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(chunks: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Body::from_stream(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_are_joined_up_to_the_limit() {
        let body = read_body(chunked(&[b"ab", b"cd", b"e"]), Some(5), 5).await;
        assert_eq!(body.as_deref(), Some(&b"abcde"[..]));
        // A wrong Content-Length only sizes the buffer; the limit is what counts.
        let body = read_body(chunked(&[b"ab", b"cd"]), Some(1 << 40), 4).await;
        assert_eq!(body.as_deref(), Some(&b"abcd"[..]));
        assert_eq!(read_body(chunked(&[b"abc", b"de"]), None, 4).await, None);
        assert_eq!(read_body(chunked(&[b"abcde"]), None, 4).await, None);
        assert_eq!(read_body(chunked(&[]), None, 4).await.as_deref(), Some(&b""[..]));
    }

    #[tokio::test]
    async fn a_body_of_one_frame_is_not_copied() {
        let data = Bytes::from(vec![7u8; 1000]);
        let address = data.as_ptr();
        let body = read_body(Body::from(data), Some(1000), 1000).await.unwrap();
        assert_eq!(body.as_ptr(), address);
    }

    #[tokio::test]
    async fn a_failing_stream_is_none() {
        let frames: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from_static(b"a")), Err(std::io::Error::other("reset"))];
        assert_eq!(
            read_body(Body::from_stream(futures::stream::iter(frames)), None, 10).await,
            None
        );
    }
}

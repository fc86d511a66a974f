//! What requests may hold in memory at once, across every listener, and the gRPC guard that enforces it before a
//! message is buffered.
//!
//! `ByteBudget` counts the bytes of request bodies being read or answered; a request that would pass the budget is
//! refused at once (REST 429, gRPC RESOURCE_EXHAUSTED) instead of growing the server without bound. `GrpcGuard` is a
//! tower layer in front of tonic: it reads a unary call's 5-byte message header as the bytes arrive, refuses a
//! declared length over the message limit with RESOURCE_EXHAUSTED (tonic itself would answer OUT_OF_RANGE, after
//! reserving that many bytes before they arrived), takes the message's bytes from the budget, and hands tonic the
//! body only once it is complete, so memory grows with the bytes received and never with what a client declares.
//! It also ends a call at the client's deadline with DEADLINE_EXCEEDED (see `grpc_deadline`).

use super::grpc_deadline;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tonic::body::Body;

/// The budget unless `set_limit` changed it.
pub const DEFAULT_BYTES: usize = 1 << 30;

/// Bytes of request bodies in flight, against a limit.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    limit: AtomicUsize,
}

/// Bytes taken from a `ByteBudget`, given back on drop.
#[derive(Debug)]
pub struct Taken {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Default for ByteBudget {
    fn default() -> ByteBudget {
        ByteBudget {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(DEFAULT_BYTES),
        }
    }
}

impl ByteBudget {
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes.max(1), Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Takes `bytes`, or says (the client-facing text) why it cannot: the budget would be passed.
    pub fn take(self: &Arc<Self>, bytes: usize) -> Result<Taken, String> {
        let limit = self.limit();
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used.saturating_add(bytes) > limit {
                return Err(format!(
                    "Serving Error: the server is holding {used} bytes of requests, and this one's {bytes} would pass \
                     its in-flight limit of {limit} bytes (--max-in-flight-mb); retry later"
                ));
            }
            match self
                .used
                .compare_exchange_weak(used, used + bytes, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Taken {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

/// The tower layer for tonic's server: see the module docs.
#[derive(Clone)]
pub struct GrpcGuardLayer {
    pub budget: Arc<ByteBudget>,
    pub max_message_bytes: usize,
}

impl<S> tower::Layer<S> for GrpcGuardLayer {
    type Service = GrpcGuard<S>;

    fn layer(&self, inner: S) -> GrpcGuard<S> {
        GrpcGuard {
            inner,
            budget: self.budget.clone(),
            max_message_bytes: self.max_message_bytes,
        }
    }
}

#[derive(Clone)]
pub struct GrpcGuard<S> {
    inner: S,
    budget: Arc<ByteBudget>,
    max_message_bytes: usize,
}

impl<S> tower::Service<http::Request<Body>> for GrpcGuard<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The ready clone serves this call; the fresh one waits for the next `poll_ready` (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let budget = self.budget.clone();
        let limit = self.max_message_bytes;
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| grpc_deadline::guard_limit(value.as_bytes()));
        let call = async move {
            let (parts, body) = request.into_parts();
            let (body, taken) = match buffer_message(body, limit, &budget).await {
                Ok(buffered) => buffered,
                Err(status) => return Ok(status.into_http()),
            };
            let response = inner.call(http::Request::from_parts(parts, body)).await;
            drop(taken); // the decoded request now lives in the handler's own types; the bytes are released
            response
        };
        let Some(deadline) = deadline else {
            return Box::pin(call);
        };
        // Dropping the call on expiry drops its work, as a client that goes away does.
        Box::pin(async move {
            tokio::time::timeout(deadline, call)
                .await
                .unwrap_or_else(|_| Ok(tonic::Status::deadline_exceeded("Deadline Exceeded").into_http()))
        })
    }
}

/// Reads a unary call's body: its message header first (refusing a declared length over `limit`, or one the budget
/// cannot hold), then the rest, chunk by chunk; returns a complete body for tonic and the bytes it holds.
async fn buffer_message(
    mut body: Body,
    limit: usize,
    budget: &Arc<ByteBudget>,
) -> Result<(Body, Option<Taken>), tonic::Status> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received = 0usize;
    let mut taken: Option<Taken> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| tonic::Status::internal(format!("reading the request failed: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        received += data.len();
        chunks.push(data);
        if taken.is_none() && received >= 5 {
            let declared = declared_length(&chunks);
            if declared > limit {
                return Err(tonic::Status::resource_exhausted(format!(
                    "Serving Error: the request message is {declared} bytes, more than the limit of {limit} bytes \
                     (max_msg_mb_size / --max-msg-mb-size)"
                )));
            }
            taken = Some(budget.take(declared + 5).map_err(tonic::Status::resource_exhausted)?);
        }
        if received > limit.saturating_add(5) {
            return Err(tonic::Status::resource_exhausted(format!(
                "Serving Error: the request is more than the limit of {limit} bytes (max_msg_mb_size / \
                 --max-msg-mb-size)"
            )));
        }
    }
    let stream = futures::stream::iter(
        chunks
            .into_iter()
            .map(|chunk| Ok::<_, Infallible>(http_body::Frame::data(chunk))),
    );
    Ok((Body::new(http_body_util::StreamBody::new(stream)), taken))
}

/// The message length in a gRPC frame header (flag byte, then a big-endian u32), which may span chunks.
fn declared_length(chunks: &[Bytes]) -> usize {
    let mut header = [0u8; 5];
    let mut filled = 0;
    for chunk in chunks {
        let mut chunk = chunk.clone();
        while filled < 5 && chunk.has_remaining() {
            header[filled] = chunk.get_u8();
            filled += 1;
        }
    }
    u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_would_pass_it_and_gets_bytes_back_on_drop() {
        let budget = Arc::new(ByteBudget::default());
        budget.set_limit(100);
        let a = budget.take(60).unwrap();
        let refused = budget.take(41).unwrap_err();
        assert!(
            refused.contains("holding 60 bytes") && refused.contains("limit of 100 bytes"),
            "{refused}"
        );
        let b = budget.take(40).unwrap();
        drop(a);
        let c = budget.take(60).unwrap();
        drop((b, c));
        assert!(budget.take(100).is_ok());
    }

    #[test]
    fn the_declared_length_is_read_across_chunks() {
        let chunks = [Bytes::from_static(&[0, 0]), Bytes::from_static(&[1, 2, 3, 9, 9])];
        assert_eq!(declared_length(&chunks), 0x0001_0203);
    }
}

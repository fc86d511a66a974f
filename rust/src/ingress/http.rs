//! MindSpore REST over axum: `POST /model/{servable}[/version/{n}]:{method}`. MindSpore parses the URL by
//! keywords rather than routes (a `:` inside a path segment, `version` anywhere), so one fallback handler
//! does the parsing with the codec; every answer is HTTP 200 JSON, errors included.

use super::budget;
use crate::codec::ms_json;
use crate::metrics::Protocol;
use crate::request::PredictRequest;
use crate::service::Service;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

#[derive(Clone)]
struct RestState {
    service: Arc<Service>,
    max_bytes: usize,
}

/// The REST router; `max_bytes` is the request body limit. The Open Inference Protocol routes (`/v2...`) and
/// `/metrics` come first; every other path goes to MindSpore's keyword parser, as before.
pub fn router(service: Arc<Service>, max_bytes: usize) -> Router {
    Router::new()
        .fallback(mindspore_rest)
        // NOTE: the body limit is enforced in the handler, so the client gets MindSpore's text, not a bare 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(RestState {
            service: service.clone(),
            max_bytes,
        })
        .merge(super::kserve_http::routes(service, max_bytes))
}

/// Takes a request body's bytes from the server's in-flight budget (see `budget::ByteBudget`), before the body is
/// read, from its Content-Length; a body of unknown length counts as the largest allowed. The error is the text
/// for a 429. The handlers that read bodies call it; other routes (health, metrics) never touch the budget.
pub fn take_body_bytes(service: &Service, headers: &HeaderMap, max_bytes: usize) -> Result<budget::Taken, String> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let bytes = match declared {
        Some(length) => length.min(max_bytes.saturating_add(1)),
        None if headers.contains_key(header::TRANSFER_ENCODING) => max_bytes,
        None => 0,
    };
    service.bytes_in_flight.take(bytes)
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

fn json_reply(value: &serde_json::Value) -> Response {
    let body =
        serde_json::to_vec(value).unwrap_or_else(|_| b"{\"error_msg\":\"Failed to construct the response\"}".to_vec());
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn mindspore_rest(State(state): State<RestState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        return json_reply(&ms_json::error_body("http message only support POST right now"));
    }
    let target = match ms_json::parse_url(parts.uri.path()) {
        Ok(target) => target,
        Err(err) => return json_reply(&ms_json::error_body(err.message())),
    };
    let _held = match take_body_bytes(&state.service, &parts.headers, state.max_bytes) {
        Ok(held) => held,
        Err(text) => {
            let body = ms_json::error_body(&text).to_string();
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
    };
    // Read one byte past the limit so "too big" is told apart from "exactly the limit".
    let Ok(bytes) = axum::body::to_bytes(body, state.max_bytes.saturating_add(1)).await else {
        return json_reply(&ms_json::error_body(&format!(
            "http message is bigger than {}",
            state.max_bytes
        )));
    };
    let max_bytes = state.max_bytes;
    let instances = match decode_off_io(bytes.len(), move || ms_json::decode_body(&bytes, max_bytes)).await {
        Ok(instances) => instances,
        Err(err) => return json_reply(&ms_json::error_body(err.message())),
    };
    let reply = state
        .service
        .predict_via(PredictRequest { target, instances }, Protocol::MindsporeRest)
        .await;
    json_reply(&ms_json::encode_reply(&reply))
}

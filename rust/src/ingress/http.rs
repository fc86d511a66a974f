//! MindSpore REST over axum: `POST /model/{servable}[/version/{n}]:{method}`. MindSpore parses the URL by
//! keywords rather than routes (a `:` inside a path segment, `version` anywhere), so one fallback handler
//! does the parsing with the codec; every answer is HTTP 200 JSON, errors included.

use super::body::{declared_length, decode_off_io, read_body, take_body_bytes};
use crate::codec::ms_json;
use crate::metrics::Protocol;
use crate::request::PredictRequest;
use crate::service::Service;
use crate::trace;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, header};
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

fn json_reply(body: Vec<u8>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn mindspore_rest(State(state): State<RestState>, request: axum::extract::Request) -> Response {
    let parent = trace::http_traceparent(request.headers());
    trace::request(Protocol::MindsporeRest, parent, answer_mindspore_rest(state, request)).await
}

async fn answer_mindspore_rest(state: RestState, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        return json_reply(ms_json::error_body("http message only support POST right now"));
    }
    let target = match ms_json::parse_url(parts.uri.path()) {
        Ok(target) => target,
        Err(err) => return json_reply(ms_json::error_body(err.message())),
    };
    let _held = match take_body_bytes(&state.service, &parts.headers, state.max_bytes) {
        Ok(held) => held,
        Err(text) => {
            trace::set_error(&text);
            let body = ms_json::error_body(&text);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
    };
    let decoding = trace::start();
    let Some(bytes) = read_body(body, declared_length(&parts.headers), state.max_bytes).await else {
        let text = format!("http message is bigger than {}", state.max_bytes);
        trace::set_error(&text);
        return json_reply(ms_json::error_body(&text));
    };
    let max_bytes = state.max_bytes;
    let decoded = decode_off_io(bytes.len(), move || ms_json::decode_body(&bytes, max_bytes)).await;
    trace::record("rustserve.decode", decoding, Vec::new());
    let instances = match decoded {
        Ok(instances) => instances,
        Err(err) => {
            trace::set_error(err.message());
            return json_reply(ms_json::error_body(err.message()));
        }
    };
    let reply = state
        .service
        .predict_via(PredictRequest { target, instances }, Protocol::MindsporeRest)
        .await;
    let encoding = trace::start();
    let body = ms_json::encode_reply(&reply);
    trace::record("rustserve.encode", encoding, Vec::new());
    json_reply(body)
}

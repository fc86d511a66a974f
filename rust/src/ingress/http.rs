//! MindSpore REST over axum: `POST /model/{servable}[/version/{n}]:{method}`. MindSpore parses the URL by
//! keywords rather than routes (a `:` inside a path segment, `version` anywhere), so one fallback handler
//! does the parsing with the codec; every answer is HTTP 200 JSON, errors included.

use crate::codec::ms_json;
use crate::metrics::Protocol;
use crate::request::PredictRequest;
use crate::service::Service;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri, header};
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

fn json_reply(value: &serde_json::Value) -> Response {
    let body =
        serde_json::to_vec(value).unwrap_or_else(|_| b"{\"error_msg\":\"Failed to construct the response\"}".to_vec());
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn mindspore_rest(State(state): State<RestState>, method: Method, uri: Uri, body: Body) -> Response {
    if method != Method::POST {
        return json_reply(&ms_json::error_body("http message only support POST right now"));
    }
    let target = match ms_json::parse_url(uri.path()) {
        Ok(target) => target,
        Err(err) => return json_reply(&ms_json::error_body(err.message())),
    };
    // Read one byte past the limit so "too big" is told apart from "exactly the limit".
    let Ok(bytes) = axum::body::to_bytes(body, state.max_bytes.saturating_add(1)).await else {
        return json_reply(&ms_json::error_body(&format!(
            "http message is bigger than {}",
            state.max_bytes
        )));
    };
    let instances = match ms_json::decode_body(&bytes, state.max_bytes) {
        Ok(instances) => instances,
        Err(err) => return json_reply(&ms_json::error_body(err.message())),
    };
    let reply = state
        .service
        .predict_via(PredictRequest { target, instances }, Protocol::MindsporeRest)
        .await;
    json_reply(&ms_json::encode_reply(&reply))
}

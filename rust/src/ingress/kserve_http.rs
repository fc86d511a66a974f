//! Open Inference Protocol (KServe v2) REST over axum, plus `GET /metrics`: health, server and model metadata,
//! readiness, inference (JSON and the binary tensor extension), model configuration, statistics and the model
//! repository. Errors are `{"error": "..."}` with 400 (bad request), 404 (unknown model or version), 413 (body too
//! big), 503 (not ready) or 500 (internal). Any other path under /v2 is a 404 here, never MindSpore's fallback.

use super::kserve::{self, Resolved, Status, V2Error};
use crate::codec::kserve_json;
use crate::metrics::Protocol;
use crate::service::Service;
use crate::trace;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// The binary tensor extension's header: length of the JSON part of a body.
const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Clone)]
struct V2State {
    service: Arc<Service>,
    max_bytes: usize,
}

fn status_code(status: Status) -> StatusCode {
    match status {
        Status::BadRequest => StatusCode::BAD_REQUEST,
        Status::NotFound => StatusCode::NOT_FOUND,
        Status::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Status::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Status::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Status::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Status::TooMany => StatusCode::TOO_MANY_REQUESTS,
        Status::Unauthenticated => StatusCode::UNAUTHORIZED,
        Status::Forbidden => StatusCode::FORBIDDEN,
    }
}

fn error(err: &V2Error) -> Response {
    (
        status_code(err.status),
        [(header::CONTENT_TYPE, "application/json")],
        kserve_json::error_body(&err.message),
    )
        .into_response()
}

fn json(value: &Value) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(&V2Error::new(
            Status::Internal,
            format!("failed to encode the reply: {e}"),
        )),
    }
}

fn reply(result: Result<Value, V2Error>) -> Response {
    match result {
        Ok(value) => json(&value),
        Err(err) => error(&err),
    }
}

async fn wrong_method() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "application/json")],
        kserve_json::error_body("this HTTP method is not allowed on this path"),
    )
        .into_response()
}

fn on_get<H, T>(handler: H) -> MethodRouter<V2State>
where
    H: axum::handler::Handler<T, V2State>,
    T: 'static,
{
    get(handler).fallback(wrong_method)
}

fn on_post<H, T>(handler: H) -> MethodRouter<V2State>
where
    H: axum::handler::Handler<T, V2State>,
    T: 'static,
{
    post(handler).fallback(wrong_method)
}

/// The /v2 and /metrics routes; merged into the REST router ahead of MindSpore's catch-all.
pub fn routes(service: Arc<Service>, max_bytes: usize) -> Router {
    Router::new()
        .route("/metrics", on_get(metrics))
        .route("/v2", on_get(server_metadata))
        .route("/v2/health/live", on_get(live))
        .route("/v2/health/ready", on_get(ready))
        .route("/v2/models/stats", on_get(all_stats))
        .route("/v2/models/{model}", on_get(metadata))
        .route("/v2/models/{model}/versions/{version}", on_get(metadata_v))
        .route("/v2/models/{model}/ready", on_get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", on_get(model_ready_v))
        .route("/v2/models/{model}/config", on_get(config))
        .route("/v2/models/{model}/versions/{version}/config", on_get(config_v))
        .route("/v2/models/{model}/stats", on_get(stats))
        .route("/v2/models/{model}/versions/{version}/stats", on_get(stats_v))
        .route("/v2/models/{model}/infer", on_post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", on_post(infer_v))
        .route("/v2/repository/index", on_post(repository_index))
        .route("/v2/repository/models/{model}/load", on_post(load))
        .route("/v2/repository/models/{model}/unload", on_post(unload))
        .route("/v2/{*rest}", any(unknown_path))
        // NOTE: the body limit is enforced in the handlers, so the client gets a JSON error, not a bare 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(V2State { service, max_bytes })
}

async fn unknown_path(uri: axum::http::Uri) -> Response {
    error(&V2Error::not_found(format!(
        "no Open Inference Protocol endpoint at {}",
        uri.path()
    )))
}

async fn metrics(State(state): State<V2State>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.service.render_metrics(),
    )
        .into_response()
}

async fn server_metadata() -> Response {
    json(&kserve_json::server_metadata())
}

async fn live() -> Response {
    json(&serde_json::json!({"live": true}))
}

async fn ready(State(state): State<V2State>) -> Response {
    // A servable that failed to load at start-up, or was unloaded since, keeps the server "not ready" (the others
    // still serve).
    match state.service.readiness() {
        Ok(()) => json(&serde_json::json!({"ready": true})),
        Err(reason) => error(&V2Error::new(Status::Unavailable, reason)),
    }
}

fn with_model<F>(state: &V2State, model: &str, version: &str, f: F) -> Response
where
    F: FnOnce(&Resolved) -> Value,
{
    reply(kserve::resolve(&state.service, model, version).map(|r| f(&r)))
}

async fn metadata(State(state): State<V2State>, Path(model): Path<String>) -> Response {
    with_model(&state, &model, "", |r| {
        kserve_json::model_metadata(&kserve::describe(&state.service, r))
    })
}

async fn metadata_v(State(state): State<V2State>, Path((model, version)): Path<(String, String)>) -> Response {
    with_model(&state, &model, &version, |r| {
        kserve_json::model_metadata(&kserve::describe(&state.service, r))
    })
}

async fn config(State(state): State<V2State>, Path(model): Path<String>) -> Response {
    with_model(&state, &model, "", |r| {
        kserve_json::model_config(&kserve::describe(&state.service, r))
    })
}

async fn config_v(State(state): State<V2State>, Path((model, version)): Path<(String, String)>) -> Response {
    with_model(&state, &model, &version, |r| {
        kserve_json::model_config(&kserve::describe(&state.service, r))
    })
}

fn ready_reply(state: &V2State, model: &str, version: &str) -> Response {
    match kserve::resolve(&state.service, model, version) {
        Ok(resolved) => match state.service.servable_readiness(&resolved.servable.name) {
            Ok(()) => json(&serde_json::json!({"name": model, "ready": true})),
            Err(reason) => error(&V2Error::new(Status::Unavailable, reason)),
        },
        Err(err) => error(&err),
    }
}

async fn model_ready(State(state): State<V2State>, Path(model): Path<String>) -> Response {
    ready_reply(&state, &model, "")
}

async fn model_ready_v(State(state): State<V2State>, Path((model, version)): Path<(String, String)>) -> Response {
    ready_reply(&state, &model, &version)
}

async fn all_stats(State(state): State<V2State>) -> Response {
    reply(kserve::statistics(&state.service, None, "").map(|e| kserve_json::model_stats(&e)))
}

async fn stats(State(state): State<V2State>, Path(model): Path<String>) -> Response {
    reply(kserve::statistics(&state.service, Some(&model), "").map(|e| kserve_json::model_stats(&e)))
}

async fn stats_v(State(state): State<V2State>, Path((model, version)): Path<(String, String)>) -> Response {
    reply(kserve::statistics(&state.service, Some(&model), &version).map(|e| kserve_json::model_stats(&e)))
}

async fn infer(State(state): State<V2State>, Path(model): Path<String>, headers: HeaderMap, body: Body) -> Response {
    run_infer(&state, &model, "", &headers, body).await
}

async fn infer_v(
    State(state): State<V2State>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run_infer(&state, &model, &version, &headers, body).await
}

/// Reads a body up to the size limit (413 beyond it).
async fn read_body(state: &V2State, headers: &HeaderMap, body: Body) -> Result<Bytes, V2Error> {
    let size_hint = super::body::declared_length(headers);
    super::body::read_body(body, size_hint, state.max_bytes)
        .await
        .ok_or_else(|| {
            V2Error::new(
                Status::TooLarge,
                format!("the request body is bigger than the limit of {} bytes", state.max_bytes),
            )
        })
}

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, V2Error> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && encoding.as_bytes() != b"identity"
    {
        return Err(V2Error::bad(format!(
            "Content-Encoding {encoding:?} is not supported: send the request uncompressed"
        )));
    }
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| V2Error::bad(format!("Inference-Header-Content-Length {value:?} is not a number")))
}

async fn run_infer(state: &V2State, model: &str, version: &str, headers: &HeaderMap, body: Body) -> Response {
    let parent = trace::http_traceparent(headers);
    trace::request(
        Protocol::KserveRest,
        parent,
        answer_infer(state, model, version, headers, body),
    )
    .await
}

async fn answer_infer(state: &V2State, model: &str, version: &str, headers: &HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let decoding = trace::start();
    let resolved = match kserve::resolve(&state.service, model, version) {
        Ok(resolved) => resolved,
        Err(err) => {
            state.service.metrics.reject(Protocol::KserveRest);
            trace::set_error(&err.message);
            return error(&err);
        }
    };
    trace::set_target(
        &resolved.servable.name,
        &resolved.plan.spec.name,
        resolved.servable.version,
    );
    let _held = match super::body::take_body_bytes(&state.service, headers, state.max_bytes) {
        Ok(held) => held,
        Err(text) => return error(&V2Error::new(Status::TooMany, text)),
    };
    let decoded = async {
        let length = header_length(headers)?;
        let bytes = read_body(state, headers, body).await?;
        let decoded = super::body::decode_off_io(bytes.len(), move || kserve_json::decode_request(&bytes, length));
        decoded.await.map_err(|e| V2Error::bad(format!("model '{model}': {e}")))
    }
    .await;
    trace::record("rustserve.decode", decoding, Vec::new());
    let request = match decoded {
        Ok(request) => request,
        Err(err) => {
            kserve::record_failure(&state.service, &resolved, Protocol::KserveRest, started.elapsed());
            trace::set_error(&err.message);
            return error(&err);
        }
    };
    let decode = started.elapsed();
    let answered = match kserve::infer(&state.service, &resolved, request, Protocol::KserveRest, decode).await {
        Ok(answered) => answered,
        Err(err) => {
            trace::set_error(&err.message);
            return error(&err);
        }
    };
    let encoding = Instant::now();
    let traced_encoding = trace::start();
    let (body, json_length) = kserve_json::encode_response(&answered.response);
    trace::record("rustserve.encode", traced_encoding, Vec::new());
    if let Some(stats) = &answered.stats {
        stats.record_output(answered.instances, encoding.elapsed());
    }
    let mut response = Response::new(Body::from(body));
    let content_type = if json_length.is_some() {
        "application/octet-stream"
    } else {
        "application/json"
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(length) = json_length {
        response.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(length));
    }
    response
}

async fn repository_index(State(state): State<V2State>, headers: HeaderMap, body: Body) -> Response {
    let ready_only = match read_body(&state, &headers, body).await {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => false,
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => map.get("ready").and_then(Value::as_bool).unwrap_or(false),
            _ => return error(&V2Error::bad("the index request must be a JSON object")),
        },
        Err(err) => return error(&err),
    };
    reply(
        kserve::index(&state.service, ready_only)
            .await
            .map(|e| kserve_json::repository_index(&e)),
    )
}

/// Checks the API key, then a load / unload body: empty or a JSON object whose `parameters` ask for nothing
/// rustserve cannot do.
async fn repository_request(state: &V2State, headers: &HeaderMap, body: Body, load: bool) -> Result<(), V2Error> {
    let presented = headers.get(kserve::REPOSITORY_KEY_HEADER).map(HeaderValue::as_bytes);
    kserve::authorize_repository(&state.service, presented)?;
    let bytes = read_body(state, headers, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(V2Error::bad("the request body must be a JSON object"));
    };
    if load && let Some(Value::Object(parameters)) = map.get("parameters") {
        kserve::refused_load_parameter(parameters.keys())?;
    }
    Ok(())
}

async fn load(State(state): State<V2State>, Path(model): Path<String>, headers: HeaderMap, body: Body) -> Response {
    if let Err(err) = repository_request(&state, &headers, body, true).await {
        return error(&err);
    }
    match kserve::load(&state.service, &model).await {
        Ok(()) => json(&serde_json::json!({})),
        Err(err) => error(&err),
    }
}

async fn unload(State(state): State<V2State>, Path(model): Path<String>, headers: HeaderMap, body: Body) -> Response {
    if let Err(err) = repository_request(&state, &headers, body, false).await {
        return error(&err);
    }
    match kserve::unload(&state.service, &model).await {
        Ok(()) => json(&serde_json::json!({})),
        Err(err) => error(&err),
    }
}

#[cfg(test)]
mod tests {
    use crate::pipeline::{FunctionCall, PythonStages};
    use crate::request::InstanceResult;
    use crate::runtime::ServerRuntime;
    use crate::service::Service;
    use futures::future::BoxFuture;
    use std::io::{Read, Write};
    use std::sync::Arc;

    struct NoPython;

    impl PythonStages for NoPython {
        fn submit(&self, call: FunctionCall) -> BoxFuture<'static, Vec<InstanceResult>> {
            let count = call.instances.len();
            Box::pin(async move { vec![Err(crate::error::ServeError::Internal("no Python here".into())); count] })
        }
    }

    /// One HTTP/1.1 request over a fresh loopback connection; returns (status code, body).
    fn get(port: u16, path: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let status = reply[9..12].parse().unwrap();
        let body = reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn readiness_turns_503_when_stopping_begins() {
        let runtime = ServerRuntime::new(1).unwrap();
        let service = Arc::new(Service::new(Arc::new(NoPython), 10));
        let port = runtime
            .start_rest(service.clone(), "127.0.0.1:0", 1 << 20, None)
            .unwrap();
        assert_eq!(get(port, "/v2/health/ready"), (200, "{\"ready\":true}".into()));
        assert_eq!(get(port, "/v2/health/live").0, 200);
        let (status, body) = get(port, "/v2/models/nope");
        assert_eq!(status, 404);
        assert!(body.contains("unknown model 'nope'"), "{body}");
        let (status, body) = get(port, "/metrics");
        assert_eq!(status, 200);
        assert!(body.contains("rustserve_requests_in_flight_requests 0\n"), "{body}");
        service.set_stopping();
        let (status, body) = get(port, "/v2/health/ready");
        assert_eq!(status, 503);
        assert!(body.contains("the server is stopping"), "{body}");
        assert_eq!(get(port, "/v2/health/live").0, 200);
        runtime.stop();
    }
}

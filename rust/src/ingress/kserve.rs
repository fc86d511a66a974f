//! rustserve as the Open Inference Protocol (KServe v2) sees it, shared by the REST and gRPC front doors.
//!
//! Every method is a v2 model named `{servable}.{method}`; a servable version with exactly one method also answers
//! as `{servable}`. Model versions are the servable's versions ("" = newest). A method is *batchable* when every
//! model stage's model has a batch dimension, which includes a method without model stages (Python stages only);
//! then dim 0 of every v2 input is the batch: a request of batch B becomes B MindSpore instances (so v2 clients get
//! the same batching and padding as MindSpore clients) and the outputs are joined back on dim 0. Methods with a
//! `with_batch_dim=False` model take one instance per request, with the shapes as given. v2 has no per-instance
//! errors: the first failed instance fails the whole request.
//!
//! Metadata: a method input that feeds a model stage takes that model input's dtype and per-instance dims; an input
//! only Python stages read has no declared type (reported as BYTES with dims [-1] per instance, shape [-1, -1] when
//! batchable; any datatype is accepted).
//! Outputs a model stage produces are described likewise; others are undeclared BYTES [-1].

use crate::codec::kserve::{
    IndexEntry, InferOutput, InferRequest, InferResponse, ModelDescription, ModelStatsEntry, TensorMeta, join_batch,
    split_batch,
};
use crate::error::ServeError;
use crate::metrics::{MethodStats, Protocol, RequestRecord};
use crate::pipeline::MethodPlan;
use crate::request::PredictReply;
use crate::servable::ServableVersion;
use crate::service::{Route, RouteError, Service};
use crate::spec::{Source, StageKind};
use crate::tensor::{NamedInstance, Tensor};
use std::sync::Arc;
use std::time::Duration;

/// How a v2 error maps onto HTTP and gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// HTTP 400, gRPC INVALID_ARGUMENT.
    BadRequest,
    /// HTTP 404, gRPC NOT_FOUND.
    NotFound,
    /// HTTP 413, gRPC RESOURCE_EXHAUSTED.
    TooLarge,
    /// HTTP 503, gRPC UNAVAILABLE.
    Unavailable,
    /// HTTP 500, gRPC INTERNAL.
    Internal,
    /// HTTP 504, gRPC DEADLINE_EXCEEDED.
    Timeout,
    /// HTTP 429, gRPC RESOURCE_EXHAUSTED: the server holds too much already; retry later.
    TooMany,
    /// HTTP 401, gRPC UNAUTHENTICATED.
    Unauthenticated,
    /// HTTP 403, gRPC PERMISSION_DENIED.
    Forbidden,
}

/// A v2 error: status plus the client-facing text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V2Error {
    pub status: Status,
    pub message: String,
}

impl V2Error {
    pub fn new(status: Status, message: impl Into<String>) -> V2Error {
        V2Error {
            status,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> V2Error {
        V2Error::new(Status::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> V2Error {
        V2Error::new(Status::NotFound, message)
    }
}

impl From<ServeError> for V2Error {
    /// Bad input and failing Python stages are the client's request (400); overload and shutdown are 503; the
    /// request timeout is 504; model runtime failures and bugs are 500.
    fn from(err: ServeError) -> V2Error {
        let status = match &err {
            ServeError::InvalidInput(_) | ServeError::Stage(_) => Status::BadRequest,
            ServeError::Unavailable(_) | ServeError::Overloaded(_) => Status::Unavailable,
            ServeError::Timeout(_) => Status::Timeout,
            ServeError::Model(_) | ServeError::Config(_) | ServeError::Internal(_) => Status::Internal,
        };
        V2Error::new(status, err.message())
    }
}

/// A v2 model name and version resolved to a loaded servable version and method.
pub struct Resolved {
    /// The name as the client wrote it (`{servable}.{method}` or `{servable}`).
    pub name: String,
    pub servable: Arc<ServableVersion>,
    pub plan: Arc<MethodPlan>,
}

/// The servable part of a v2 model name (servable names hold no dots: they are Python package names).
pub fn servable_of(model: &str) -> &str {
    model.split_once('.').map_or(model, |(servable, _)| servable)
}

/// Parses a v2 version: "" is the newest (0), otherwise a positive integer.
pub fn parse_version(model: &str, version: &str) -> Result<u64, V2Error> {
    if version.is_empty() {
        return Ok(0);
    }
    match version.parse::<u64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(V2Error::bad(format!(
            "version '{version}' of model '{model}' is not a positive integer"
        ))),
    }
}

/// Finds the servable version and method a v2 model name and version address (the service resolves the name).
pub fn resolve(service: &Service, model: &str, version: &str) -> Result<Resolved, V2Error> {
    let number = parse_version(model, version)?;
    match service.route_v2(model, number) {
        Ok(Route { servable, plan }) => Ok(Resolved {
            name: model.to_owned(),
            servable,
            plan,
        }),
        Err(RouteError::NotReady(text)) => Err(V2Error::new(Status::Unavailable, text)),
        Err(RouteError::NotFound(text)) => Err(V2Error::not_found(text)),
    }
}

/// The v2 `max_batch_size` a method without model stages reports: the default rows per run of a symbolic batch
/// dimension. Like a model's, it is what runs together, not a limit: a request may carry up to `MAX_BATCH` rows.
pub const PYTHON_ONLY_MAX_BATCH_SIZE: usize = crate::batching::DEFAULT_MAX_BATCH_SIZE;

/// The v2 `max_batch_size` of a method: the smallest batch size of its models when every model stage batches,
/// `PYTHON_ONLY_MAX_BATCH_SIZE` without model stages, 0 when it is not batchable (see the module docs).
pub fn max_batch_size(plan: &MethodPlan) -> usize {
    let mut smallest: Option<usize> = None;
    for stage in &plan.spec.stages {
        if let StageKind::Model { model, subgraph } = stage.kind {
            let Some(queue) = plan.models.queue(model, subgraph) else {
                return 0;
            };
            if queue.batch_mode() == crate::batching::BatchMode::Whole {
                return 0;
            }
            smallest = Some(smallest.map_or(queue.batch_size(), |s| s.min(queue.batch_size())));
        }
    }
    smallest.unwrap_or(PYTHON_ONLY_MAX_BATCH_SIZE)
}

/// Whether a method's requests are batched together in model queues (v2 `dynamic_batching`): it batches and has
/// a model stage.
fn batches_in_model_queues(plan: &MethodPlan) -> bool {
    max_batch_size(plan) > 0
        && plan
            .spec
            .stages
            .iter()
            .any(|stage| matches!(stage.kind, StageKind::Model { .. }))
}

/// Per-instance dims of a model tensor: its file shape without the batch dimension when the model batches.
///
/// NOTE: inputs listed in `without_batch_dim_inputs` are not visible on the queue, so an input whose dim 0 is
/// neither symbolic nor the batch size is taken to be one of them (whole shape per instance).
fn instance_dims(queue: &crate::batching::ModelQueue, shape: &[i64], output: bool) -> Vec<i64> {
    use crate::batching::BatchMode;
    let batched = match queue.batch_mode() {
        BatchMode::Whole => false,
        BatchMode::Fixed(n) => output || matches!(shape.first(), Some(&d) if d == -1 || d == n as i64),
        BatchMode::Dynamic(_) => output || shape.first() == Some(&-1),
    };
    if batched && !shape.is_empty() {
        shape[1..].to_vec()
    } else {
        shape.to_vec()
    }
}

fn untyped(name: &str) -> TensorMeta {
    TensorMeta {
        name: name.to_owned(),
        dtype: None,
        dims: vec![-1],
    }
}

/// The metadata of a method input, from the first model stage that reads it directly.
fn input_meta(plan: &MethodPlan, index: usize) -> TensorMeta {
    let name = &plan.spec.inputs[index];
    for stage in &plan.spec.stages {
        let StageKind::Model { model, subgraph } = stage.kind else {
            continue;
        };
        let Some(position) = stage.inputs.iter().position(|s| *s == Source { stage: 0, index }) else {
            continue;
        };
        if let Some(queue) = plan.models.queue(model, subgraph)
            && let Some(io) = queue.signature().inputs.get(position)
        {
            return TensorMeta {
                name: name.clone(),
                dtype: Some(io.dtype),
                dims: instance_dims(queue, &io.shape, false),
            };
        }
    }
    untyped(name)
}

fn output_meta(plan: &MethodPlan, index: usize) -> TensorMeta {
    let name = &plan.output_names[index];
    let Some(source) = plan.spec.outputs.get(index) else {
        return untyped(name);
    };
    if source.stage == 0 {
        return TensorMeta {
            name: name.clone(),
            ..input_meta(plan, source.index)
        };
    }
    if let Some(StageKind::Model { model, subgraph }) = plan.spec.stages.get(source.stage - 1).map(|s| &s.kind)
        && let Some(queue) = plan.models.queue(*model, *subgraph)
        && let Some(io) = queue.signature().outputs.get(source.index)
    {
        return TensorMeta {
            name: name.clone(),
            dtype: Some(io.dtype),
            dims: instance_dims(queue, &io.shape, true),
        };
    }
    untyped(name)
}

/// Metadata and configuration of a resolved model.
pub fn describe(service: &Service, resolved: &Resolved) -> ModelDescription {
    let plan = &resolved.plan;
    let max_batch_size = max_batch_size(plan);
    let versions = service
        .registry
        .all()
        .iter()
        .filter(|v| v.name == resolved.servable.name && v.methods.contains_key(&plan.spec.name))
        .map(|v| v.version)
        .collect();
    let mut model_files = Vec::new();
    for stage in &plan.spec.stages {
        if let StageKind::Model { model, subgraph } = stage.kind
            && let Some(queue) = plan.models.queue(model, subgraph)
        {
            let file = queue.model().to_owned();
            if !model_files.contains(&file) {
                model_files.push(file);
            }
        }
    }
    ModelDescription {
        name: resolved.name.clone(),
        version: resolved.servable.version,
        versions,
        max_batch_size,
        dynamic_batching: batches_in_model_queues(plan),
        inputs: (0..plan.spec.inputs.len()).map(|i| input_meta(plan, i)).collect(),
        outputs: (0..plan.output_names.len()).map(|i| output_meta(plan, i)).collect(),
        model_files,
    }
}

/// An answered inference, plus what the ingress needs to record its encode time.
pub struct Answered {
    pub response: InferResponse,
    pub stats: Option<Arc<MethodStats>>,
    pub instances: usize,
}

/// Runs a decoded v2 request on a resolved model.
pub async fn infer(
    service: &Service,
    resolved: &Resolved,
    request: InferRequest,
    protocol: Protocol,
    decode: Duration,
) -> Result<Answered, V2Error> {
    let plan = &resolved.plan;
    let model = &resolved.name;
    let expected = &plan.spec.inputs;
    if let Some(extra) = request.inputs.iter().find(|i| !expected.contains(&i.name)) {
        return Err(V2Error::bad(format!(
            "unexpected input '{}' for model '{model}' (its inputs: {})",
            extra.name,
            expected.join(", ")
        )));
    }
    if let Some(missing) = expected
        .iter()
        .find(|name| !request.inputs.iter().any(|i| &i.name == *name))
    {
        return Err(V2Error::bad(format!(
            "model '{model}' needs input '{missing}' (its inputs: {})",
            expected.join(", ")
        )));
    }
    let output_names = plan.output_names.clone();
    if let Some(unknown) = request.outputs.iter().find(|o| !output_names.contains(&o.name)) {
        return Err(V2Error::bad(format!(
            "unknown output '{}' requested from model '{model}' (its outputs: {})",
            unknown.name,
            output_names.join(", ")
        )));
    }
    let batched = max_batch_size(plan) > 0;
    let instances: Vec<NamedInstance> = if batched {
        split_batch(request.inputs).map_err(|e| V2Error::bad(format!("model '{model}': {e}")))?
    } else {
        vec![request.inputs.into_iter().map(|i| (i.name, i.tensor)).collect()]
    };
    let count = instances.len();
    let (reply, stats) = service
        .predict_routed(&resolved.servable, plan, instances, protocol, decode)
        .await;
    let results = match reply {
        PredictReply::Failed(err) => return Err(err.into()),
        PredictReply::Instances { results, .. } => results,
    };
    let mut per_instance: Vec<Vec<Tensor>> = Vec::with_capacity(results.len());
    for result in results {
        per_instance.push(result.map_err(V2Error::from)?);
    }
    let tensors = if batched {
        join_batch(&output_names, per_instance).map_err(|e| V2Error::new(Status::Internal, e))?
    } else {
        per_instance.into_iter().next().unwrap_or_default()
    };
    let mut outputs: Vec<InferOutput> = output_names
        .iter()
        .zip(tensors)
        .map(|(name, tensor)| InferOutput {
            name: name.clone(),
            tensor,
            binary: request.binary_output,
        })
        .collect();
    if !request.outputs.is_empty() {
        let mut chosen = Vec::with_capacity(request.outputs.len());
        for wanted in &request.outputs {
            if let Some(output) = outputs.iter().find(|o| o.name == wanted.name) {
                chosen.push(InferOutput {
                    binary: wanted.binary.unwrap_or(request.binary_output),
                    ..output.clone()
                });
            }
        }
        outputs = chosen;
    }
    Ok(Answered {
        response: InferResponse {
            model_name: model.clone(),
            model_version: resolved.servable.version.to_string(),
            id: request.id,
            outputs,
        },
        stats,
        instances: count,
    })
}

/// Counts a request that failed before reaching its method (undecodable body) as a failure of the model it
/// addressed.
pub fn record_failure(service: &Service, resolved: &Resolved, protocol: Protocol, elapsed: Duration) {
    service
        .method_stats(&resolved.servable, &resolved.plan)
        .record(&RequestRecord {
            protocol,
            instances: 0,
            ok: false,
            decode: elapsed,
            predict: Duration::ZERO,
            python: Duration::ZERO,
        });
}

/// Statistics of one model (every loaded version when `version` is ""), or of every model when `model` is None.
pub fn statistics(service: &Service, model: Option<&str>, version: &str) -> Result<Vec<ModelStatsEntry>, V2Error> {
    let entry = |name: String, servable: &ServableVersion, method: &str| ModelStatsEntry {
        stats: service
            .metrics
            .method_if_seen(&servable.name, servable.version, method)
            .map(|s| s.snapshot())
            .unwrap_or_default(),
        name,
        version: servable.version,
    };
    let Some(model) = model else {
        let mut out = Vec::new();
        for servable in service.registry.all() {
            for method in servable.method_names() {
                out.push(entry(format!("{}.{method}", servable.name), &servable, &method));
            }
        }
        return Ok(out);
    };
    let resolved = resolve(service, model, version)?;
    let method = resolved.plan.spec.name.clone();
    if !version.is_empty() {
        return Ok(vec![entry(model.to_owned(), &resolved.servable, &method)]);
    }
    Ok(service
        .registry
        .all()
        .iter()
        .filter(|v| v.name == resolved.servable.name && v.methods.contains_key(&method))
        .map(|v| entry(model.to_owned(), v, &method))
        .collect())
}

/// The repository index: every loaded servable version (READY) and every servable of the repository that is not
/// loaded (UNAVAILABLE, unless `ready_only`; a servable that failed to load gives its error as the reason).
pub async fn index(service: &Service, ready_only: bool) -> Result<Vec<IndexEntry>, V2Error> {
    let mut names = service.repository_names().await.map_err(V2Error::from)?;
    let loaded = service.registry.all();
    let failures = service.registry.failures();
    for (name, _) in &failures {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut entries: Vec<IndexEntry> = loaded
        .iter()
        .map(|v| IndexEntry {
            name: v.name.clone(),
            version: v.version.to_string(),
            state: "READY",
            reason: String::new(),
        })
        .collect();
    if !ready_only {
        for name in names {
            if !loaded.iter().any(|v| v.name == name) {
                let reason = failures.iter().find(|(failed, _)| *failed == name).map_or_else(
                    || "unloaded".to_owned(),
                    |(_, reason)| format!("failed to load: {reason}"),
                );
                entries.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason,
                });
            }
        }
    }
    entries.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(entries)
}

/// The header (REST) and metadata key (gRPC) that carries the repository API key, as `Bearer <key>`.
pub const REPOSITORY_KEY_HEADER: &str = "authorization";

/// Load and unload are allowed only with a repository (`--model-control-mode explicit`) and, when it has an API key,
/// with that key presented as `Bearer <key>` (compared in constant time).
pub fn authorize_repository(service: &Service, presented: Option<&[u8]>) -> Result<(), V2Error> {
    let Some(access) = service.repository_access() else {
        return Err(V2Error::new(
            Status::Forbidden,
            "model load and unload are disabled on this server (model control mode 'none', the default): start it \
             with `rustserve start --model-control-mode explicit` to allow them",
        ));
    };
    let Some(key) = access.api_key.as_deref() else {
        return Ok(());
    };
    let token = presented.and_then(bearer_token).unwrap_or_default();
    if bool::from(subtle::ConstantTimeEq::ct_eq(token, key.as_bytes())) {
        Ok(())
    } else {
        Err(V2Error::new(
            Status::Unauthenticated,
            "model load and unload need this server's repository API key: send it as `authorization: Bearer <key>` \
             (an HTTP header, or gRPC metadata)",
        ))
    }
}

/// The token of an `authorization` value `Bearer <token>` (the scheme's case ignored).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| value[7..].trim_ascii())
}

/// The first load parameter rustserve refuses: `config` or a `file:<path>` override (names compared without case),
/// since servables load from the repository directory only.
pub fn refused_load_parameter<'a>(mut keys: impl Iterator<Item = &'a String>) -> Result<(), V2Error> {
    match keys.find(|k| k.eq_ignore_ascii_case("config") || k.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("file:")))
    {
        Some(key) => Err(V2Error::bad(format!(
            "load parameter '{key}' is not supported: rustserve loads servables from the repository directory only"
        ))),
        None => Ok(()),
    }
}

/// Loads (or reloads) the servable of `model` from the repository.
pub async fn load(service: &Service, model: &str) -> Result<(), V2Error> {
    let servable = servable_of(model);
    let names = service.repository_names().await.map_err(V2Error::from)?;
    if !names.iter().any(|n| n == servable) {
        // NOTE: the text never lists the repository: its folder names are the operator's, not the client's.
        return Err(V2Error::not_found(format!(
            "model '{model}' is not in the model repository of this server"
        )));
    }
    service.load_servable(servable).await.map_err(|err| match err {
        ServeError::Config(text) | ServeError::InvalidInput(text) => {
            V2Error::bad(format!("failed to load '{servable}': {text}"))
        }
        other => other.into(),
    })?;
    Ok(())
}

/// Unloads the servable of `model` (every version).
pub async fn unload(service: &Service, model: &str) -> Result<(), V2Error> {
    let servable = servable_of(model);
    if service.unload_servable(servable).await {
        Ok(())
    } else {
        Err(V2Error::not_found(format!("model '{model}' is not loaded")))
    }
}

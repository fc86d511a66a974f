//! The one entry point every ingress calls: route a decoded request to its servable version and method,
//! check the request as a whole (instance count, input names, in-flight limit), run the method, and hand
//! back per-instance results. Protocol-free: codecs do the wire work on either side.
//!
//! It also owns what several ingresses share: the metrics registry (every answered request is recorded here, by
//! protocol), the serving / stopping state behind the readiness endpoints, and the optional model repository that
//! loads and unloads servables at run time.

use crate::error::ServeError;
use crate::metrics::{BusyClock, MethodStats, Metrics, Protocol, QueueDepth, RequestRecord, StuckCall};
use crate::pipeline::{FunctionCall, MethodPlan, PythonStages, run_method};
use crate::request::{InstanceResult, MethodRef, PredictReply, PredictRequest};
use crate::servable::ServableVersion;
use crate::servable::registry::Registry;
use crate::spec::StageKind;
use crate::tensor::NamedInstance;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// MindSpore's default `set_max_enqueued_requests`.
pub const DEFAULT_MAX_ENQUEUED_REQUESTS: usize = 10_000;

/// Default bound on instances queued for one model (subgraph) before requests using it are refused.
pub const DEFAULT_MAX_QUEUED_INSTANCES: usize = 10_000;

/// Default per-request timeout: generous, so only a hung stage or an overloaded server ever reaches it.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_mins(5);

tokio::task_local! {
    /// Nanoseconds the current request spent in Python stages (set by `predict_observed`, added to by `TimedPython`).
    static PYTHON_NS: Arc<AtomicU64>;
}

/// Loads servables at run time (the model-repository extension); implemented by the Python bridge, which imports
/// servable_config.py. Every call runs off the tokio workers.
pub trait Repository: Send + Sync {
    /// Names of the servables the repository holds, loaded or not.
    fn names(&self) -> BoxFuture<'static, Result<Vec<String>, ServeError>>;
    /// Loads every version of servable `name` from the repository (not yet serving).
    fn load(&self, name: String) -> BoxFuture<'static, Result<Vec<ServableVersion>, ServeError>>;
}

/// The model repository behind load and unload, and the API key that guards them (none: anyone who reaches the port).
#[derive(Clone)]
pub struct RepositoryAccess {
    pub repository: Arc<dyn Repository>,
    pub api_key: Option<String>,
}

/// Routing table plus the executors requests need.
pub struct Service {
    pub registry: Registry,
    pub python: Arc<dyn PythonStages>,
    pub metrics: Arc<Metrics>,
    /// Requests in flight beyond this fail at once (MindSpore's `set_max_enqueued_requests`).
    max_enqueued: AtomicUsize,
    in_flight: AtomicUsize,
    /// Per model queue: requests needing a model with this many instances queued fail fast (`set_max_queued_instances`).
    max_queued_instances: AtomicUsize,
    /// Per-request timeout in milliseconds (`set_request_timeout`).
    request_timeout_ms: AtomicU64,
    stopping: AtomicBool,
    /// Set in `--model-control-mode explicit` only: without it, load and unload are refused.
    repository: RwLock<Option<RepositoryAccess>>,
    /// One repository load or unload at a time.
    repository_lock: tokio::sync::Mutex<()>,
    /// Bytes of request bodies in flight, over every listener.
    pub bytes_in_flight: Arc<crate::ingress::budget::ByteBudget>,
}

/// Decrements the in-flight count even when the request future is dropped (client went away).
struct InFlight<'a>(&'a AtomicUsize);

/// Where a v2 model name leads: a loaded servable version and one of its methods.
pub struct Route {
    pub servable: Arc<ServableVersion>,
    pub plan: Arc<MethodPlan>,
}

/// Why a v2 model name leads nowhere; the text names the model as the client wrote it.
#[derive(Debug)]
pub enum RouteError {
    /// The servable is known but failed to load.
    NotReady(String),
    /// No such servable, version or method.
    NotFound(String),
}

/// How and when a request arrived, for its record: the protocol, the ingress's decode time, and when it reached the
/// service.
struct Arrival {
    protocol: Protocol,
    decode: Duration,
    started: Instant,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wraps the Python executor to time its jobs: the executor's busy time, and each request's time in Python stages.
struct TimedPython {
    inner: Arc<dyn PythonStages>,
    busy: Arc<BusyClock>,
}

impl PythonStages for TimedPython {
    fn submit(&self, call: FunctionCall) -> BoxFuture<'static, Vec<InstanceResult>> {
        // The job is queued on the Python thread inside `submit`, so its busy time starts here, not at first poll.
        let guard = self.busy.enter();
        let started = Instant::now();
        let answer = self.inner.submit(call);
        Box::pin(async move {
            let results = answer.await;
            drop(guard);
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            // Outside `predict_observed` (e.g. a test calling the pipeline directly) there is no request to charge.
            let _ = PYTHON_NS.try_with(|total| total.fetch_add(ns, Ordering::Relaxed));
            results
        })
    }

    fn stuck(&self) -> Option<StuckCall> {
        self.inner.stuck()
    }
}

impl Service {
    pub fn new(python: Arc<dyn PythonStages>, max_enqueued: usize) -> Service {
        let metrics = Arc::new(Metrics::default());
        let python = Arc::new(TimedPython {
            inner: python,
            busy: metrics.python_busy.clone(),
        });
        Service {
            registry: Registry::default(),
            python,
            metrics,
            max_enqueued: AtomicUsize::new(max_enqueued),
            in_flight: AtomicUsize::new(0),
            max_queued_instances: AtomicUsize::new(DEFAULT_MAX_QUEUED_INSTANCES),
            request_timeout_ms: AtomicU64::new(DEFAULT_REQUEST_TIMEOUT.as_millis() as u64),
            stopping: AtomicBool::new(false),
            repository: RwLock::default(),
            repository_lock: tokio::sync::Mutex::const_new(()),
            bytes_in_flight: Arc::default(),
        }
    }

    /// Sets how many requests may be in flight (>= 1); further requests fail at once.
    pub fn set_max_enqueued_requests(&self, limit: usize) {
        self.max_enqueued.store(limit.max(1), Ordering::Relaxed);
    }

    /// Sets how long one request may run (queueing included) before it fails; its queued work is then dropped.
    pub fn set_request_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        self.request_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.load(Ordering::Relaxed))
    }

    /// Sets the per-model queue bound: while a model (subgraph) a method runs has `limit` instances queued, requests
    /// for that method fail at once with `Overloaded` instead of queueing more.
    pub fn set_max_queued_instances(&self, limit: usize) {
        self.max_queued_instances.store(limit.max(1), Ordering::Relaxed);
    }

    /// The first model queue of `plan` that has no room for `count` more instances, as a client-facing error: the
    /// instances of one request count against the limit, so one huge request cannot take every model's queue.
    fn full_model_queue(&self, plan: &MethodPlan, count: usize) -> Option<ServeError> {
        let limit = self.max_queued_instances.load(Ordering::Relaxed);
        plan.spec.stages.iter().find_map(|stage| {
            let StageKind::Model { model, subgraph } = stage.kind else {
                return None;
            };
            let queue = plan.models.queue(model, subgraph)?;
            if count > limit {
                return Some(ServeError::InvalidInput(format!(
                    "Serving Error: the request has {count} instances, more than the {limit} that may queue for \
                     model '{}' (servable: {}, version: {}, method: {}); send fewer per request, or raise the limit \
                     with --max-queued-instances (server.set_max_queued_instances)",
                    queue.model(),
                    plan.servable,
                    plan.version,
                    plan.spec.name
                )));
            }
            let depth = queue.queue_depth();
            (depth + count > limit).then(|| {
                ServeError::Overloaded(format!(
                    "Serving Error: the queue of model '{}' is full ({depth} instances queued, limit {limit}), \
                     servable: {}, version: {}, method: {}; retry later",
                    queue.model(),
                    plan.servable,
                    plan.version,
                    plan.spec.name
                ))
            })
        })
    }

    /// Resolves a KServe v2 model name and version (0 = newest): `{servable}.{method}`, or `{servable}` alone
    /// when the servable has exactly one method (servable names hold no dots: they are Python package names).
    pub fn route_v2(&self, model: &str, version: u64) -> Result<Route, RouteError> {
        let (servable_name, method) = match model.split_once('.') {
            Some((servable, method)) => (servable, Some(method)),
            None => (model, None),
        };
        let Some(servable) = self.registry.get(servable_name, version) else {
            if let Some(reason) = self.registry.failure(servable_name) {
                // Known but not serving: the load error tells the caller why, instead of "unknown".
                return Err(RouteError::NotReady(format!(
                    "model '{model}' is not ready: servable '{servable_name}' failed to load: {reason}"
                )));
            }
            return Err(RouteError::NotFound(
                if version > 0 && self.registry.get(servable_name, 0).is_some() {
                    format!("version {version} of model '{model}' is not loaded")
                } else {
                    format!("unknown model '{model}'")
                },
            ));
        };
        let plan = match method {
            Some(method) => servable.methods.get(method).cloned().ok_or_else(|| {
                RouteError::NotFound(format!(
                    "unknown model '{model}': servable '{servable_name}' has no method '{method}' (its methods: {})",
                    servable.method_names().join(", ")
                ))
            })?,
            None if servable.methods.len() != 1 => {
                let names: Vec<String> = servable
                    .method_names()
                    .iter()
                    .map(|m| format!("{servable_name}.{m}"))
                    .collect();
                return Err(RouteError::NotFound(format!(
                    "unknown model '{model}': servable '{servable_name}' has several methods, address one of {}",
                    names.join(", ")
                )));
            }
            None => servable
                .methods
                .values()
                .next()
                .cloned()
                .ok_or_else(|| RouteError::NotFound(format!("unknown model '{model}'")))?,
        };
        Ok(Route { servable, plan })
    }

    /// Answers one predict request (recorded with protocol `Other`).
    pub async fn predict(&self, request: PredictRequest) -> PredictReply {
        self.predict_via(request, Protocol::Other).await
    }

    /// Answers one predict request that came in over `protocol`.
    pub async fn predict_via(&self, request: PredictRequest, protocol: Protocol) -> PredictReply {
        self.predict_observed(request, protocol, Duration::ZERO).await.0
    }

    /// Answers one predict request and records it; `decode` is the time the ingress spent decoding it. Also returns
    /// the method's statistics (when the request reached a method) so the ingress can add its encode time.
    pub async fn predict_observed(
        &self,
        request: PredictRequest,
        protocol: Protocol,
        decode: Duration,
    ) -> (PredictReply, Option<Arc<MethodStats>>) {
        let (_in_flight, arrival) = match self.enter(protocol, decode) {
            Ok(entered) => entered,
            Err(overloaded) => return (overloaded, None),
        };
        let PredictRequest { target, instances } = request;
        let Some(servable) = self.registry.get(&target.servable, target.version) else {
            self.metrics.reject(protocol);
            return (
                PredictReply::Failed(ServeError::InvalidInput(format!(
                    "Request {}, servable is not available",
                    target.spec_text()
                ))),
                None,
            );
        };
        let Some(plan) = servable.methods.get(&target.method).cloned() else {
            self.metrics.reject(protocol);
            return (
                PredictReply::Failed(ServeError::InvalidInput(format!(
                    "Request {}, method is not available",
                    target.spec_text()
                ))),
                None,
            );
        };
        self.run_plan(&servable, &plan, &target, instances, arrival).await
    }

    /// Answers a request already routed to `plan` of `servable` (the v2 ingress resolves its model name once, with
    /// the v2 rules and texts), with the same limits and records as `predict_observed`.
    pub async fn predict_routed(
        &self,
        servable: &ServableVersion,
        plan: &Arc<MethodPlan>,
        instances: Vec<NamedInstance>,
        protocol: Protocol,
        decode: Duration,
    ) -> (PredictReply, Option<Arc<MethodStats>>) {
        let (_in_flight, arrival) = match self.enter(protocol, decode) {
            Ok(entered) => entered,
            Err(overloaded) => return (overloaded, None),
        };
        let target = MethodRef {
            servable: servable.name.clone(),
            method: plan.spec.name.clone(),
            version: servable.version,
        };
        self.run_plan(servable, plan, &target, instances, arrival).await
    }

    /// Counts a request in flight, from now; refuses it when `max_enqueued` are already.
    fn enter(&self, protocol: Protocol, decode: Duration) -> Result<(InFlight<'_>, Arrival), PredictReply> {
        let arrival = Arrival {
            protocol,
            decode,
            started: Instant::now(),
        };
        let previous = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(&self.in_flight);
        let max_enqueued = self.max_enqueued.load(Ordering::Relaxed);
        if previous >= max_enqueued {
            self.metrics.reject(protocol);
            return Err(PredictReply::Failed(ServeError::Overloaded(format!(
                "Serving Error: enqueued requests count exceeds the limit {max_enqueued}"
            ))));
        }
        Ok((guard, arrival))
    }

    /// Runs a routed request's method: input names, queue room, the request timeout, then the record.
    async fn run_plan(
        &self,
        servable: &ServableVersion,
        plan: &Arc<MethodPlan>,
        target: &MethodRef,
        instances: Vec<NamedInstance>,
        arrival: Arrival,
    ) -> (PredictReply, Option<Arc<MethodStats>>) {
        let Arrival {
            protocol,
            decode,
            started,
        } = arrival;
        let stats = self.method_stats(servable, plan);
        crate::trace::set_target(&servable.name, &plan.spec.name, servable.version);
        let count = instances.len();
        let python_ns = Arc::new(AtomicU64::new(0));
        let reply = PYTHON_NS
            .scope(python_ns.clone(), async {
                if instances.is_empty() {
                    return PredictReply::Failed(ServeError::InvalidInput(format!(
                        "Instances count of request cannot be 0, servable: {}, method: {}",
                        target.servable, target.method
                    )));
                }
                let mut ordered = Vec::with_capacity(instances.len());
                for mut instance in instances {
                    let mut inputs = Vec::with_capacity(plan.spec.inputs.len());
                    for name in &plan.spec.inputs {
                        // Extra input names are ignored, as in MindSpore.
                        match instance.remove(name) {
                            Some(tensor) => inputs.push(tensor),
                            None => {
                                return PredictReply::Failed(ServeError::InvalidInput(format!(
                                    "Cannot find input {name} in instance input , servable {}, method {}",
                                    target.servable, target.method
                                )));
                            }
                        }
                    }
                    ordered.push(inputs);
                }
                if let Some(full) = self.full_model_queue(plan, ordered.len()) {
                    return PredictReply::Failed(full);
                }
                let timeout = self.request_timeout();
                // Dropping the method's future on timeout drops its batcher receivers and Python tickets, so work
                // still queued for this request is skipped rather than run for nobody.
                let Ok(results) = tokio::time::timeout(timeout, run_method(plan, self.python.as_ref(), ordered)).await
                else {
                    return PredictReply::Failed(ServeError::Timeout(format!(
                        "Serving Error: request timed out after {:.3} s (request timeout), servable: {}, method: {}",
                        timeout.as_secs_f64(),
                        target.servable,
                        target.method
                    )));
                };
                PredictReply::Instances {
                    output_names: plan.output_names.clone(),
                    results,
                }
            })
            .await;
        let ok = match &reply {
            PredictReply::Failed(_) => false,
            PredictReply::Instances { results, .. } => results.iter().all(Result::is_ok),
        };
        if !ok && crate::trace::enabled() {
            let failed = match &reply {
                PredictReply::Failed(err) => Some(err),
                PredictReply::Instances { results, .. } => results.iter().find_map(|r| r.as_ref().err()),
            };
            if let Some(err) = failed {
                crate::trace::set_error(err.message());
            }
        }
        stats.record(&RequestRecord {
            protocol,
            instances: count,
            ok,
            decode,
            predict: started.elapsed(),
            python: Duration::from_nanos(python_ns.load(Ordering::Relaxed)),
        });
        (reply, Some(stats))
    }

    /// The metrics of one method of a loaded servable version (created on first use).
    pub fn method_stats(&self, servable: &ServableVersion, plan: &MethodPlan) -> Arc<MethodStats> {
        let has = |python: bool| {
            plan.spec
                .stages
                .iter()
                .any(|s| matches!(s.kind, StageKind::Function { .. }) == python)
        };
        self.metrics
            .method(&servable.name, servable.version, &plan.spec.name, has(true), has(false))
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Ready to serve inferences: true until `stop` begins (the readiness endpoints answer "not ready" after that).
    pub fn is_ready(&self) -> bool {
        !self.stopping.load(Ordering::Acquire)
    }

    /// Whether the server is ready for everything it was started to serve (v2 ServerReady, `/v2/health/ready`,
    /// grpc.health.v1): the reason when not (stopping, a servable failed to load or was unloaded).
    pub fn readiness(&self) -> Result<(), String> {
        if !self.is_ready() {
            return Err("the server is stopping".into());
        }
        if let Some(stuck) = self.python.stuck() {
            return Err(stuck.describe());
        }
        if let Some(reason) = crate::distributed::not_ready_reason(None) {
            return Err(reason);
        }
        self.registry.not_ready_reason().map_or(Ok(()), Err)
    }

    /// Whether a loaded servable can answer (v2 model readiness): not while stopping, nor while its own Python stage
    /// is stuck on the server's Python thread.
    pub fn servable_readiness(&self, servable: &str) -> Result<(), String> {
        if !self.is_ready() {
            return Err("the server is stopping".into());
        }
        match self.python.stuck() {
            Some(stuck) if stuck.servable == servable => Err(stuck.describe()),
            _ => crate::distributed::not_ready_reason(Some(servable)).map_or(Ok(()), Err),
        }
    }

    /// Marks the server as stopping (not ready), before its listeners drain.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The depth of every loaded model queue, for the metrics endpoint.
    pub fn queue_depths(&self) -> Vec<QueueDepth> {
        let mut out = Vec::new();
        for servable in self.registry.all() {
            let mut keys: Vec<(&String, &usize)> = servable.models.by_key.iter().collect();
            keys.sort();
            for (key, &index) in keys {
                let Some(subgraphs) = servable.models.queues.get(index) else {
                    continue;
                };
                for (subgraph, queue) in subgraphs.iter().enumerate() {
                    out.push(QueueDepth {
                        servable: servable.name.clone(),
                        version: servable.version,
                        model: key.clone(),
                        subgraph,
                        depth: queue.queue_depth(),
                    });
                }
            }
        }
        out
    }

    /// The Prometheus text exposition of everything recorded so far.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .render(&self.queue_depths(), self.in_flight(), self.python.stuck().as_ref())
    }

    /// Installs the repository that `load_servable` reads from (replacing any earlier one): load and unload are
    /// allowed from now on, to clients that present `api_key` when there is one.
    pub fn set_repository(&self, repository: Arc<dyn Repository>, api_key: Option<String>) {
        *self
            .repository
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(RepositoryAccess { repository, api_key });
    }

    /// The repository and its API key, once `set_repository` was called.
    pub fn repository_access(&self) -> Option<RepositoryAccess> {
        self.repository
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn repository(&self) -> Option<Arc<dyn Repository>> {
        self.repository_access().map(|access| access.repository)
    }

    /// Names of the servables in the repository; empty without one.
    pub async fn repository_names(&self) -> Result<Vec<String>, ServeError> {
        match self.repository() {
            Some(repository) => repository.names().await,
            None => Ok(Vec::new()),
        }
    }

    /// Connects every model batch queue of `servable` to its batch metrics (size, queue wait, run time). Call before
    /// the version enters the registry.
    pub fn observe_batches(&self, servable: &crate::servable::ServableVersion) {
        for (key, &model) in &servable.models.by_key {
            for (subgraph, queue) in servable.models.queues.get(model).into_iter().flatten().enumerate() {
                queue.set_observer(self.metrics.model(&servable.name, servable.version, key, subgraph));
            }
        }
    }

    /// Loads (or reloads) every version of servable `name` from the repository and swaps them in at once: requests
    /// already running finish on the versions they started with, other servables are not touched. Errors are
    /// `InvalidInput` for a name the repository does not hold (the text says so) and `Config` for a failed load.
    pub async fn load_servable(&self, name: &str) -> Result<Vec<u64>, ServeError> {
        let Some(repository) = self.repository() else {
            return Err(ServeError::Unavailable(
                "the server has no model repository: start it with `rustserve start --dir DIR`".into(),
            ));
        };
        let _one_at_a_time = self.repository_lock.lock().await;
        let versions = repository.load(name.to_owned()).await?;
        let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
        for version in &versions {
            self.observe_batches(version);
        }
        let old = self.registry.replace(name, versions);
        retire(old);
        tracing::info!("servable '{name}' loaded from the repository, versions {numbers:?}");
        Ok(numbers)
    }

    /// Stops serving servable `name` (every version); requests already running finish first. False when it was
    /// not loaded.
    pub async fn unload_servable(&self, name: &str) -> bool {
        let _one_at_a_time = self.repository_lock.lock().await;
        let old = self.registry.remove(name);
        let found = !old.is_empty();
        retire(old);
        if found {
            tracing::info!("servable '{name}' unloaded");
        }
        found
    }
}

/// Drops replaced servable versions on a blocking thread: the last handle's drop joins the model threads.
fn retire(old: Vec<Arc<ServableVersion>>) {
    if old.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(move || drop(old));
        }
        Err(_) => drop(old),
    }
}

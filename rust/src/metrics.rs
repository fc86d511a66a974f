//! Request, stage, batch and queue metrics: a small registry of atomics and fixed-bucket histograms, rendered by hand
//! in the Prometheus text format (`GET /metrics`), plus the per-method counters behind the Open Inference Protocol's
//! statistics extension (`/v2/models/{m}/stats`, gRPC `ModelStatistics`).
//!
//! Recording is lock-free on the request path except for one read lock to find a method's counters (nested maps, so
//! the lookup borrows the request's names instead of allocating a key) and one short mutex for the per-batch-size
//! table of the statistics extension.

use crate::pipeline::StuckCall;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The wire a request came in on (the `protocol` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    MindsporeGrpc,
    MindsporeRest,
    KserveGrpc,
    KserveRest,
    /// Called from inside the process (tests, tools).
    Other,
}

impl Protocol {
    const ALL: [Protocol; 5] = [
        Protocol::MindsporeGrpc,
        Protocol::MindsporeRest,
        Protocol::KserveGrpc,
        Protocol::KserveRest,
        Protocol::Other,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::MindsporeGrpc => "mindspore_grpc",
            Protocol::MindsporeRest => "mindspore_rest",
            Protocol::KserveGrpc => "kserve_grpc",
            Protocol::KserveRest => "kserve_rest",
            Protocol::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds of the duration histograms, in nanoseconds (100 µs .. 10 s).
const DURATION_BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of the size histograms (instances per request or per batch).
const SIZE_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// A fixed-bucket histogram of integer observations (nanoseconds or counts), rendered in seconds or counts.
pub struct Histogram {
    bounds: &'static [u64],
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
    /// Observations per rendered unit (1e9 for nanoseconds rendered as seconds).
    per_unit: f64,
}

impl Histogram {
    fn new(bounds: &'static [u64], per_unit: f64) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            per_unit,
        }
    }

    fn durations() -> Histogram {
        Histogram::new(&DURATION_BOUNDS_NS, 1e9)
    }

    fn sizes() -> Histogram {
        Histogram::new(&SIZE_BOUNDS, 1.0)
    }

    /// Records one observation.
    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    // Counts and nanosecond sums stay far below 2^52 (52 days of request time), so f64 renders them exactly.
    #[allow(clippy::cast_precision_loss)]
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = number(*bound as f64 / self.per_unit);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = number(self.sum.load(Ordering::Relaxed) as f64 / self.per_unit);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// A Prometheus sample value: integers without a fraction, others in Rust's shortest round-trip form.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// Escapes a label value (backslash, double quote, newline), as the text format requires.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Count and total nanoseconds, as the statistics extension's `StatisticDuration`.
#[derive(Default)]
pub struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    fn add(&self, count: u64, ns: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// (count, ns).
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

/// Per-batch-size totals of the statistics extension (a "batch" is one request of that many instances).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStat {
    pub count: u64,
    pub input_ns: u64,
    pub infer_ns: u64,
    pub output_ns: u64,
}

/// A snapshot of one method's statistics-extension counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodSnapshot {
    /// Milliseconds since the epoch of the last successful request, 0 when none.
    pub last_inference_ms: u64,
    /// Instances answered successfully.
    pub inference_count: u64,
    /// Successful method executions (requests).
    pub execution_count: u64,
    /// (count, ns) each.
    pub success: (u64, u64),
    pub fail: (u64, u64),
    pub queue: (u64, u64),
    pub compute_input: (u64, u64),
    pub compute_infer: (u64, u64),
    pub compute_output: (u64, u64),
    /// Keyed by instances per request.
    pub batches: Vec<(u64, BatchStat)>,
}

/// Everything recorded for one method of one servable version.
pub struct MethodStats {
    has_python: bool,
    has_model: bool,
    requests: [AtomicU64; 5],
    failures: [AtomicU64; 5],
    latency: [Histogram; 5],
    instances: Histogram,
    python_stage: Histogram,
    model_stage: Histogram,
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: DurationStat,
    fail: DurationStat,
    queue: DurationStat,
    compute_input: DurationStat,
    compute_infer: DurationStat,
    compute_output: DurationStat,
    batches: Mutex<BTreeMap<u64, BatchStat>>,
}

/// What one answered request contributes (see `MethodStats::record`).
#[derive(Clone, Copy, Debug)]
pub struct RequestRecord {
    pub protocol: Protocol,
    pub instances: usize,
    pub ok: bool,
    /// Decoding the wire request into instances (before `Service::predict`).
    pub decode: Duration,
    /// `Service::predict` from routing to the last stage.
    pub predict: Duration,
    /// Time inside Python stages (wall time, including waiting for the Python thread).
    pub python: Duration,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl MethodStats {
    fn new(has_python: bool, has_model: bool) -> MethodStats {
        MethodStats {
            has_python,
            has_model,
            requests: Default::default(),
            failures: Default::default(),
            latency: std::array::from_fn(|_| Histogram::durations()),
            instances: Histogram::sizes(),
            python_stage: Histogram::durations(),
            model_stage: Histogram::durations(),
            last_inference_ms: AtomicU64::new(0),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            success: DurationStat::default(),
            fail: DurationStat::default(),
            queue: DurationStat::default(),
            compute_input: DurationStat::default(),
            compute_infer: DurationStat::default(),
            compute_output: DurationStat::default(),
            batches: Mutex::default(),
        }
    }

    /// Records one answered request. The encode time of the reply is added later with `record_output`.
    pub fn record(&self, r: &RequestRecord) {
        let p = r.protocol.index();
        let (decode, predict) = (nanos(r.decode), nanos(r.predict));
        self.requests[p].fetch_add(1, Ordering::Relaxed);
        self.latency[p].observe(decode.saturating_add(predict));
        if !r.ok {
            self.failures[p].fetch_add(1, Ordering::Relaxed);
            self.fail.add(1, decode.saturating_add(predict));
            return;
        }
        let python = nanos(r.python).min(predict);
        self.instances.observe(r.instances as u64);
        if self.has_python {
            self.python_stage.observe(python);
        }
        if self.has_model {
            // NOTE: the model stages' wall time, batch queue wait included: everything that is not Python.
            self.model_stage.observe(predict - python);
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.inference_count.fetch_add(r.instances as u64, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.success.add(1, decode.saturating_add(predict));
        // Requests are never held back before their stages run, so the scheduling queue time is zero; waiting in a
        // model's batch queue is part of compute_infer.
        self.queue.add(1, 0);
        self.compute_input.add(1, decode);
        self.compute_infer.add(1, predict);
        self.compute_output.add(1, 0);
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = batches.entry(r.instances as u64).or_default();
        entry.count += 1;
        entry.input_ns += decode;
        entry.infer_ns += predict;
    }

    /// Adds the time spent encoding a successful reply of `instances` instances.
    pub fn record_output(&self, instances: usize, encode: Duration) {
        let ns = nanos(encode);
        self.compute_output.add(0, ns);
        self.success.add(0, ns);
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = batches.get_mut(&(instances as u64)) {
            entry.output_ns += ns;
        }
    }

    /// The statistics-extension counters.
    pub fn snapshot(&self) -> MethodSnapshot {
        let batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        MethodSnapshot {
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            success: self.success.get(),
            fail: self.fail.get(),
            queue: self.queue.get(),
            compute_input: self.compute_input.get(),
            compute_infer: self.compute_infer.get(),
            compute_output: self.compute_output.get(),
            batches: batches.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }
}

/// What a model's batch thread reports after each run (see `BatchObserver`).
#[derive(Clone, Copy, Debug)]
pub struct BatchRun {
    /// Instances in the batch (without padding rows).
    pub instances: usize,
    /// How long the oldest instance of the batch waited in the queue.
    pub queue_wait: Duration,
    /// The model run itself (stacking, ONNX Runtime, splitting).
    pub run: Duration,
    pub ok: bool,
}

/// Receives one call per batch a model queue runs. Implemented by `ModelStats`; a batching queue that holds one
/// calls it from its batch thread (cheap: a few atomic adds).
pub trait BatchObserver: Send + Sync {
    fn batch_done(&self, run: &BatchRun);
}

/// Batch metrics of one model file (subgraph) of one servable version.
pub struct ModelStats {
    batch_size: Histogram,
    queue_wait: Histogram,
    run: Histogram,
    failures: AtomicU64,
}

impl BatchObserver for ModelStats {
    fn batch_done(&self, run: &BatchRun) {
        self.batch_size.observe(run.instances as u64);
        self.queue_wait.observe(nanos(run.queue_wait));
        self.run.observe(nanos(run.run));
        if !run.ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One live model queue's depth, read at scrape time.
pub struct QueueDepth {
    pub servable: String,
    pub version: u64,
    pub model: String,
    pub subgraph: usize,
    pub depth: usize,
}

/// Wall time during which the Python executor had at least one job (its busy time; jobs run one at a time).
#[derive(Default)]
pub struct BusyClock {
    state: Mutex<(usize, Option<Instant>)>,
    total_ns: AtomicU64,
}

/// Marks one job in flight on a `BusyClock` until dropped.
pub struct BusyGuard(Arc<BusyClock>);

impl BusyClock {
    /// Starts one job; the clock runs while any guard is alive.
    pub fn enter(self: &Arc<Self>) -> BusyGuard {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 == 0 {
            state.1 = Some(Instant::now());
        }
        state.0 += 1;
        BusyGuard(self.clone())
    }

    /// Busy time so far, the running stretch included.
    pub fn total(&self) -> Duration {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let running = state.1.map_or(Duration::ZERO, |since| since.elapsed());
        Duration::from_nanos(self.total_ns.load(Ordering::Relaxed)) + running
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(1);
        if state.0 == 0
            && let Some(since) = state.1.take()
        {
            self.0.total_ns.fetch_add(nanos(since.elapsed()), Ordering::Relaxed);
        }
    }
}

type ByMethod<T> = HashMap<String, HashMap<u64, HashMap<String, Arc<T>>>>;

/// The server's metrics registry; one per `Service`.
#[derive(Default)]
pub struct Metrics {
    methods: RwLock<ByMethod<MethodStats>>,
    models: RwLock<ByMethod<ModelStats>>,
    rejected: [AtomicU64; 5],
    /// Python executor busy time.
    pub python_busy: Arc<BusyClock>,
}

fn lookup<T>(map: &RwLock<ByMethod<T>>, servable: &str, version: u64, name: &str) -> Option<Arc<T>> {
    let map = map.read().unwrap_or_else(PoisonError::into_inner);
    map.get(servable)?.get(&version)?.get(name).cloned()
}

fn insert<T>(map: &RwLock<ByMethod<T>>, servable: &str, version: u64, name: &str, make: impl FnOnce() -> T) -> Arc<T> {
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    map.entry(servable.to_owned())
        .or_default()
        .entry(version)
        .or_default()
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

/// Sorted (servable, version, name, value) rows of a nested map.
fn rows<T>(map: &RwLock<ByMethod<T>>) -> Vec<(String, u64, String, Arc<T>)> {
    let map = map.read().unwrap_or_else(PoisonError::into_inner);
    let mut out: Vec<_> = map
        .iter()
        .flat_map(|(s, versions)| {
            versions.iter().flat_map(move |(v, names)| {
                names
                    .iter()
                    .map(move |(n, stats)| (s.clone(), *v, n.clone(), stats.clone()))
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.0, a.1, &a.2).cmp(&(&b.0, b.1, &b.2)));
    out
}

impl Metrics {
    /// The counters of a method, created on first use. `has_python` / `has_model` say which stage kinds it has.
    pub fn method(
        &self,
        servable: &str,
        version: u64,
        method: &str,
        has_python: bool,
        has_model: bool,
    ) -> Arc<MethodStats> {
        lookup(&self.methods, servable, version, method).unwrap_or_else(|| {
            insert(&self.methods, servable, version, method, || {
                MethodStats::new(has_python, has_model)
            })
        })
    }

    /// The counters of a method when it has recorded anything.
    pub fn method_if_seen(&self, servable: &str, version: u64, method: &str) -> Option<Arc<MethodStats>> {
        lookup(&self.methods, servable, version, method)
    }

    /// The batch observer of a model file (`model` is the declare_model key, `subgraph` the file index).
    pub fn model(&self, servable: &str, version: u64, model: &str, subgraph: usize) -> Arc<ModelStats> {
        let name = format!("{model}\u{0}{subgraph}");
        lookup(&self.models, servable, version, &name).unwrap_or_else(|| {
            insert(&self.models, servable, version, &name, || ModelStats {
                batch_size: Histogram::sizes(),
                queue_wait: Histogram::durations(),
                run: Histogram::durations(),
                failures: AtomicU64::new(0),
            })
        })
    }

    /// Counts a request that never reached a method (unknown servable or method, server overloaded).
    pub fn reject(&self, protocol: Protocol) {
        self.rejected[protocol.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4). `queues` and `in_flight` are read by the caller at scrape time.
    pub fn render(&self, queues: &[QueueDepth], in_flight: usize, stuck: Option<&StuckCall>) -> String {
        let mut out = String::with_capacity(8192);
        self.render_methods(&mut out);
        self.render_models(&mut out);
        family(
            &mut out,
            "rustserve_queue_depth_instances",
            "gauge",
            "Instances waiting in a model's batch queue.",
        );
        for q in queues {
            let labels = format!(
                "servable=\"{}\",version=\"{}\",model=\"{}\",subgraph=\"{}\"",
                escape(&q.servable),
                q.version,
                escape(&q.model),
                q.subgraph
            );
            let _ = writeln!(out, "rustserve_queue_depth_instances{{{labels}}} {}", q.depth);
        }
        family(
            &mut out,
            "rustserve_requests_in_flight_requests",
            "gauge",
            "Requests being answered now.",
        );
        let _ = writeln!(out, "rustserve_requests_in_flight_requests {in_flight}");
        family(
            &mut out,
            "rustserve_python_busy_seconds_total",
            "counter",
            "Wall time during which the Python stage executor had work.",
        );
        let _ = writeln!(
            out,
            "rustserve_python_busy_seconds_total {}",
            number(self.python_busy.total().as_secs_f64())
        );
        family(
            &mut out,
            "rustserve_python_stuck_call_seconds",
            "gauge",
            "How long the call stuck on the server's Python thread (past the request timeout) has run; absent when none.",
        );
        if let Some(stuck) = stuck {
            let _ = writeln!(
                out,
                "rustserve_python_stuck_call_seconds{{servable=\"{}\",function=\"{}\",method=\"{}\"}} {}",
                escape(&stuck.servable),
                escape(&stuck.function),
                escape(&stuck.method),
                number(stuck.running_for.as_secs_f64())
            );
        }
        render_process(&mut out);
        out
    }

    fn render_methods(&self, out: &mut String) {
        let methods = rows(&self.methods);
        let method_labels =
            |s: &str, v: u64, m: &str| format!("servable=\"{}\",version=\"{v}\",method=\"{}\"", escape(s), escape(m));

        family(
            out,
            "rustserve_requests_total",
            "counter",
            "Requests answered, by servable, version, method and protocol.",
        );
        for (s, v, m, stats) in &methods {
            for p in Protocol::ALL {
                let n = stats.requests[p.index()].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "rustserve_requests_total{{{},protocol=\"{}\"}} {n}",
                        method_labels(s, *v, m),
                        p.label()
                    );
                }
            }
        }
        family(
            out,
            "rustserve_request_failures_total",
            "counter",
            "Requests that failed (any instance failed), by servable, version, method and protocol.",
        );
        for (s, v, m, stats) in &methods {
            for p in Protocol::ALL {
                if stats.requests[p.index()].load(Ordering::Relaxed) > 0 {
                    let n = stats.failures[p.index()].load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "rustserve_request_failures_total{{{},protocol=\"{}\"}} {n}",
                        method_labels(s, *v, m),
                        p.label()
                    );
                }
            }
        }
        family(
            out,
            "rustserve_requests_rejected_total",
            "counter",
            "Requests that reached no method (unknown servable or method, overload), by protocol.",
        );
        for p in Protocol::ALL {
            let n = self.rejected[p.index()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "rustserve_requests_rejected_total{{protocol=\"{}\"}} {n}",
                p.label()
            );
        }
        family(
            out,
            "rustserve_request_duration_seconds",
            "histogram",
            "Request latency inside the server (decode and method run), by protocol.",
        );
        for (s, v, m, stats) in &methods {
            for p in Protocol::ALL {
                if stats.requests[p.index()].load(Ordering::Relaxed) > 0 {
                    let labels = format!("{},protocol=\"{}\"", method_labels(s, *v, m), p.label());
                    stats.latency[p.index()].render(out, "rustserve_request_duration_seconds", &labels);
                }
            }
        }
        family(
            out,
            "rustserve_stage_duration_seconds",
            "histogram",
            "Time per successful request in its Python stages (stage=\"python\", waiting for the Python thread included) and in its model stages (stage=\"model\", batch queue wait included).",
        );
        for (s, v, m, stats) in &methods {
            for (stage, histogram) in [("python", &stats.python_stage), ("model", &stats.model_stage)] {
                if histogram.count() > 0 {
                    let labels = format!("{},stage=\"{stage}\"", method_labels(s, *v, m));
                    histogram.render(out, "rustserve_stage_duration_seconds", &labels);
                }
            }
        }
        family(
            out,
            "rustserve_request_size_instances",
            "histogram",
            "Instances per successful request.",
        );
        for (s, v, m, stats) in &methods {
            if stats.instances.count() > 0 {
                stats
                    .instances
                    .render(out, "rustserve_request_size_instances", &method_labels(s, *v, m));
            }
        }
    }

    fn render_models(&self, out: &mut String) {
        let models = rows(&self.models);
        let model_labels = |s: &str, v: u64, key: &str| {
            let (model, subgraph) = key.split_once('\u{0}').unwrap_or((key, "0"));
            format!(
                "servable=\"{}\",version=\"{v}\",model=\"{}\",subgraph=\"{subgraph}\"",
                escape(s),
                escape(model)
            )
        };
        family(
            out,
            "rustserve_batch_size_instances",
            "histogram",
            "Instances per model run (padding rows not counted).",
        );
        for (s, v, key, stats) in &models {
            stats
                .batch_size
                .render(out, "rustserve_batch_size_instances", &model_labels(s, *v, key));
        }
        family(
            out,
            "rustserve_batch_queue_duration_seconds",
            "histogram",
            "How long the oldest instance of each model run waited in the model's queue.",
        );
        for (s, v, key, stats) in &models {
            stats
                .queue_wait
                .render(out, "rustserve_batch_queue_duration_seconds", &model_labels(s, *v, key));
        }
        family(
            out,
            "rustserve_batch_run_duration_seconds",
            "histogram",
            "Model run time per batch.",
        );
        for (s, v, key, stats) in &models {
            stats
                .run
                .render(out, "rustserve_batch_run_duration_seconds", &model_labels(s, *v, key));
        }
    }
}

/// The server process's own resources under the names of Prometheus' process collector, so a stage that leaks
/// memory, file descriptors or threads shows up (Linux `/proc`; nothing where it is missing).
fn render_process(out: &mut String) {
    let Some(sample) = ProcessSample::read() else { return };
    let rows: [(&str, &str, &str, String); 5] = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            sample.rss_bytes.to_string(),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            sample.open_fds.to_string(),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            sample.max_fds.to_string(),
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            sample.threads.to_string(),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            number(sample.cpu_seconds),
        ),
    ];
    for (name, kind, help, value) in rows {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}

struct ProcessSample {
    rss_bytes: u64,
    open_fds: usize,
    max_fds: u64,
    threads: u64,
    cpu_seconds: f64,
}

impl ProcessSample {
    #[allow(clippy::cast_precision_loss)] // CPU ticks and the tick rate are far below 2^52
    fn read() -> Option<ProcessSample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces and parentheses): state is field 3.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        // SAFETY: sysconf only reads a configuration value; it has no preconditions.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let max_fds = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|soft| soft.parse().ok())
            .unwrap_or(0);
        Some(ProcessSample {
            rss_bytes: field(24)? * u64::try_from(page).ok()?,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count),
            max_fds,
            threads: field(20)?,
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks.max(1) as f64,
        })
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ok: bool, instances: usize, predict_ms: u64, python_ms: u64) -> RequestRecord {
        RequestRecord {
            protocol: Protocol::KserveRest,
            instances,
            ok,
            decode: Duration::from_millis(1),
            predict: Duration::from_millis(predict_ms),
            python: Duration::from_millis(python_ms),
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inclusive_bounds() {
        let h = Histogram::sizes();
        for v in [1, 2, 3, 1000] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"512\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 1006\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
    }

    #[test]
    fn durations_render_in_seconds() {
        let h = Histogram::durations();
        h.observe(1_500_000);
        let mut out = String::new();
        h.render(&mut out, "d", "k=\"v\"");
        assert!(out.contains("d_bucket{k=\"v\",le=\"0.001\"} 0\n"), "{out}");
        assert!(out.contains("d_bucket{k=\"v\",le=\"0.0025\"} 1\n"), "{out}");
        assert!(out.contains("d_sum{k=\"v\"} 0.0015\n"), "{out}");
    }

    #[test]
    fn statistics_split_success_failure_and_batch_sizes() {
        let stats = MethodStats::new(true, true);
        stats.record(&record(true, 2, 10, 4));
        stats.record(&record(true, 2, 20, 4));
        stats.record(&record(true, 1, 5, 1));
        stats.record(&record(false, 3, 7, 0));
        stats.record_output(2, Duration::from_millis(2));
        let snap = stats.snapshot();
        assert_eq!(snap.execution_count, 3);
        assert_eq!(snap.inference_count, 5);
        assert_eq!(snap.success.0, 3);
        assert_eq!(snap.success.1, (11 + 21 + 6 + 2) * 1_000_000);
        assert_eq!(snap.fail, (1, 8_000_000));
        assert_eq!(snap.compute_infer, (3, 35_000_000));
        assert_eq!(snap.compute_output, (3, 2_000_000));
        assert_eq!(snap.batches.len(), 2);
        assert_eq!(snap.batches[1].0, 2);
        assert_eq!(snap.batches[1].1.count, 2);
        assert_eq!(snap.batches[1].1.output_ns, 2_000_000);
        assert!(snap.last_inference_ms > 0);
        assert_eq!(stats.python_stage.count(), 3);
        assert_eq!(stats.model_stage.sum.load(Ordering::Relaxed), (6 + 16 + 4) * 1_000_000);
    }

    #[test]
    fn render_names_labels_and_escapes() {
        let metrics = Metrics::default();
        metrics
            .method("a\"b", 2, "m", false, true)
            .record(&record(true, 1, 1, 0));
        metrics.reject(Protocol::MindsporeGrpc);
        metrics.model("a\"b", 2, "x.onnx", 0).batch_done(&BatchRun {
            instances: 3,
            queue_wait: Duration::from_micros(50),
            run: Duration::from_micros(500),
            ok: true,
        });
        let text = metrics.render(
            &[QueueDepth {
                servable: "s".into(),
                version: 1,
                model: "x.onnx".into(),
                subgraph: 0,
                depth: 7,
            }],
            4,
            Some(&StuckCall {
                servable: "s".into(),
                function: "s.f\"g".into(),
                method: "m".into(),
                running_for: Duration::from_millis(2500),
            }),
        );
        assert!(
            text.contains(
                "rustserve_python_stuck_call_seconds{servable=\"s\",function=\"s.f\\\"g\",method=\"m\"} 2.5\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"), "{text}");
        assert!(
            text.contains(
                "rustserve_requests_total{servable=\"a\\\"b\",version=\"2\",method=\"m\",protocol=\"kserve_rest\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("rustserve_requests_rejected_total{protocol=\"mindspore_grpc\"} 1\n"));
        assert!(text.contains("rustserve_batch_size_instances_bucket{servable=\"a\\\"b\",version=\"2\",model=\"x.onnx\",subgraph=\"0\",le=\"4\"} 1\n"), "{text}");
        assert!(text.contains(
            "rustserve_queue_depth_instances{servable=\"s\",version=\"1\",model=\"x.onnx\",subgraph=\"0\"} 7\n"
        ));
        assert!(text.contains("rustserve_requests_in_flight_requests 4\n"));
        assert!(!text.contains("stage=\"python\"}"), "no Python stage, no python series");
        assert!(text.contains("method=\"m\",stage=\"model\"} 1\n"), "{text}");
    }

    #[test]
    fn busy_clock_counts_overlapping_jobs_once() {
        let clock = Arc::new(BusyClock::default());
        let a = clock.enter();
        let b = clock.enter();
        std::thread::sleep(Duration::from_millis(20));
        drop(a);
        std::thread::sleep(Duration::from_millis(20));
        drop(b);
        let busy = clock.total();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.total(), busy, "idle time is not busy time");
        assert!(busy >= Duration::from_millis(40), "{busy:?}");
    }
}

//! What `/metrics` reads at scrape time instead of recording it: model queue depths, requests in flight, the Python
//! executor's busy time, the call stuck on the server's Python thread, and the process's own resources. One
//! prometheus-client `Collector`, built per scrape from what the service read.

use super::busy::BusyClock;
use super::families::ModelLabels;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;

/// A Python stage call that has run on the server's own Python thread for longer than the request timeout. Nothing
/// can interrupt it there, so the server reports it (readiness, metrics, log) until it returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckCall {
    pub servable: String,
    /// `<servable>.<function name>`.
    pub function: String,
    pub method: String,
    pub running_for: std::time::Duration,
}

impl StuckCall {
    /// The client- and probe-facing text.
    pub fn describe(&self) -> String {
        format!(
            "the server's Python thread has been running {} (method '{}') for {:.0} s, past the request timeout; \
             Python stages on it wait until it returns",
            self.function,
            self.method,
            self.running_for.as_secs_f64()
        )
    }
}

/// One live model queue's depth, read at scrape time.
#[derive(Clone, Debug)]
pub struct QueueDepth {
    pub servable: String,
    pub version: u64,
    pub model: String,
    pub subgraph: usize,
    pub depth: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StuckLabels {
    servable: String,
    function: String,
    method: String,
}

/// The scrape-time values of one scrape.
#[derive(Debug)]
pub(super) struct ScrapeTime {
    pub queues: Vec<QueueDepth>,
    pub in_flight: usize,
    pub busy: Arc<BusyClock>,
    pub stuck: Option<StuckCall>,
}

impl Collector for ScrapeTime {
    // HELP texts are written as given here (the registry adds the full stop only to registered metrics); counter
    // names leave out `_total`, which the encoder appends.
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        {
            let gauge = ConstGauge::new(0usize);
            let mut family = encoder.encode_descriptor(
                "rustserve_queue_depth_instances",
                "Instances waiting in a model's batch queue.",
                None,
                gauge.metric_type(),
            )?;
            for q in &self.queues {
                let labels = ModelLabels {
                    servable: q.servable.clone(),
                    version: q.version,
                    model: q.model.clone(),
                    subgraph: q.subgraph,
                };
                ConstGauge::new(q.depth).encode(family.encode_family(&labels)?)?;
            }
        }
        single(
            &mut encoder,
            "rustserve_requests_in_flight_requests",
            "Requests being answered now.",
            &ConstGauge::new(self.in_flight),
        )?;
        single(
            &mut encoder,
            "rustserve_python_busy_seconds",
            "Wall time during which the Python stage executor had work.",
            &ConstCounter::new(self.busy.total().as_secs_f64()),
        )?;
        if let Some(stuck) = &self.stuck {
            let gauge = ConstGauge::new(stuck.running_for.as_secs_f64());
            let mut family = encoder.encode_descriptor(
                "rustserve_python_stuck_call_seconds",
                "How long the call stuck on the server's Python thread (past the request timeout) has run; absent \
                 when none.",
                None,
                gauge.metric_type(),
            )?;
            let labels = StuckLabels {
                servable: stuck.servable.clone(),
                function: stuck.function.clone(),
                method: stuck.method.clone(),
            };
            gauge.encode(family.encode_family(&labels)?)?;
        }
        encode_ranks(&mut encoder, &crate::distributed::rank_samples())?;
        if let Some(process) = ProcessSample::read() {
            process.encode(&mut encoder)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RankLabels {
    servable: String,
    rank: u32,
}

/// Distributed servables' ranks (absent without any): live or not, calls, failed calls, and time in calls (its rate
/// over the calls' rate is the rank's mean latency).
fn encode_ranks(encoder: &mut DescriptorEncoder, ranks: &[crate::distributed::RankSample]) -> std::fmt::Result {
    if ranks.is_empty() {
        return Ok(());
    }
    rank_family(
        encoder,
        "rustserve_distributed_rank_up",
        "1 while the rank's agent is registered and sends heartbeats.",
        ranks,
        |r| ConstGauge::new(i64::from(r.up)),
    )?;
    rank_family(
        encoder,
        "rustserve_distributed_rank_calls",
        "Batches sent to the rank's agent.",
        ranks,
        |r| ConstCounter::new(r.calls),
    )?;
    rank_family(
        encoder,
        "rustserve_distributed_rank_failures",
        "Batches the rank's agent failed or did not answer.",
        ranks,
        |r| ConstCounter::new(r.failures),
    )?;
    rank_family(
        encoder,
        "rustserve_distributed_rank_seconds",
        "Time from sending a batch to the rank to its answer.",
        ranks,
        |r| ConstCounter::new(r.seconds),
    )?;
    Ok(())
}

/// One family with a sample per rank.
fn rank_family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ranks: &[crate::distributed::RankSample],
    value: impl Fn(&crate::distributed::RankSample) -> M,
) -> std::fmt::Result {
    let Some(first) = ranks.first() else { return Ok(()) };
    let mut family = encoder.encode_descriptor(name, help, None, value(first).metric_type())?;
    for r in ranks {
        let labels = RankLabels {
            servable: r.servable.clone(),
            rank: r.rank,
        };
        value(r).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one unlabelled sample.
fn single(encoder: &mut DescriptorEncoder, name: &str, help: &str, metric: &impl EncodeMetric) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// The server process's own resources under the names of Prometheus' process collector, so a stage that leaks
/// memory, file descriptors or threads shows up (Linux `/proc`; nothing where it is missing).
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

    fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        single(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            &ConstGauge::new(self.rss_bytes),
        )?;
        single(
            encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            &ConstGauge::new(self.open_fds),
        )?;
        single(
            encoder,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            &ConstGauge::new(self.max_fds),
        )?;
        single(
            encoder,
            "process_threads",
            "Number of OS threads in the process.",
            &ConstGauge::new(self.threads),
        )?;
        single(
            encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            &ConstCounter::new(self.cpu_seconds),
        )
    }
}

//! Distributed servables (MindSpore's `distributed` API): a model served by agent processes, one per rank, each
//! running its own ONNX file. The main process runs a `Hub` at `distributed_address`, where agents register (and
//! keep registering once a second: the heartbeat); the model's batch queue runs each batch through the agents with a
//! `DistributedRunner`: stage by stage, every rank of a stage gets the stage's inputs, the ranks' outputs are combined
//! (`combine`), and a stage's outputs feed the next stage's inputs by name. A rank that fails or falls silent fails
//! the batches that need it at once, naming the rank and its agent; when it registers again, the servable serves
//! again.

pub mod agent;
pub mod combine;
mod wire;

use crate::batching::{BatchConfig, BatchRunner, IoInfo, ModelQueue, ModelSignature};
use crate::error::ServeError;
use crate::proto::distributed as pb;
use crate::tensor::Tensor;
use combine::{Combine, GroupConfig};
use pb::agent_client::AgentClient;
use pb::distributed_servable_server::{DistributedServable, DistributedServableServer};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Agents register this often; one silent for `HEARTBEAT_LOST` is taken as gone.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
const HEARTBEAT_LOST: Duration = Duration::from_secs(10);
/// How long one rank may take for one batch before the batch fails.
const RANK_DEADLINE: Duration = Duration::from_mins(1);
/// Tensors of a batch may be large; gRPC's 4 MB default would refuse them.
pub(crate) const MAX_MESSAGE: usize = 1 << 31;

/// One device of the rank table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEntry {
    pub rank_id: u32,
    pub device_id: String,
    pub server_id: String,
}

/// A registered agent.
#[derive(Clone)]
struct Agent {
    address: String,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
    group: GroupConfig,
    last_seen: Instant,
}

/// Calls to one rank since start-up, for /metrics.
#[derive(Default)]
struct RankCounters {
    calls: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
    nanos: std::sync::atomic::AtomicU64,
}

/// One rank's figures at scrape time (`rank_samples`).
#[derive(Clone, Debug)]
pub struct RankSample {
    pub servable: String,
    pub rank: u32,
    pub up: bool,
    pub calls: u64,
    pub failures: u64,
    pub seconds: f64,
}

/// The main process's end of one distributed servable: the rank table, the agents registered so far, and the gRPC
/// service they register with.
pub struct Hub {
    servable: String,
    ranks: Vec<RankEntry>,
    wait: Option<Duration>,
    agents: Mutex<Vec<Option<Agent>>>,
    counters: Vec<RankCounters>,
    registered: Condvar,
    /// Runs the registration service; `None` only while dropping (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    serving: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        // The last reference may go inside async code (a handler, a scrape), where dropping a runtime panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

static HUBS: LazyLock<Mutex<HashMap<String, Arc<Hub>>>> = LazyLock::new(Mutex::default);

/// Starts the hub of `servable` at `address` (replacing an earlier one), for the ranks of its rank table.
/// `wait` bounds how long loading the servable waits for its agents (`None`: forever).
pub fn start_hub(
    servable: &str,
    address: &str,
    ranks: Vec<RankEntry>,
    wait: Option<Duration>,
) -> Result<Arc<Hub>, ServeError> {
    let mut ranks = ranks;
    ranks.sort_by_key(|r| r.rank_id);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rustserve-distributed")
        .enable_all()
        .build()
        .map_err(|e| ServeError::Config(format!("cannot start the distributed runtime: {e}")))?;
    // A hub started again for the same servable (a retried start) gives its address up first.
    let previous = HUBS.lock().unwrap_or_else(PoisonError::into_inner).remove(servable);
    if let Some(previous) = previous {
        previous.shutdown();
        previous.wait_closed();
    }
    let listener = std::net::TcpListener::bind(address).map_err(|e| {
        ServeError::Config(format!(
            "Serving Error: distributed servable '{servable}': cannot listen on {address}: {e}"
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ServeError::Config(format!("cannot listen on {address}: {e}")))?;
    let count = ranks.len();
    let hub = Arc::new(Hub {
        servable: servable.to_owned(),
        ranks,
        wait,
        agents: Mutex::new(vec![None; count]),
        counters: (0..count).map(|_| RankCounters::default()).collect(),
        registered: Condvar::new(),
        runtime: Some(runtime),
        stop: Mutex::new(None),
        serving: Mutex::new(None),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    *hub.stop.lock().unwrap_or_else(PoisonError::into_inner) = Some(stop_tx);
    let service = DistributedServableServer::new(HubService(Arc::downgrade(&hub)));
    let Some(runtime) = hub.runtime.as_ref() else {
        unreachable!("set above")
    };
    let serving = runtime.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("distributed hub: {e}");
                return;
            }
        };
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("distributed hub stopped: {e}");
        }
    });
    *hub.serving.lock().unwrap_or_else(PoisonError::into_inner) = Some(serving);
    tracing::info!("distributed servable '{servable}': waiting for {count} agents on {address}");
    HUBS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(servable.to_owned(), hub.clone());
    Ok(hub)
}

/// The hub `start_hub` started for `servable`.
pub fn hub_for(servable: &str) -> Option<Arc<Hub>> {
    HUBS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(servable)
        .cloned()
}

/// The hubs running now (taken out of the lock, which callers must not hold while they look at agents).
fn all_hubs() -> Vec<Arc<Hub>> {
    HUBS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect()
}

/// Why a distributed servable (`servable`, or any when `None`) cannot serve now, if one cannot.
pub fn not_ready_reason(servable: Option<&str>) -> Option<String> {
    all_hubs()
        .iter()
        .filter(|hub| servable.is_none_or(|name| name == hub.servable))
        .find_map(|hub| hub.not_ready_reason())
}

/// Every rank of every hub: whether its agent is live, and its calls, failures and time in calls so far.
pub fn rank_samples() -> Vec<RankSample> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut samples = Vec::new();
    for hub in all_hubs() {
        for (index, (entry, counters)) in hub.ranks.iter().zip(&hub.counters).enumerate() {
            samples.push(RankSample {
                servable: hub.servable.clone(),
                rank: entry.rank_id,
                up: hub.live(index..index + 1).is_ok(),
                calls: counters.calls.load(Relaxed),
                failures: counters.failures.load(Relaxed),
                seconds: Duration::from_nanos(counters.nanos.load(Relaxed)).as_secs_f64(),
            });
        }
    }
    samples
}

/// Stops the hub of `servable` (a start that failed after `start_hub`).
pub fn stop_hub(servable: &str) {
    let hub = HUBS.lock().unwrap_or_else(PoisonError::into_inner).remove(servable);
    if let Some(hub) = hub {
        hub.shutdown();
        hub.wait_closed();
    }
}

/// Stops every hub (server stop).
pub fn stop_all() {
    let hubs: Vec<Arc<Hub>> = HUBS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
        .map(|(_, h)| h)
        .collect();
    for hub in hubs {
        hub.shutdown();
        hub.wait_closed();
    }
}

impl Hub {
    fn shutdown(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = stop.send(());
        }
    }

    /// Waits (briefly) until the listener is closed, so its address can be bound again.
    fn wait_closed(&self) {
        if let Some(task) = self.serving.lock().unwrap_or_else(PoisonError::into_inner).take()
            && let Some(runtime) = &self.runtime
        {
            let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Agent>>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, request: pb::RegisterRequest) -> Result<(), String> {
        let index = self
            .ranks
            .iter()
            .position(|r| r.rank_id == request.rank_id)
            .ok_or_else(|| {
                format!(
                    "rank {} is not in the rank table of distributed servable '{}' (ranks 0..{})",
                    request.rank_id,
                    self.servable,
                    self.ranks.len()
                )
            })?;
        let io = |list: &[pb::Io]| list.iter().map(wire::io_from_message).collect::<Result<Vec<_>, _>>();
        let combine = request
            .combine
            .iter()
            .map(|c| Ok((c.output.clone(), wire::combine_from_message(c)?)))
            .collect::<Result<HashMap<_, _>, String>>()?;
        let group = GroupConfig {
            stage: request.has_stage.then_some(request.stage),
            combine,
        };
        tonic::transport::Endpoint::from_shared(format!("http://{}", request.address))
            .map_err(|e| format!("bad agent address '{}': {e}", request.address))?;
        let mut agents = self.lock();
        if agents[index].as_ref().is_none_or(|a| a.address != request.address) {
            tracing::info!(
                "distributed servable '{}': rank {} registered from {} ({})",
                self.servable,
                request.rank_id,
                request.address,
                request.model_file
            );
        }
        agents[index] = Some(Agent {
            address: request.address,
            inputs: io(&request.inputs)?,
            outputs: io(&request.outputs)?,
            group,
            last_seen: Instant::now(),
        });
        drop(agents);
        self.registered.notify_all();
        Ok(())
    }

    /// Waits until every rank has registered, within the servable's wait time.
    fn wait_for_agents(&self) -> Result<Vec<Agent>, ServeError> {
        let deadline = self.wait.map(|w| Instant::now() + w);
        let mut agents = self.lock();
        loop {
            if agents.iter().all(Option::is_some) {
                return Ok(agents.iter().flatten().cloned().collect());
            }
            let now = Instant::now();
            let step = match deadline {
                Some(deadline) if now >= deadline => {
                    let count = agents.iter().flatten().count();
                    return Err(ServeError::Config(format!(
                        "Failed to wait for ready of all agents, current agents count: {count}, rank size: {}",
                        self.ranks.len()
                    )));
                }
                Some(deadline) => deadline - now,
                None => Duration::from_hours(1),
            };
            agents = self
                .registered
                .wait_timeout(agents, step)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The rank and agent address of each of `ranks`, or an error naming the first one that is gone.
    fn live(&self, ranks: std::ops::Range<usize>) -> Result<Vec<(usize, String)>, ServeError> {
        let agents = self.lock();
        ranks
            .map(|r| match &agents[r] {
                Some(agent) if agent.last_seen.elapsed() < HEARTBEAT_LOST => Ok((r, agent.address.clone())),
                Some(agent) => Err(self.gone(
                    r,
                    &format!(
                        "(agent {}) sent no heartbeat for {:.1} s",
                        agent.address,
                        agent.last_seen.elapsed().as_secs_f64()
                    ),
                )),
                None => Err(self.gone(r, "has no agent registered (it failed and has not registered again)")),
            })
            .collect()
    }

    fn gone(&self, rank: usize, what: &str) -> ServeError {
        ServeError::Unavailable(format!("distributed servable '{}': rank {rank} {what}", self.servable))
    }

    /// Forgets a failed agent until it registers again, unless a newer registration replaced it meanwhile.
    fn forget(&self, rank: usize, address: &str) {
        let mut agents = self.lock();
        if agents[rank].as_ref().is_some_and(|a| a.address == address) {
            agents[rank] = None;
        }
    }

    /// Is every rank's agent registered and alive (readiness)?
    pub fn ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the servable cannot serve now: the first rank without a live agent.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.live(0..self.ranks.len()).err().map(|e| e.to_string())
    }
}

struct HubService(std::sync::Weak<Hub>);

impl HubService {
    fn hub(&self) -> Result<Arc<Hub>, tonic::Status> {
        self.0
            .upgrade()
            .ok_or_else(|| tonic::Status::unavailable("the servable stopped"))
    }
}

#[tonic::async_trait]
impl DistributedServable for HubService {
    async fn register(
        &self,
        request: tonic::Request<pb::RegisterRequest>,
    ) -> Result<tonic::Response<pb::RegisterReply>, tonic::Status> {
        let hub = self.hub()?;
        hub.register(request.into_inner())
            .map(|()| tonic::Response::new(pb::RegisterReply {}))
            .map_err(tonic::Status::invalid_argument)
    }

    async fn ranks(
        &self,
        request: tonic::Request<pb::RanksRequest>,
    ) -> Result<tonic::Response<pb::RanksReply>, tonic::Status> {
        let hub = self.hub()?;
        let server = request.into_inner().server_id;
        let ranks = hub
            .ranks
            .iter()
            .filter(|r| server.is_empty() || r.server_id == server)
            .map(|r| pb::Rank {
                rank_id: r.rank_id,
                device_id: r.device_id.clone(),
                server_id: r.server_id.clone(),
            })
            .collect();
        Ok(tonic::Response::new(pb::RanksReply { ranks }))
    }
}

/// One stage's input names (as its first rank has them) and its outputs with their combine op.
type StagePlan = (Vec<String>, Vec<(String, Combine)>);

/// What each stage takes and gives, fixed when the servable loads (from the agents' registrations).
struct Layout {
    stage_size: usize,
    per_stage: usize,
    /// Per stage: its input names (as its first rank has them) and its outputs with their combine op.
    stages: Vec<StagePlan>,
}

/// Loads a distributed model: waits for its agents, checks the layout, and starts a queue with one batch thread
/// per stage (so a batch can be in each stage at once).
pub fn load_queue(
    servable: &str,
    rank_size: usize,
    stage_size: usize,
    cfg: BatchConfig,
) -> Result<ModelQueue, ServeError> {
    let config = |msg: String| ServeError::Config(format!("distributed servable '{servable}': {msg}"));
    let hub = hub_for(servable).ok_or_else(|| {
        config("it declares a distributed model, so start it with distributed.start_servable(...)".into())
    })?;
    if stage_size == 0 || !rank_size.is_multiple_of(stage_size) {
        return Err(config(format!(
            "rank_size {rank_size} must be a multiple of stage_size {stage_size}"
        )));
    }
    if hub.ranks.len() != rank_size {
        return Err(config(format!(
            "the rank table has {} devices, but declare_servable says rank_size {rank_size}",
            hub.ranks.len()
        )));
    }
    let agents = hub.wait_for_agents()?;
    let (layout, signature) = layout_of(&agents, stage_size).map_err(config)?;
    let layout = Arc::new(layout);
    let mut runners: Vec<Box<dyn BatchRunner>> = Vec::with_capacity(stage_size);
    for _ in 0..stage_size {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| config(format!("cannot start a runtime for its batch thread: {e}")))?;
        runners.push(Box::new(DistributedRunner {
            hub: hub.clone(),
            layout: layout.clone(),
            runtime: Some(runtime),
            clients: HashMap::new(),
        }));
    }
    ModelQueue::with_runners(&format!("distributed servable '{servable}'"), signature, cfg, runners)
}

fn layout_of(agents: &[Agent], stage_size: usize) -> Result<(Layout, ModelSignature), String> {
    let per_stage = agents.len() / stage_size;
    let mut stages = Vec::with_capacity(stage_size);
    let mut available: Option<Vec<String>> = None;
    let mut outputs_info = Vec::new();
    for stage in 0..stage_size {
        let ranks = &agents[stage * per_stage..(stage + 1) * per_stage];
        let first = &ranks[0];
        let names = |list: &[IoInfo]| list.iter().map(|io| io.name.clone()).collect::<Vec<_>>();
        for (offset, agent) in ranks.iter().enumerate() {
            let rank = stage * per_stage + offset;
            if let Some(said) = agent.group.stage
                && said as usize != stage
            {
                return Err(format!(
                    "rank {rank}'s group config says stage {said}, but rank {rank} is in stage {stage} (rank_size {} / stage_size {stage_size})",
                    agents.len()
                ));
            }
            if names(&agent.inputs) != names(&first.inputs) || names(&agent.outputs) != names(&first.outputs) {
                return Err(format!(
                    "rank {rank} ({}) has inputs {:?} and outputs {:?}, but rank {} of the same stage has {:?} and {:?}",
                    agent.address,
                    names(&agent.inputs),
                    names(&agent.outputs),
                    stage * per_stage,
                    names(&first.inputs),
                    names(&first.outputs)
                ));
            }
        }
        if let Some(available) = &available
            && let Some(missing) = first.inputs.iter().find(|io| !available.contains(&io.name))
        {
            return Err(format!(
                "stage {stage} needs input '{}', which stage {} does not give (it gives {available:?})",
                missing.name,
                stage - 1
            ));
        }
        let mut outputs = Vec::with_capacity(first.outputs.len());
        outputs_info.clear();
        for io in &first.outputs {
            let op = if per_stage == 1 {
                Combine::First
            } else {
                first.group.combine.get(&io.name).copied().unwrap_or(Combine::First)
            };
            let mut shape = io.shape.clone();
            if let Combine::Concat(axis) = op {
                let at = if axis < 0 { axis + shape.len() as i64 } else { axis };
                let at = usize::try_from(at).ok().filter(|&a| a < shape.len()).ok_or_else(|| {
                    format!(
                        "output '{}': concat axis {axis} is out of range for shape {shape:?}",
                        io.name
                    )
                })?;
                let dims: Vec<i64> = ranks
                    .iter()
                    .filter_map(|a| a.outputs.iter().find(|o| o.name == io.name))
                    .map(|o| o.shape.get(at).copied().unwrap_or(-1))
                    .collect();
                shape[at] = if dims.iter().all(|&d| d >= 0) {
                    dims.iter().sum()
                } else {
                    -1
                };
            }
            outputs_info.push(IoInfo {
                name: io.name.clone(),
                dtype: io.dtype,
                shape,
            });
            outputs.push((io.name.clone(), op));
        }
        available = Some(names(&first.outputs));
        stages.push((names(&first.inputs), outputs));
    }
    let signature = ModelSignature {
        inputs: agents[0].inputs.clone(),
        outputs: outputs_info,
    };
    Ok((
        Layout {
            stage_size,
            per_stage,
            stages,
        },
        signature,
    ))
}

/// Runs batches through the agents (see the module doc). One per batch thread; they share the hub.
struct DistributedRunner {
    hub: Arc<Hub>,
    layout: Arc<Layout>,
    /// A single-thread runtime of its own: the batch thread drives its calls' I/O itself, so a stage hop costs no
    /// hand-off to another thread and back. `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// Connections to the agents, by rank and address (an agent that comes back elsewhere gets a new one).
    clients: HashMap<(usize, String), AgentClient<Channel>>,
}

impl Drop for DistributedRunner {
    fn drop(&mut self) {
        // The queue (and so this runner) may be dropped by the last request holding its servable, on a tokio worker,
        // where dropping a runtime panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl DistributedRunner {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("set until the runner drops")
    }

    /// One rank's reply: counted, and its tensors by name, or the error that fails the batch (a lost agent is
    /// forgotten until it registers again; a model error, a bad input, leaves it registered).
    fn answer(
        &self,
        rank: usize,
        address: &str,
        reply: Result<tonic::Response<pb::PredictReply>, tonic::Status>,
        took: Duration,
    ) -> Result<HashMap<String, Tensor>, ServeError> {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = &self.hub.counters[rank];
        counters.calls.fetch_add(1, Relaxed);
        counters
            .nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        let reply = reply.map_err(|status| {
            counters.failures.fetch_add(1, Relaxed);
            let err = format!("(agent {address}) failed: {}", status.message());
            if status.code() == tonic::Code::InvalidArgument {
                return ServeError::Model(format!(
                    "distributed servable '{}': rank {rank} {err}",
                    self.hub.servable
                ));
            }
            self.hub.forget(rank, address);
            self.hub.gone(rank, &err)
        })?;
        reply
            .into_inner()
            .outputs
            .into_iter()
            .map(wire::from_message)
            .collect::<Result<HashMap<_, _>, _>>()
            .map_err(|e| {
                self.hub
                    .gone(rank, &format!("(agent {address}) answered a bad tensor: {e}"))
            })
    }

    fn client(&mut self, rank: usize, address: &str) -> AgentClient<Channel> {
        let runtime = self.runtime.as_ref().expect("set until the runner drops");
        self.clients
            .entry((rank, address.to_owned()))
            .or_insert_with(|| {
                let _context = runtime.enter();
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .expect("checked when the agent registered");
                AgentClient::new(endpoint.tcp_nodelay(true).connect_lazy())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE)
            })
            .clone()
    }
}

impl BatchRunner for DistributedRunner {
    fn may_run_inline(&self) -> bool {
        false
    }

    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ServeError> {
        let layout = Arc::clone(&self.layout);
        let mut values: HashMap<String, Tensor> = layout.stages[0].0.iter().cloned().zip(inputs).collect();
        for stage in 0..layout.stage_size {
            let range = stage * layout.per_stage..(stage + 1) * layout.per_stage;
            let ranks = self.hub.live(range.clone())?;
            let (input_names, outputs) = &layout.stages[stage];
            let request = pb::PredictRequest {
                inputs: input_names
                    .iter()
                    .map(|name| {
                        let tensor = values
                            .get(name)
                            .ok_or_else(|| ServeError::Internal(format!("stage {stage} input '{name}' is missing")))?;
                        wire::to_message(name, tensor).map_err(ServeError::InvalidInput)
                    })
                    .collect::<Result<_, _>>()?,
            };
            let clients: Vec<_> = ranks
                .iter()
                .map(|(rank, address)| self.client(*rank, address))
                .collect();
            let calls = ranks.iter().zip(clients).map(|((rank, _), mut client)| {
                let mut request = tonic::Request::new(request.clone());
                request.set_timeout(RANK_DEADLINE);
                let rank = *rank;
                async move {
                    let started = Instant::now();
                    let reply = client.predict(request).await;
                    (rank, reply, started.elapsed())
                }
            });
            // A rank that falls silent fails the batch at its next heartbeat check, not at the call's deadline.
            let watch = async {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    if let Err(err) = self.hub.live(range.clone()) {
                        return err;
                    }
                }
            };
            let replies = self.runtime().block_on(async {
                tokio::select! {
                    replies = futures::future::join_all(calls) => Ok(replies),
                    err = watch => Err(err),
                }
            })?;
            let per_rank = replies
                .into_iter()
                .zip(&ranks)
                .map(|((rank, reply, took), (_, address))| self.answer(rank, address, reply, took))
                .collect::<Result<Vec<_>, _>>()?;
            let mut per_rank = per_rank;
            let mut next = HashMap::with_capacity(outputs.len());
            for (name, op) in outputs {
                let parts = per_rank
                    .iter_mut()
                    .map(|named| {
                        named.remove(name).ok_or_else(|| {
                            ServeError::Model(format!("a rank of stage {stage} did not answer output '{name}'"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let combined = combine::combine(name, *op, parts).map_err(ServeError::Model)?;
                next.insert(name.clone(), combined);
            }
            values = next;
        }
        let last = &layout.stages[layout.stage_size - 1].1;
        last.iter()
            .map(|(name, _)| {
                values
                    .remove(name)
                    .ok_or_else(|| ServeError::Internal(format!("output '{name}' is missing")))
            })
            .collect()
    }
}

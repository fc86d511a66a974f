//! An agent: one process per rank of a distributed servable. It runs its rank's ONNX file in one ONNX Runtime
//! session, answers `Agent.Predict` on its own port, and registers with the main process once a second (the
//! heartbeat), so a main process that restarts, or an agent that restarts, finds the other again.

use super::combine::GroupConfig;
use super::{HEARTBEAT, MAX_MESSAGE, wire};
use crate::error::ServeError;
use crate::model::{DeviceChoice, OrtRunner};
use crate::proto::distributed as pb;
use pb::agent_server::{Agent, AgentServer};
use pb::distributed_servable_client::DistributedServableClient;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// What `rustserve agent` was asked to serve.
pub struct AgentOptions {
    pub model_file: PathBuf,
    pub group_config: Option<PathBuf>,
    pub rank_id: u32,
    /// Where the Agent service listens (`host:port`); also the address it registers.
    pub listen: String,
    pub distributed_address: String,
    pub device: DeviceChoice,
    pub intra_op_threads: Option<usize>,
}

struct AgentService {
    runner: Arc<Mutex<OrtRunner>>,
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn predict(
        &self,
        request: tonic::Request<pb::PredictRequest>,
    ) -> Result<tonic::Response<pb::PredictReply>, tonic::Status> {
        let runner = self.runner.clone();
        let inputs = request.into_inner().inputs;
        // In place on this worker (the runtime moves its other tasks away): a hand-off to a blocking thread and
        // back would add two wake-ups to every stage hop.
        let outputs = tokio::task::block_in_place(|| run(&runner, inputs)).map_err(tonic::Status::invalid_argument)?;
        Ok(tonic::Response::new(pb::PredictReply { outputs }))
    }
}

/// Runs the rank's model on named inputs (any order) and names its outputs.
fn run(runner: &Mutex<OrtRunner>, inputs: Vec<pb::Tensor>) -> Result<Vec<pb::Tensor>, String> {
    let mut named: HashMap<String, crate::tensor::Tensor> =
        inputs.into_iter().map(wire::from_message).collect::<Result<_, _>>()?;
    let mut runner = runner.lock().unwrap_or_else(PoisonError::into_inner);
    let signature = runner.signature().clone();
    let ordered = signature
        .inputs
        .iter()
        .map(|io| {
            named
                .remove(&io.name)
                .ok_or_else(|| format!("input '{}' of the rank's model is missing", io.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = runner.run(ordered).map_err(|e| e.message().to_string())?;
    signature
        .outputs
        .iter()
        .zip(&outputs)
        .map(|(io, tensor)| wire::to_message(&io.name, tensor))
        .collect()
}

/// Serves one rank until `stop` answers true (polled every 200 ms). Errors before serving (model, group config,
/// port) are returned; later ones are logged.
pub fn serve(options: &AgentOptions, stop: &mut dyn FnMut() -> bool) -> Result<(), ServeError> {
    let model = options.model_file.display().to_string();
    let runner = OrtRunner::load(&options.model_file, options.device, options.intra_op_threads)?;
    let group = match &options.group_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ServeError::Config(format!("Cannot access group config file '{}': {e}", path.display()))
            })?;
            GroupConfig::parse(&text)
                .map_err(|e| ServeError::Config(format!("group config file '{}': {e}", path.display())))?
        }
        None => GroupConfig::default(),
    };
    let signature = runner.signature().clone();
    if let Some(unknown) = group
        .combine
        .keys()
        .find(|name| !signature.outputs.iter().any(|o| &o.name == *name))
    {
        return Err(ServeError::Config(format!(
            "group config names output '{unknown}', which model '{model}' does not have (outputs: {:?})",
            signature.outputs.iter().map(|o| &o.name).collect::<Vec<_>>()
        )));
    }
    let registration = pb::RegisterRequest {
        rank_id: options.rank_id,
        address: options.listen.clone(),
        inputs: signature.inputs.iter().map(wire::io_to_message).collect(),
        outputs: signature.outputs.iter().map(wire::io_to_message).collect(),
        combine: group
            .combine
            .iter()
            .map(|(output, op)| wire::combine_to_message(output, *op))
            .collect(),
        model_file: model.clone(),
        stage: group.stage.unwrap_or(0),
        has_stage: group.stage.is_some(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rustserve-agent")
        .enable_all()
        .build()
        .map_err(|e| ServeError::Config(format!("cannot start the agent runtime: {e}")))?;
    let listener = std::net::TcpListener::bind(&options.listen).map_err(|e| {
        ServeError::Config(format!(
            "agent of rank {}: cannot listen on {}: {e}",
            options.rank_id, options.listen
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ServeError::Config(format!("cannot listen on {}: {e}", options.listen)))?;
    let service = AgentServer::new(AgentService {
        runner: Arc::new(Mutex::new(runner)),
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
            .map_err(std::io::Error::other)
    });
    let heartbeat = runtime.spawn(register_forever(options.distributed_address.clone(), registration));
    while !stop() && !server.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    heartbeat.abort();
    let _ = stop_tx.send(());
    if server.is_finished()
        && let Ok(Ok(Err(e))) =
            runtime.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(1), server).await })
    {
        return Err(ServeError::Config(format!(
            "agent of rank {} stopped serving: {e}",
            options.rank_id
        )));
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// Registers with the main process once every `HEARTBEAT`, for as long as the agent serves. The first success is
/// printed on stdout (`startup_agents` waits for that line); refusals and lost contact are logged once per change.
async fn register_forever(address: String, registration: pb::RegisterRequest) {
    let rank = registration.rank_id;
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint.connect_timeout(HEARTBEAT).timeout(HEARTBEAT * 2),
        Err(e) => {
            tracing::error!("agent of rank {rank}: bad distributed address '{address}': {e}");
            return;
        }
    };
    let mut client = DistributedServableClient::new(endpoint.connect_lazy());
    let mut registered = false;
    let mut last_error = String::new();
    let mut interval = tokio::time::interval(HEARTBEAT);
    loop {
        interval.tick().await;
        match client.register(registration.clone()).await {
            Ok(_) => {
                if !registered {
                    tracing::info!("agent of rank {rank}: registered with {address}");
                    println!("rustserve agent rank {rank} registered");
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                }
                registered = true;
                last_error.clear();
            }
            Err(status) => {
                let text = status.message().to_string();
                if text != last_error {
                    tracing::warn!("agent of rank {rank}: cannot register with {address}: {text}");
                    last_error = text;
                }
                registered = false;
            }
        }
    }
}

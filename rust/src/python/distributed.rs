//! The native half of `rustserve.server.distributed`: the main process's hub, the rank query `startup_agents` makes,
//! and the agent loop behind `rustserve agent`.

use super::detached;
use crate::distributed::{self, RankEntry, agent};
use crate::error::ServeError;
use crate::model::DeviceChoice;
use crate::proto::distributed as pb;
use pyo3::prelude::*;
use std::time::Duration;

/// Starts the hub of `servable` at `address`, for `ranks` = `(rank_id, device_id, server_id)` of the rank table.
/// `wait_seconds` 0 waits for the agents forever when the servable loads.
#[pyfunction]
pub fn start_agent_hub(
    py: Python<'_>,
    servable: String,
    address: String,
    ranks: Vec<(u32, String, String)>,
    wait_seconds: f64,
) -> PyResult<()> {
    let ranks = ranks
        .into_iter()
        .map(|(rank_id, device_id, server_id)| RankEntry {
            rank_id,
            device_id,
            server_id,
        })
        .collect();
    let wait = (wait_seconds > 0.0).then(|| Duration::from_secs_f64(wait_seconds));
    detached(py, move || {
        distributed::start_hub(&servable, &address, ranks, wait).map(|_| ())
    })
}

/// Stops the hub of `servable` (its start failed).
#[pyfunction]
pub fn stop_agent_hub(py: Python<'_>, servable: String) {
    py.detach(move || distributed::stop_hub(&servable));
}

/// Stops every hub of this process.
#[pyfunction]
pub fn stop_agent_hubs(py: Python<'_>) {
    py.detach(distributed::stop_all);
}

/// Is every rank of `servable` registered and heard from lately?
#[pyfunction]
pub fn agents_ready(servable: &str) -> bool {
    distributed::hub_for(servable).is_some_and(|hub| hub.ready())
}

/// The ranks (`(rank_id, device_id)`) of the rank table that the main process at `address` lists for `server_id`
/// (every rank for ""); retries until `timeout_seconds`, since the main process may start after the agents.
#[pyfunction]
pub fn agent_ranks(
    py: Python<'_>,
    address: String,
    server_id: String,
    timeout_seconds: f64,
) -> PyResult<Vec<(u32, String)>> {
    detached(py, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout_seconds.max(0.0));
            loop {
                let attempt = async {
                    let mut client = pb::distributed_servable_client::DistributedServableClient::connect(format!(
                        "http://{address}"
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                    let reply = client
                        .ranks(pb::RanksRequest {
                            server_id: server_id.clone(),
                        })
                        .await
                        .map_err(|s| s.message().to_string())?;
                    Ok::<_, String>(reply.into_inner().ranks)
                };
                match attempt.await {
                    Ok(ranks) => return Ok(ranks.into_iter().map(|r| (r.rank_id, r.device_id)).collect()),
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(ServeError::Config(format!(
                            "cannot get the rank table from the distributed servable at {address}: {e}"
                        )));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    })
}

/// Serves one rank (`rustserve agent`) until SIGINT/SIGTERM reach Python; see `distributed::agent`.
#[pyfunction]
#[pyo3(signature = (model_file, rank_id, listen, distributed_address, group_config=None, device_id=None, intra_op_threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn run_agent(
    py: Python<'_>,
    model_file: String,
    rank_id: u32,
    listen: String,
    distributed_address: String,
    group_config: Option<String>,
    device_id: Option<i32>,
    intra_op_threads: Option<usize>,
) -> PyResult<()> {
    let options = agent::AgentOptions {
        model_file: model_file.into(),
        group_config: group_config.map(Into::into),
        rank_id,
        listen,
        distributed_address,
        device: device_id.map_or(DeviceChoice::Cpu, DeviceChoice::Cuda),
        intra_op_threads,
    };
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let serving = std::thread::Builder::new()
        .name("rustserve-agent-main".into())
        .spawn(move || agent::serve(&options, &mut || stop_rx.try_recv().is_ok()))
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    // Wait attached in short steps, so Python's signal handlers (KeyboardInterrupt, SystemExit) run.
    let outcome = loop {
        if serving.is_finished() {
            break Ok(());
        }
        if let Err(err) = py.check_signals() {
            break Err(err);
        }
        py.detach(|| std::thread::sleep(Duration::from_millis(100)));
    };
    let _ = stop_tx.send(());
    let served = py.detach(|| serving.join());
    outcome?;
    match served {
        Ok(result) => result.map_err(PyErr::from),
        Err(_) => Err(ServeError::Internal("the agent panicked".into()).into()),
    }
}

//! Method executor: walks a method's stages for the instances of one request. Stages run in order; within a
//! stage all live instances go together (model stages fan out to the model's batcher, which groups them with
//! other requests; a Python stage is one job on the GIL thread). An instance that fails drops out and keeps
//! its error; the others go on.

use crate::batching::ModelQueue;
use crate::error::ServeError;
use crate::request::InstanceResult;
use crate::servable::spec::{FunctionId, MethodSpec, StageKind};
use crate::tensor::Tensor;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;

/// The loaded models of one servable version; stages and `Model.call` find them by index or key.
#[derive(Default)]
pub struct ModelSet {
    /// `[model][subgraph]`.
    pub queues: Vec<Vec<Arc<ModelQueue>>>,
    pub by_key: HashMap<String, usize>,
}

impl ModelSet {
    /// The queue of a model's subgraph.
    pub fn queue(&self, model: usize, subgraph: usize) -> Option<&Arc<ModelQueue>> {
        self.queues.get(model).and_then(|subgraphs| subgraphs.get(subgraph))
    }
}

/// A method ready to run: its validated spec plus the models it uses.
pub struct MethodPlan {
    pub servable: String,
    pub version: u64,
    pub spec: MethodSpec,
    pub output_names: Arc<[String]>,
    pub models: Arc<ModelSet>,
}

/// One Python stage call for the live instances of a request.
pub struct FunctionCall {
    pub function: FunctionId,
    /// `<servable>.<function name>`, used in contract-violation texts.
    pub name: String,
    pub tag: String,
    pub method: String,
    /// 1-based stage index, as MindSpore reports it.
    pub stage_index: usize,
    pub outputs_count: usize,
    pub batch_size: Option<usize>,
    /// Per instance, the stage's inputs in order.
    pub instances: Vec<Vec<Tensor>>,
    /// Models of the calling servable, for `Model.call` inside the stage.
    pub models: Arc<ModelSet>,
}

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

/// Runs Python stage functions; implemented by the GIL-thread executor (and by fakes in tests).
pub trait PythonStages: Send + Sync {
    /// Calls the function for every instance; answers one result per instance, in order.
    fn submit(&self, call: FunctionCall) -> BoxFuture<'static, Vec<InstanceResult>>;

    /// The call stuck on the server's own Python thread, if one is.
    fn stuck(&self) -> Option<StuckCall> {
        None
    }
}

/// Runs `plan` for instances whose inputs are in the method's input order.
pub async fn run_method(
    plan: &MethodPlan,
    python: &dyn PythonStages,
    instances: Vec<Vec<Tensor>>,
) -> Vec<InstanceResult> {
    let n = instances.len();
    // values[i][stage] = outputs of `stage` for instance i (stage 0 = method inputs).
    let mut values: Vec<Vec<Vec<Tensor>>> = instances.into_iter().map(|inputs| vec![inputs]).collect();
    let mut errors: Vec<Option<ServeError>> = vec![None; n];
    for (k, stage) in plan.spec.stages.iter().enumerate() {
        let alive: Vec<usize> = (0..n).filter(|&i| errors[i].is_none()).collect();
        if alive.is_empty() {
            break;
        }
        let inputs: Vec<Vec<Tensor>> = alive
            .iter()
            .map(|&i| {
                stage
                    .inputs
                    .iter()
                    .map(|src| values[i][src.stage][src.index].clone())
                    .collect()
            })
            .collect();
        let results = match &stage.kind {
            StageKind::Model { model, subgraph } => match plan.models.queue(*model, *subgraph) {
                Some(queue) => queue.infer_all(inputs).await,
                None => vec![Err(ServeError::Internal(format!("model {model} is not loaded"))); alive.len()],
            },
            StageKind::Function {
                function,
                name,
                batch_size,
            } => {
                let call = FunctionCall {
                    function: *function,
                    name: name.clone(),
                    tag: stage.tag.clone(),
                    method: plan.spec.name.clone(),
                    stage_index: k + 1,
                    outputs_count: stage.outputs_count,
                    batch_size: *batch_size,
                    instances: inputs,
                    models: plan.models.clone(),
                };
                python.submit(call).await
            }
        };
        if results.len() != alive.len() {
            let err = ServeError::Internal(format!(
                "stage {} answered {} results for {} instances",
                k + 1,
                results.len(),
                alive.len()
            ));
            for &i in &alive {
                errors[i] = Some(err.clone());
            }
            continue;
        }
        for (i, result) in alive.into_iter().zip(results) {
            match result {
                Ok(outputs) if outputs.len() == stage.outputs_count => values[i].push(outputs),
                Ok(outputs) => {
                    errors[i] = Some(ServeError::Stage(format!(
                        "Call {} Failed, method: '{}', stage index(begin with 1): {}, error msg: {} outputs returned, \
                         {} expected",
                        stage.tag,
                        plan.spec.name,
                        k + 1,
                        outputs.len(),
                        stage.outputs_count
                    )));
                }
                Err(err) => errors[i] = Some(err),
            }
        }
    }
    values
        .into_iter()
        .zip(errors)
        .map(|(vals, err)| match err {
            Some(err) => Err(err),
            None => Ok(plan
                .spec
                .outputs
                .iter()
                .map(|src| vals[src.stage][src.index].clone())
                .collect()),
        })
        .collect()
}

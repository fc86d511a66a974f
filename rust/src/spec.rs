//! Plain-data servable description, the Rust mirror of python/rustserve/server/_spec.py. The Python loader
//! records it while importing servable_config.py; the Python bridge converts the dicts into these structs;
//! `servable::loader` validates them against the ONNX models. No Python objects live here: function stages refer
//! to their callable by `FunctionId`, an index into the GIL thread's function table. It sits below `pipeline` and
//! `servable`, which both read it.

/// Where a stage input or method output comes from: stage 0 = method inputs, stage k = k-th stage's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    pub stage: usize,
    pub index: usize,
}

/// Where the model runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    /// CUDA device ids; one session per device.
    Gpu(Vec<i32>),
}

/// One `declare_model` call.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// Files joined with ";" (MindSpore's model key); also the error tag.
    pub key: String,
    /// One file per subgraph, absolute paths.
    pub files: Vec<std::path::PathBuf>,
    pub with_batch_dim: bool,
    pub without_batch_dim_inputs: Vec<usize>,
    pub max_batch_size: Option<usize>,
    /// Longest an instance waits for others to fill its batch (`declare_model(max_queue_delay_ms=...)`); zero never
    /// waits.
    pub max_queue_delay: std::time::Duration,
    /// Run sizes to prefer for a symbolic batch dimension (`declare_model(preferred_batch_sizes=...)`).
    pub preferred_batch_sizes: Vec<usize>,
    pub device: DeviceKind,
    pub intra_op_threads: Option<usize>,
    /// `distributed.declare_servable(rank_size, stage_size)`: served by agents (see `crate::distributed`); `files`
    /// is empty then.
    pub distributed: Option<Distributed>,
}

/// The layout a distributed model declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Distributed {
    pub rank_size: usize,
    pub stage_size: usize,
}

/// Index of a Python callable in the executor's function table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FunctionId(pub usize);

/// What a stage runs.
#[derive(Clone, Debug)]
pub enum StageKind {
    Model {
        model: usize,
        subgraph: usize,
    },
    Function {
        function: FunctionId,
        name: String,
        batch_size: Option<usize>,
    },
}

/// One `add_stage` call.
#[derive(Clone, Debug)]
pub struct StageSpec {
    pub kind: StageKind,
    pub inputs: Vec<Source>,
    pub outputs_count: usize,
    /// Error tag: `Function 'svc.f'`, `Model 'a.onnx'` or the user's `tag`.
    pub tag: String,
}

/// One `register_method`.
#[derive(Clone, Debug)]
pub struct MethodSpec {
    pub name: String,
    pub inputs: Vec<String>,
    pub output_names: Vec<String>,
    pub outputs: Vec<Source>,
    pub stages: Vec<StageSpec>,
}

/// One servable version.
#[derive(Clone, Debug)]
pub struct ServableSpec {
    pub name: String,
    pub version: u64,
    pub models: Vec<ModelSpec>,
    pub methods: Vec<MethodSpec>,
}

impl MethodSpec {
    /// How many values stage `stage` provides (method inputs for 0).
    pub fn outputs_of(&self, stage: usize) -> Option<usize> {
        if stage == 0 {
            Some(self.inputs.len())
        } else {
            self.stages.get(stage - 1).map(|s| s.outputs_count)
        }
    }

    /// Checks that every source points at an earlier stage's existing output.
    pub fn check_sources(&self) -> Result<(), String> {
        let check = |src: &Source, before: usize, what: &str| -> Result<(), String> {
            let count = self.outputs_of(src.stage).filter(|_| src.stage < before);
            match count {
                Some(n) if src.index < n => Ok(()),
                _ => Err(format!(
                    "method '{}': {what} refers to output {} of stage {}, which does not exist",
                    self.name, src.index, src.stage
                )),
            }
        };
        for (k, stage) in self.stages.iter().enumerate() {
            for src in &stage.inputs {
                check(src, k + 1, &format!("stage {} input", k + 1))?;
            }
        }
        for src in &self.outputs {
            check(src, self.stages.len() + 1, "an output")?;
        }
        if self.outputs.len() != self.output_names.len() {
            return Err(format!(
                "Method return output size {} not match registered {}",
                self.outputs.len(),
                self.output_names.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(stages: Vec<StageSpec>, outputs: Vec<Source>) -> MethodSpec {
        MethodSpec {
            name: "m".into(),
            inputs: vec!["x".into()],
            output_names: vec!["y".into(); outputs.len()],
            outputs,
            stages,
        }
    }

    fn fstage(inputs: Vec<Source>) -> StageSpec {
        StageSpec {
            kind: StageKind::Function {
                function: FunctionId(0),
                name: "s.f".into(),
                batch_size: None,
            },
            inputs,
            outputs_count: 1,
            tag: "Function 's.f'".into(),
        }
    }

    #[test]
    fn sources_must_point_backwards() {
        let ok = method(
            vec![fstage(vec![Source { stage: 0, index: 0 }])],
            vec![Source { stage: 1, index: 0 }],
        );
        assert!(ok.check_sources().is_ok());
        let forward = method(
            vec![fstage(vec![Source { stage: 1, index: 0 }])],
            vec![Source { stage: 1, index: 0 }],
        );
        assert!(forward.check_sources().unwrap_err().contains("stage 1 input"));
        let bad_index = method(vec![], vec![Source { stage: 0, index: 1 }]);
        assert!(bad_index.check_sources().is_err());
        let passthrough = method(vec![], vec![Source { stage: 0, index: 0 }]);
        assert!(passthrough.check_sources().is_ok());
    }
}

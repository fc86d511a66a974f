//! Servables: turning the spec recorded from servable_config.py (`crate::spec`) into loaded models and method
//! plans (`loader`), and the name -> version table requests are routed through (`registry`).

pub mod loader;
pub mod registry;

use crate::pipeline::{MethodPlan, ModelSet};
use std::collections::HashMap;
use std::sync::Arc;

/// One loaded servable version: its models and its methods, ready to serve.
pub struct ServableVersion {
    pub name: String,
    pub version: u64,
    pub models: Arc<ModelSet>,
    pub methods: HashMap<String, Arc<MethodPlan>>,
    /// What lives exactly as long as this version and stops when it is dropped (unloaded or replaced, once its
    /// last request ended): the worker processes of a version loaded through the model repository.
    pub attached: Vec<Box<dyn Send + Sync>>,
}

impl ServableVersion {
    /// Method names, sorted.
    pub fn method_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.methods.keys().cloned().collect();
        names.sort();
        names
    }
}

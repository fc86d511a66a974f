//! Per-model batching queues (owned by the model helper).

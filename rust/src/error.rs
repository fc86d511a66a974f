//! `ServeError`: the one place error causes are defined. Each variant carries the exact client-facing text
//! (MindSpore Serving's wording where one exists) and maps to a MindSpore error code; ingress modules turn
//! it into an in-band `error_msg`, the Python bridge into an exception.

/// MindSpore Serving error codes (`ErrorMsg.error_code`).
pub mod code {
    pub const FAILED: i64 = 1;
    pub const INVALID_INPUTS: i64 = 2;
    pub const SYSTEM_ERROR: i64 = 3;
    pub const WORKER_UNAVAILABLE: i64 = 4;
    pub const SERVABLE_UNAVAILABLE: i64 = 5;
}

/// Why a request, an instance or a start-up step failed.
/// Serialisable because worker processes send it back over `workers::ipc`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ServeError {
    /// Routing, input names, tensor checks, model input checks (code 2).
    #[error("{0}")]
    InvalidInput(String),
    /// A Python stage raised, or broke its contract (code 3).
    #[error("{0}")]
    Stage(String),
    /// ONNX Runtime failed while running a batch (code 1).
    #[error("{0}")]
    Model(String),
    /// The executor for the request is gone, e.g. during shutdown (code 4).
    #[error("{0}")]
    Unavailable(String),
    /// The request ran past the request timeout (code 4, as MindSpore has no code of its own for it).
    #[error("{0}")]
    Timeout(String),
    /// Too many requests queued (code 1).
    #[error("{0}")]
    Overloaded(String),
    /// A servable failed to load, or a bad server setting (start-up only).
    #[error("{0}")]
    Config(String),
    /// A bug or an unexpected condition inside rustserve (code 3).
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// The MindSpore error code sent with this error.
    pub fn code(&self) -> i64 {
        match self {
            ServeError::InvalidInput(_) => code::INVALID_INPUTS,
            ServeError::Stage(_) | ServeError::Internal(_) => code::SYSTEM_ERROR,
            ServeError::Model(_) | ServeError::Overloaded(_) | ServeError::Config(_) => code::FAILED,
            ServeError::Unavailable(_) | ServeError::Timeout(_) => code::WORKER_UNAVAILABLE,
        }
    }

    /// The client-facing text.
    pub fn message(&self) -> &str {
        match self {
            ServeError::InvalidInput(m)
            | ServeError::Stage(m)
            | ServeError::Model(m)
            | ServeError::Unavailable(m)
            | ServeError::Timeout(m)
            | ServeError::Overloaded(m)
            | ServeError::Config(m)
            | ServeError::Internal(m) => m,
        }
    }
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;

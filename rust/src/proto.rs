//! Generated protobuf / tonic code for the wire formats in proto/.

/// MindSpore Serving's `mindspore.serving.proto` package (MSService).
#[allow(clippy::all, clippy::pedantic)]
pub mod ms {
    tonic::include_proto!("mindspore.serving.proto");
}

/// rustserve's services between a distributed servable's main process and its agents.
#[allow(clippy::all, clippy::pedantic)]
pub mod distributed {
    tonic::include_proto!("rustserve.distributed");
}

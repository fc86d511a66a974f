//! MindSpore gRPC proto codec.

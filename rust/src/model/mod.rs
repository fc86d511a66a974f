//! ONNX Runtime model runner (owned by the model helper).

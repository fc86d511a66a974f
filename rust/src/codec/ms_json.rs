//! MindSpore REST JSON codec.

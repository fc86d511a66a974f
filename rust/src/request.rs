//! Wire-neutral request and reply: what every ingress decodes into and encodes from, plus MindSpore's
//! reply-collapse rule (all instances failed alike -> one error and no instances).

use crate::error::ServeError;
use crate::tensor::{NamedInstance, Tensor};
use std::sync::Arc;

/// Which method of which servable version a request addresses (version 0 = newest).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodRef {
    pub servable: String,
    pub method: String,
    pub version: u64,
}

impl MethodRef {
    /// MindSpore's `<spec>` text: `servable(add) method(add_common) ` plus ` version(2) ` when version > 0.
    pub fn spec_text(&self) -> String {
        if self.version > 0 {
            format!(
                "servable({}) method({})  version({}) ",
                self.servable, self.method, self.version
            )
        } else {
            format!("servable({}) method({}) ", self.servable, self.method)
        }
    }
}

/// A decoded predict request.
#[derive(Clone, Debug, Default)]
pub struct PredictRequest {
    pub target: MethodRef,
    pub instances: Vec<NamedInstance>,
}

/// One instance's outcome: the method's outputs in `output_names` order, or why it failed.
pub type InstanceResult = Result<Vec<Tensor>, ServeError>;

/// The answer to a request before encoding.
#[derive(Clone, Debug)]
pub enum PredictReply {
    /// The whole request failed (routing, input names, zero instances, overload).
    Failed(ServeError),
    /// One result per request instance, in order.
    Instances {
        output_names: Arc<[String]>,
        results: Vec<InstanceResult>,
    },
}

/// How a reply travels, after MindSpore's collapse rule.
#[derive(Debug)]
pub enum ReplyShape<'a> {
    /// Every instance succeeded: instances only, no error list.
    AllOk {
        output_names: &'a [String],
        outputs: Vec<&'a [Tensor]>,
    },
    /// One error and zero instances: whole-request failure, or every instance failed with the same code and text.
    OneError(&'a ServeError),
    /// Mixed: one entry per instance, failed ones carry their error and no outputs.
    Mixed {
        output_names: &'a [String],
        results: &'a [InstanceResult],
    },
}

impl PredictReply {
    /// Applies MindSpore's reply-collapse rule.
    pub fn shape(&self) -> ReplyShape<'_> {
        match self {
            PredictReply::Failed(err) => ReplyShape::OneError(err),
            PredictReply::Instances { output_names, results } => {
                let first_err = results.iter().find_map(|r| r.as_ref().err());
                match first_err {
                    None => ReplyShape::AllOk {
                        output_names,
                        outputs: results
                            .iter()
                            .filter_map(|r| r.as_ref().ok().map(Vec::as_slice))
                            .collect(),
                    },
                    Some(first) if results.iter().all(|r| r.as_ref().err() == Some(first)) => {
                        ReplyShape::OneError(first)
                    }
                    Some(_) => ReplyShape::Mixed { output_names, results },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Arc<[String]> {
        Arc::from(vec!["y".to_string()])
    }

    #[test]
    fn spec_text_matches_mindspore() {
        let mut r = MethodRef {
            servable: "add".into(),
            method: "add_common".into(),
            version: 0,
        };
        assert_eq!(r.spec_text(), "servable(add) method(add_common) ");
        r.version = 2;
        assert_eq!(r.spec_text(), "servable(add) method(add_common)  version(2) ");
    }

    #[test]
    fn collapse_rule() {
        let ok = Ok(vec![Tensor::scalar_string("a")]);
        let e1 = Err(ServeError::Stage("boom".into()));
        let e2 = Err(ServeError::Stage("other".into()));
        let all_ok = PredictReply::Instances {
            output_names: names(),
            results: vec![ok.clone(), ok.clone()],
        };
        assert!(matches!(all_ok.shape(), ReplyShape::AllOk { ref outputs, .. } if outputs.len() == 2));
        let same = PredictReply::Instances {
            output_names: names(),
            results: vec![e1.clone(), e1.clone()],
        };
        assert!(matches!(same.shape(), ReplyShape::OneError(e) if e.message() == "boom"));
        let differ = PredictReply::Instances {
            output_names: names(),
            results: vec![e1.clone(), e2],
        };
        assert!(matches!(differ.shape(), ReplyShape::Mixed { .. }));
        let mixed = PredictReply::Instances {
            output_names: names(),
            results: vec![ok, e1],
        };
        assert!(matches!(mixed.shape(), ReplyShape::Mixed { .. }));
    }
}

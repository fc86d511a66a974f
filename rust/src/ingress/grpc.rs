//! MindSpore's `MSService.Predict` over tonic. Errors travel in-band (status OK with `error_msg`), as the
//! MindSpore client expects; only transport limits (message size) use gRPC status codes.

use crate::codec::ms_proto;
use crate::metrics::Protocol;
use crate::proto::ms::ms_service_server::{MsService, MsServiceServer};
use crate::proto::ms::{PredictReply, PredictRequest};
use crate::request;
use crate::service::Service;
use crate::trace;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The tonic service; one per server, sharing the `Service`.
pub struct MsGrpc {
    service: Arc<Service>,
}

#[tonic::async_trait]
impl MsService for MsGrpc {
    async fn predict(&self, request: Request<PredictRequest>) -> Result<Response<PredictReply>, Status> {
        let parent = trace::grpc_traceparent(request.metadata());
        let message = request.into_inner();
        let answer = async {
            let decoding = trace::start();
            let spec = message.servable_spec.clone().unwrap_or_default();
            let decoded = ms_proto::decode_request(message);
            trace::record("rustserve.decode", decoding, Vec::new());
            let reply = match decoded {
                Ok(decoded) => self.service.predict_via(decoded, Protocol::MindsporeGrpc).await,
                Err(err) => {
                    trace::set_error(err.message());
                    request::PredictReply::Failed(err)
                }
            };
            let encoding = trace::start();
            let reply = ms_proto::encode_reply(spec, &reply);
            trace::record("rustserve.encode", encoding, Vec::new());
            Ok(Response::new(reply))
        };
        trace::request(Protocol::MindsporeGrpc, parent, answer).await
    }
}

/// Builds the tonic service with `max_bytes` as the send and receive message limit.
pub fn ms_service(service: Arc<Service>, max_bytes: usize) -> MsServiceServer<MsGrpc> {
    MsServiceServer::new(MsGrpc { service })
        .max_decoding_message_size(max_bytes)
        .max_encoding_message_size(max_bytes)
}

//! Open Inference Protocol (KServe v2) gRPC over tonic: `inference.GRPCInferenceService`, served on the same port as
//! MindSpore's `MSService` next to the standard `grpc.health.v1.Health`. Errors are gRPC statuses:
//! INVALID_ARGUMENT (bad request), NOT_FOUND (unknown model or version), UNAVAILABLE (not ready) or INTERNAL.

use super::kserve::{self, Status as V2Status, V2Error};
use crate::codec::kserve_proto::pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::codec::kserve_proto::{self, pb};
use crate::metrics::Protocol;
use crate::service::Service;
use crate::trace;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The tonic service; one per server, sharing the `Service`.
pub struct KserveGrpc {
    service: Arc<Service>,
}

fn status(err: V2Error) -> Status {
    let code = match err.status {
        V2Status::BadRequest => tonic::Code::InvalidArgument,
        V2Status::NotFound => tonic::Code::NotFound,
        V2Status::TooLarge | V2Status::TooMany => tonic::Code::ResourceExhausted,
        V2Status::Unavailable => tonic::Code::Unavailable,
        V2Status::Internal => tonic::Code::Internal,
        V2Status::Timeout => tonic::Code::DeadlineExceeded,
        V2Status::Unauthenticated => tonic::Code::Unauthenticated,
        V2Status::Forbidden => tonic::Code::PermissionDenied,
    };
    Status::new(code, err.message)
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for KserveGrpc {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Reply<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Reply<pb::ServerReadyResponse> {
        // A servable that failed to load at start-up keeps the server "not ready" (the others still serve).
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.service.readiness().is_ok(),
        }))
    }

    async fn model_ready(&self, request: Request<pb::ModelReadyRequest>) -> Reply<pb::ModelReadyResponse> {
        let request = request.into_inner();
        let ready = kserve::resolve(&self.service, &request.name, &request.version)
            .is_ok_and(|resolved| self.service.servable_readiness(&resolved.servable.name).is_ok());
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Reply<pb::ServerMetadataResponse> {
        Ok(Response::new(kserve_proto::server_metadata()))
    }

    async fn model_metadata(&self, request: Request<pb::ModelMetadataRequest>) -> Reply<pb::ModelMetadataResponse> {
        let request = request.into_inner();
        let resolved = kserve::resolve(&self.service, &request.name, &request.version).map_err(status)?;
        let description = kserve::describe(&self.service, &resolved);
        Ok(Response::new(kserve_proto::model_metadata(&description)))
    }

    async fn model_infer(&self, request: Request<pb::ModelInferRequest>) -> Reply<pb::ModelInferResponse> {
        let parent = trace::grpc_traceparent(request.metadata());
        let message = request.into_inner();
        trace::request(Protocol::KserveGrpc, parent, self.answer_infer(message)).await
    }

    async fn model_config(&self, request: Request<pb::ModelConfigRequest>) -> Reply<pb::ModelConfigResponse> {
        let request = request.into_inner();
        let resolved = kserve::resolve(&self.service, &request.name, &request.version).map_err(status)?;
        let description = kserve::describe(&self.service, &resolved);
        Ok(Response::new(kserve_proto::model_config(&description)))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Reply<pb::ModelStatisticsResponse> {
        let request = request.into_inner();
        let model = (!request.name.is_empty()).then_some(request.name.as_str());
        let entries = kserve::statistics(&self.service, model, &request.version).map_err(status)?;
        Ok(Response::new(kserve_proto::model_stats(&entries)))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Reply<pb::RepositoryIndexResponse> {
        let request = request.into_inner();
        let entries = kserve::index(&self.service, request.ready).await.map_err(status)?;
        Ok(Response::new(kserve_proto::repository_index(&entries)))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Reply<pb::RepositoryModelLoadResponse> {
        authorize(&self.service, &request)?;
        let request = request.into_inner();
        kserve::refused_load_parameter(request.parameters.keys()).map_err(status)?;
        kserve::load(&self.service, &request.model_name).await.map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Reply<pb::RepositoryModelUnloadResponse> {
        authorize(&self.service, &request)?;
        let request = request.into_inner();
        kserve::unload(&self.service, &request.model_name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

impl KserveGrpc {
    /// `ModelInfer` inside its trace (see `trace::request`).
    async fn answer_infer(&self, message: pb::ModelInferRequest) -> Reply<pb::ModelInferResponse> {
        let started = Instant::now();
        let decoding = trace::start();
        let resolved = match kserve::resolve(&self.service, &message.model_name, &message.model_version) {
            Ok(resolved) => resolved,
            Err(err) => {
                self.service.metrics.reject(Protocol::KserveGrpc);
                trace::set_error(&err.message);
                return Err(status(err));
            }
        };
        trace::set_target(
            &resolved.servable.name,
            &resolved.plan.spec.name,
            resolved.servable.version,
        );
        let decoded = kserve_proto::decode_request(message);
        trace::record("rustserve.decode", decoding, Vec::new());
        let request = match decoded {
            Ok(request) => request,
            Err(e) => {
                kserve::record_failure(&self.service, &resolved, Protocol::KserveGrpc, started.elapsed());
                let err = V2Error::bad(format!("model '{}': {e}", resolved.name));
                trace::set_error(&err.message);
                return Err(status(err));
            }
        };
        let answered = kserve::infer(
            &self.service,
            &resolved,
            request,
            Protocol::KserveGrpc,
            started.elapsed(),
        )
        .await
        .map_err(|err| {
            trace::set_error(&err.message);
            status(err)
        })?;
        let encoding = Instant::now();
        let traced_encoding = trace::start();
        let response = kserve_proto::encode_response(answered.response);
        trace::record("rustserve.encode", traced_encoding, Vec::new());
        if let Some(stats) = &answered.stats {
            // NOTE: protobuf serialisation happens in tonic after this returns; only the message build is counted.
            stats.record_output(answered.instances, encoding.elapsed());
        }
        Ok(Response::new(response))
    }
}

/// Builds the tonic service with `max_bytes` as the send and receive message limit.
pub fn kserve_service(service: Arc<Service>, max_bytes: usize) -> GrpcInferenceServiceServer<KserveGrpc> {
    GrpcInferenceServiceServer::new(KserveGrpc { service })
        .max_decoding_message_size(max_bytes)
        .max_encoding_message_size(max_bytes)
}

/// The repository API key check of load and unload, from the request's `authorization` metadata.
fn authorize<T>(service: &Service, request: &Request<T>) -> Result<(), Status> {
    let presented = request
        .metadata()
        .get(kserve::REPOSITORY_KEY_HEADER)
        .map(tonic::metadata::MetadataValue::as_bytes);
    kserve::authorize_repository(service, presented).map_err(status)
}

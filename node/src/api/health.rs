//! `grpc.health.v1` as tonic-health serves it, except that `Watch` streams end when the node
//! shuts down: an open watch would otherwise hold the drain for its whole grace period.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The health service over `reporter`'s statuses, with watches ended by `shutdown`.
pub fn health_service(
    reporter: HealthReporter,
    shutdown: CancellationToken,
) -> HealthServer<EndingHealth> {
    HealthServer::new(EndingHealth {
        inner: HealthService::from_health_reporter(reporter),
        shutdown,
    })
}

/// tonic-health's service with watches that end on shutdown.
#[derive(Debug)]
pub struct EndingHealth {
    inner: HealthService,
    shutdown: CancellationToken,
}

#[tonic::async_trait]
impl Health for EndingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        // The NOT_SERVING update sent at shutdown still goes out: the stream ends only once
        // the drain starts, after it.
        let ending = stream.take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(ending)))
    }
}

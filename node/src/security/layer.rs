//! `AclLayer`: where every call is authenticated, as a tower layer around every gRPC service.
//! It maps the method path to an action (see [`super::acl::method_access`]) and asks the
//! [`Authorizer`], which decides peer and admin calls and unknown methods here; refused calls
//! are answered here and never reach a handler. A `log.v1.Log` call is decided by the service
//! on the log its message names ([`Authorizer::authorize_log`]), before it does anything.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower_layer::Layer;
use tower_service::Service;

use super::{Authorizer, PeerIdentity};

/// Authorizes each call with the ACL when one is configured; passes everything through
/// otherwise.
#[derive(Debug, Clone, Default)]
pub struct AclLayer {
    authorizer: Option<Arc<Authorizer>>,
}

impl AclLayer {
    /// A layer enforcing `authorizer`, or letting everything through when `None`.
    pub fn new(authorizer: Option<Arc<Authorizer>>) -> Self {
        AclLayer { authorizer }
    }
}

impl<S> Layer<S> for AclLayer {
    type Service = AclService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AclService {
            inner,
            authorizer: self.authorizer.clone(),
        }
    }
}

/// The service [`AclLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct AclService<S> {
    inner: S,
    authorizer: Option<Arc<Authorizer>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AclService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if let Some(authorizer) = &self.authorizer {
            let peer = request.extensions().get::<PeerIdentity>();
            if let Err(status) = authorizer.authorize(request.uri().path(), peer) {
                return Either::Left(ready(Ok(status.into_http())));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

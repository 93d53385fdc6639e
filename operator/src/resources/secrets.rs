//! The certificate Secrets, from what [`crate::tls::plan`] decided. Each carries its expiry in
//! annotations, so `kubectl get secret -o yaml` answers "when does this end" without openssl.

use k8s_openapi::api::core::v1::Secret;

use super::{ClusterView, SpecError};
use crate::tls::Pki;

/// Annotation with the CA's end (RFC 3339).
pub const CA_NOT_AFTER_ANNOTATION: &str = "proglog.dev/ca-not-after";
/// Annotation with the earliest end of the certificates in the Secret (RFC 3339).
pub const CERTS_NOT_AFTER_ANNOTATION: &str = "proglog.dev/certs-not-after";

/// `NAME-ca`, when the operator keeps the CA (not with a user CA).
pub fn ca_secret(view: &ClusterView<'_>, pki: &Pki) -> Result<Option<Secret>, SpecError> {
    let Some(data) = &pki.ca_secret else {
        return Ok(None);
    };
    let mut metadata = view.metadata(view.ca_secret_name(), "tls")?;
    metadata.annotations = Some(
        [(
            CA_NOT_AFTER_ANNOTATION.to_owned(),
            pki.ca_not_after.to_string(),
        )]
        .into(),
    );
    Ok(Some(Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(data.clone()),
        ..Secret::default()
    }))
}

/// `NAME-tls`: the trust bundle and every node's certificate and key, mounted in every pod.
pub fn nodes_secret(view: &ClusterView<'_>, pki: &Pki) -> Result<Secret, SpecError> {
    let mut metadata = view.metadata(view.tls_secret_name(), "tls")?;
    metadata.annotations = Some(
        [
            (
                CA_NOT_AFTER_ANNOTATION.to_owned(),
                pki.ca_not_after.to_string(),
            ),
            (
                CERTS_NOT_AFTER_ANNOTATION.to_owned(),
                pki.certs_not_after.to_string(),
            ),
        ]
        .into(),
    );
    Ok(Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(pki.nodes_secret.clone()),
        ..Secret::default()
    })
}

/// `NAME-operator-tls`: the operator's client certificate for the admin API.
pub fn operator_secret(view: &ClusterView<'_>, pki: &Pki) -> Result<Secret, SpecError> {
    let metadata = view.metadata(view.operator_tls_secret_name(), "tls")?;
    Ok(Secret {
        metadata,
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(pki.operator_secret.clone()),
        ..Secret::default()
    })
}

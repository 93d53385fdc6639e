//! The certificates part: keeps `NAME-ca`, `NAME-tls` and `NAME-operator-tls` valid, renewing
//! before `renewBefore`, and hands the operator's client credentials to the parts that call
//! the nodes. It owns the `CertificatesReady` condition.
//!
//! Paused, it reads and reports (expiry dates, credentials) but writes nothing.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;

use super::apply::{Applied, apply_over};
use super::quorum::node_target;
use super::{Context, PartError};
use crate::admin::ClientCredentials;
use crate::crd::IssuerKind;
use crate::resources::{
    CA_NOT_AFTER_ANNOTATION, CERTS_NOT_AFTER_ANNOTATION, ClusterView, ca_secret, nodes_secret,
    operator_secret,
};
use crate::tls::{
    self, CA_CERT, CaSource, IssueReason, Issued, Lifetimes, LoadedTls, PkiRequest, Rotation,
    SecretData, TLS_CERT, TLS_KEY,
};

/// What the certificates part found and did.
#[derive(Debug, Clone, Default)]
pub struct CertificateReport {
    /// When the CA expires.
    pub ca_not_after: Option<Timestamp>,
    /// When the first node or operator certificate expires.
    pub certs_not_after: Option<Timestamp>,
    /// The operator's client credentials for the admin API.
    pub credentials: Option<Arc<ClientCredentials>>,
    /// Certificates issued in this pass.
    pub issued: Vec<Issued>,
    /// The user's CA is about to expire (the operator cannot renew it).
    pub ca_expiring: bool,
    /// Where a CA replacement stands.
    pub rotation: Rotation,
}

impl CertificateReport {
    /// Whether a certificate was renewed (rather than issued for the first time).
    pub fn renewed(&self) -> bool {
        self.issued
            .iter()
            .any(|issued| !matches!(issued.reason, IssueReason::Missing))
    }
}

async fn read(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, PartError> {
    api.get_opt(name).await.map_err(|source| PartError::Api {
        action: format!("read Secret {name}"),
        source,
    })
}

fn data(secret: &Option<Secret>) -> Option<&SecretData> {
    secret.as_ref().and_then(|secret| secret.data.as_ref())
}

fn credentials(data: Option<&SecretData>) -> Option<Arc<ClientCredentials>> {
    let data = data?;
    let field = |key: &str| data.get(key).map(|bytes| bytes.0.clone());
    Some(Arc::new(ClientCredentials {
        ca_pem: field(CA_CERT)?,
        cert_pem: field(TLS_CERT)?,
        key_pem: field(TLS_KEY)?,
    }))
}

fn annotation_time(secret: &Option<Secret>, key: &str) -> Option<Timestamp> {
    secret
        .as_ref()?
        .metadata
        .annotations
        .as_ref()?
        .get(key)?
        .parse()
        .ok()
}

/// What each ready node reports it has loaded; a node that does not answer reports nothing,
/// so the replacement waits for it.
async fn loaded(
    ctx: &Context,
    view: &ClusterView<'_>,
    nodes: &[tls::Identity],
    ready: &[String],
    credentials: Option<&Arc<ClientCredentials>>,
) -> Vec<LoadedTls> {
    let mut loaded = Vec::with_capacity(nodes.len());
    for node in nodes
        .iter()
        .filter(|node| ready.contains(&node.common_name))
    {
        let target = node_target(view, &node.common_name, credentials);
        match ctx.admin.cluster_status(&target).await {
            Ok(status) => loaded.push(LoadedTls {
                node: node.common_name.clone(),
                trust_bundle_sha256: status.trust_bundle_sha256,
                certificate_sha256: status.certificate_sha256,
            }),
            Err(error) => tracing::info!(
                cluster = view.name(),
                node = node.common_name,
                %error,
                "no TLS report from a node; the CA replacement waits for it"
            ),
        }
    }
    loaded
}

/// Runs the part for the pods `0..node_count` (more than `spec.replicas` while a scale-down
/// is still removing pods, so those keep valid certificates). A CA replacement waits for the
/// `ready` pods' reports (a pod that is not ready reads the Secret as it is when it starts).
pub async fn reconcile(
    ctx: &Context,
    view: &ClusterView<'_>,
    node_count: u32,
    ready: &[String],
    paused: bool,
    now: Timestamp,
) -> Result<CertificateReport, PartError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), view.namespace());
    let spec = &view.spec().tls;
    let nodes_existing = read(&api, &view.tls_secret_name()).await?;
    let operator_existing = read(&api, &view.operator_tls_secret_name()).await?;
    if paused {
        return Ok(CertificateReport {
            ca_not_after: annotation_time(&nodes_existing, CA_NOT_AFTER_ANNOTATION),
            certs_not_after: annotation_time(&nodes_existing, CERTS_NOT_AFTER_ANNOTATION),
            credentials: credentials(data(&operator_existing)),
            issued: Vec::new(),
            ca_expiring: false,
            rotation: Rotation::Steady,
        });
    }
    let lifetimes = Lifetimes::from_spec(spec).map_err(PartError::Tls)?;
    let ca_common_name = format!("proglog CA {}/{}", view.namespace(), view.name());
    let (ca_existing, user_secret_name) = match (spec.issuer.kind, &spec.issuer.secret_name) {
        (IssuerKind::Operator, _) => (read(&api, &view.ca_secret_name()).await?, None),
        (IssuerKind::Secret, Some(secret_name)) => {
            let secret =
                read(&api, secret_name)
                    .await?
                    .ok_or_else(|| PartError::MissingCaSecret {
                        secret: secret_name.clone(),
                    })?;
            (Some(secret), Some(secret_name.clone()))
        }
        (IssuerKind::Secret, None) => {
            return Err(PartError::MissingCaSecret {
                secret: "(spec.tls.issuer.secretName is not set)".to_owned(),
            });
        }
    };
    let empty = SecretData::new();
    let ca = match &user_secret_name {
        Some(secret_name) => CaSource::User {
            secret_name,
            data: data(&ca_existing).unwrap_or(&empty),
        },
        None => CaSource::Operator {
            existing: data(&ca_existing),
            common_name: &ca_common_name,
        },
    };
    let nodes = view.node_identities(node_count);
    let mut request = PkiRequest {
        now,
        lifetimes,
        ca,
        nodes: &nodes,
        existing_nodes: data(&nodes_existing),
        existing_operator: data(&operator_existing),
        loaded: None,
        running: Some(ready),
    };
    let mut pki = tls::plan(&request).map_err(PartError::Tls)?;
    if pki.rotation == Rotation::NeedsReports {
        // A CA replacement waits on what the nodes have loaded: ask each one.
        let credentials = credentials(data(&operator_existing));
        let loaded = loaded(ctx, view, &nodes, ready, credentials.as_ref()).await;
        request.loaded = Some(&loaded);
        pki = tls::plan(&request).map_err(PartError::Tls)?;
    }

    // The Secrets were read above: compare against what was read rather than reading again.
    if let Some(secret) = ca_secret(view, &pki).map_err(PartError::Spec)? {
        apply_over(&api, &secret, ca_existing.as_ref()).await?;
    }
    let nodes_applied = apply_over(
        &api,
        &nodes_secret(view, &pki).map_err(PartError::Spec)?,
        nodes_existing.as_ref(),
    )
    .await?;
    apply_over(
        &api,
        &operator_secret(view, &pki).map_err(PartError::Spec)?,
        operator_existing.as_ref(),
    )
    .await?;
    if nodes_applied != Applied::Unchanged {
        tracing::info!(
            cluster = view.name(),
            issued = pki.issued.len(),
            "certificates written"
        );
    }
    Ok(CertificateReport {
        rotation: pki.rotation,
        ca_not_after: Some(pki.ca_not_after),
        certs_not_after: Some(pki.certs_not_after),
        credentials: credentials(Some(&pki.operator_secret)),
        issued: pki.issued,
        ca_expiring: pki.ca_expiring,
    })
}

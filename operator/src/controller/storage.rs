//! Storage growth. A StatefulSet's `volumeClaimTemplates` cannot change once it exists, so the
//! operator grows the volumes themselves: each PVC of the cluster whose request is below
//! `spec.storage.size` gets the new request (server-side apply of that one field). A PVC
//! already larger is left alone, and nothing ever shrinks (the CRD also refuses a smaller size).
//!
//! The StatefulSet keeps the template it was created with (the workload part copies the size
//! from the StatefulSet in the cluster into what it applies), so a pod added later gets a PVC
//! at the original size, which the next pass grows like the others. Recreating the StatefulSet
//! with `propagationPolicy: Orphan` to change the template was considered and not done: it
//! would add a window where no StatefulSet guards the pods, for a cosmetic gain.
//!
//! Expansion needs a StorageClass with `allowVolumeExpansion: true`; the API server refuses the
//! patch otherwise, and the part reports that error in `Degraded`.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ListParams, Patch};
use serde_json::json;

use super::apply::apply_params;
use super::{Context, PartError};
use crate::plan::volume_needs_growth;
use crate::resources::{ClusterView, DATA_VOLUME};

/// Grows every PVC of the cluster below `spec.storage.size`; returns the PVCs grown.
pub async fn reconcile(ctx: &Context, view: &ClusterView<'_>) -> Result<Vec<String>, PartError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), view.namespace());
    let selector = view.selector_string();
    let claims = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| PartError::Api {
            action: format!(
                "list PersistentVolumeClaims {}/{selector}",
                view.namespace()
            ),
            source,
        })?;
    let prefix = format!("{DATA_VOLUME}-{}-", view.name());
    let desired = &view.spec().storage.size;
    let mut grown = Vec::new();
    for claim in claims.items {
        let Some(name) = claim.metadata.name.clone() else {
            continue;
        };
        if !name.starts_with(&prefix) {
            continue;
        }
        let current = claim
            .spec
            .as_ref()
            .and_then(|spec| spec.resources.as_ref())
            .and_then(|resources| resources.requests.as_ref())
            .and_then(|requests| requests.get("storage"))
            .map(|quantity| quantity.0.as_str());
        if !current.is_some_and(|current| volume_needs_growth(current, desired)) {
            continue;
        }
        let patch = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": view.namespace()},
            "spec": {"resources": {"requests": {"storage": desired}}},
        });
        api.patch(&name, &apply_params(), &Patch::Apply(&patch))
            .await
            .map_err(|source| PartError::Api {
                action: format!("grow PersistentVolumeClaim {}/{name}", view.namespace()),
                source,
            })?;
        ctx.metrics.action("volume_grown");
        grown.push(name);
    }
    Ok(grown)
}

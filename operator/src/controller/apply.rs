//! Writing children: server-side apply with the operator's one field manager and `force`, so
//! a field the operator stops setting (a setting taken out of the LogCluster) is removed by
//! the API server. An apply is skipped only when the object in the cluster carries the hash of
//! exactly what the operator wants now ([`APPLIED_HASH`]) and still holds it
//! ([`crate::plan::contains`]: nobody changed it since), so a pass over a healthy cluster reads
//! and never writes, and any change to what is wanted, removals included, is applied.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::PartError;
use crate::plan::contains;
use crate::resources::MANAGER;
use crate::resources::fingerprint;

/// The annotation carrying a hash of what the operator last applied to an object.
pub const APPLIED_HASH: &str = "proglog.dev/applied-hash";

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The object already held everything.
    Unchanged,
    /// It did not exist.
    Created,
    /// It was changed.
    Updated,
}

/// Server-side apply parameters: the operator's field manager, taking fields over from anyone
/// else (`force`), since the operator owns its children.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// `kind namespace/name`, for errors.
pub fn describe<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Reads the object `desired` names, then applies `desired` unless it is already in force.
pub async fn apply_child<K>(api: &Api<K>, desired: &K) -> Result<Applied, PartError>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let existing = api
        .get_opt(&desired.name_any())
        .await
        .map_err(|source| PartError::Api {
            action: format!("read {}", describe(desired)),
            source,
        })?;
    apply_over(api, desired, existing.as_ref()).await
}

/// Applies `desired` unless `existing` (already read) holds it.
pub async fn apply_over<K>(
    api: &Api<K>,
    desired: &K,
    existing: Option<&K>,
) -> Result<Applied, PartError>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let encode = |object: &K| {
        serde_json::to_value(object).map_err(|source| PartError::Encode {
            what: describe(desired),
            source,
        })
    };
    let wanted = encode(desired)?;
    let wanted_hash = fingerprint(wanted.to_string().as_bytes());
    let mut desired = desired.clone();
    desired
        .annotations_mut()
        .insert(APPLIED_HASH.to_owned(), wanted_hash.clone());
    let outcome = match existing {
        Some(existing)
            if existing.annotations().get(APPLIED_HASH) == Some(&wanted_hash)
                && contains(&encode(existing)?, &wanted) =>
        {
            return Ok(Applied::Unchanged);
        }
        Some(_) => Applied::Updated,
        None => Applied::Created,
    };
    api.patch(
        &desired.name_any(),
        &apply_params(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|source| PartError::Api {
        action: format!("apply {}", describe(&desired)),
        source,
    })?;
    Ok(outcome)
}

//! The PodDisruptionBudget: drains and other voluntary evictions take at most
//! `spec.pdb.maxUnavailable` nodes at once (default 1), so a majority stays up.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ClusterView, SpecError};

/// `NAME`: the budget over the cluster's pods.
pub fn pod_disruption_budget(view: &ClusterView<'_>) -> Result<PodDisruptionBudget, SpecError> {
    Ok(PodDisruptionBudget {
        metadata: view.metadata(view.name().to_owned(), "node")?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(view.spec().pdb.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(view.selector_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::{cluster, view};

    #[test]
    fn budget_selects_the_pods_and_defaults_to_one() {
        let mut cluster = cluster(5);
        let pdb = pod_disruption_budget(&view(&cluster)).unwrap();
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap(),
            view(&cluster).selector_labels()
        );
        cluster.spec.pdb.max_unavailable = 2;
        let spec = pod_disruption_budget(&view(&cluster))
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(2)));
    }
}

//! The NetworkPolicy `NAME-peers`: the nodes' peer port (replication, votes, the admin service)
//! and gossip port take connections only from the cluster's own pods, and the peer port from
//! the operator too; the client and metrics ports from anyone. The peer port is mutual TLS with
//! the cluster's CA whatever the policy says; the policy keeps everyone else from reaching it
//! at all, where the cluster's network plugin enforces NetworkPolicies.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ClusterView, SpecError};

/// Labels the operator's pods carry (the proglog-operator chart sets them).
pub const OPERATOR_POD_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/part-of", "proglog"),
    ("app.kubernetes.io/component", "operator"),
];

/// A container port by its name: a name resolves on each pod, so pods rolling from one port
/// number to another are all covered while the roll lasts.
fn port(name: &str, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::String(name.to_owned())),
        protocol: Some(protocol.to_owned()),
        ..NetworkPolicyPort::default()
    }
}

fn selector(labels: BTreeMap<String, String>) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    })
}

/// `NAME-peers`: see the module documentation.
pub fn network_policy(view: &ClusterView<'_>) -> Result<NetworkPolicy, SpecError> {
    let own_pods = NetworkPolicyPeer {
        pod_selector: selector(view.selector_labels()),
        ..NetworkPolicyPeer::default()
    };
    let operator_namespace = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_owned(),
        view.operator_namespace().unwrap_or_default().to_owned(),
    )]);
    let operator = NetworkPolicyPeer {
        pod_selector: selector(
            OPERATOR_POD_LABELS
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        ),
        // Unknown (rendered offline): an operator pod in any namespace.
        namespace_selector: Some(LabelSelector {
            match_labels: view.operator_namespace().map(|_| operator_namespace),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    Ok(NetworkPolicy {
        metadata: view.metadata(format!("{}-peers", view.name()), "node")?,
        spec: Some(NetworkPolicySpec {
            pod_selector: selector(view.selector_labels()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![own_pods]),
                    ports: Some(vec![
                        port("peer", "TCP"),
                        port("gossip-tcp", "TCP"),
                        port("gossip-udp", "UDP"),
                    ]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![operator]),
                    ports: Some(vec![port("peer", "TCP")]),
                },
                // Clients and Prometheus, from anywhere.
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![port("rpc", "TCP"), port("metrics", "TCP")]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::{cluster, view};

    #[test]
    fn only_the_cluster_and_the_operator_reach_the_peer_port() {
        let cluster = cluster(3);
        let policy = network_policy(&view(&cluster)).unwrap();
        let spec = policy.spec.unwrap();
        let rules = spec.ingress.unwrap();
        let ports = |rule: &NetworkPolicyIngressRule| -> Vec<(String, String)> {
            rule.ports
                .iter()
                .flatten()
                .map(|port| match (&port.port, &port.protocol) {
                    (Some(IntOrString::String(name)), Some(protocol)) => {
                        (name.clone(), protocol.clone())
                    }
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let open: Vec<&NetworkPolicyIngressRule> =
            rules.iter().filter(|rule| rule.from.is_none()).collect();
        assert_eq!(open.len(), 1);
        assert!(
            !ports(open[0])
                .iter()
                .any(|(name, _)| name.starts_with("peer"))
        );
        assert!(
            !ports(open[0])
                .iter()
                .any(|(name, _)| name.starts_with("gossip"))
        );
        // Every name is a port of the node container.
        let statefulset = crate::resources::stateful_set(&view(&cluster), "hash").unwrap();
        let container_ports: Vec<String> =
            statefulset.spec.unwrap().template.spec.unwrap().containers[0]
                .ports
                .iter()
                .flatten()
                .filter_map(|port| port.name.clone())
                .collect();
        for rule in &rules {
            for (name, _) in ports(rule) {
                assert!(
                    container_ports.contains(&name),
                    "{name} is not in {container_ports:?}"
                );
            }
        }
        for rule in rules.iter().filter(|rule| rule.from.is_some()) {
            for from in rule.from.iter().flatten() {
                let labels = from
                    .pod_selector
                    .as_ref()
                    .unwrap()
                    .match_labels
                    .clone()
                    .unwrap();
                assert!(
                    labels == view(&cluster).selector_labels()
                        || labels
                            .get("app.kubernetes.io/component")
                            .map(String::as_str)
                            == Some("operator"),
                    "{labels:?}"
                );
            }
        }
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap(),
            view(&cluster).selector_labels()
        );
    }
}

//! The two Services. `NAME-headless` gives each pod a stable DNS name
//! (`NAME-i.NAME-headless.NS.svc`) that the nodes advertise and seed gossip with; it publishes
//! pods before they are ready, because a node is not ready until it serves, and it cannot
//! serve a quorum before it finds its peers. `NAME` is what clients connect to: it spreads
//! them over the ready nodes, and any node takes produces (followers forward to the leader).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ClusterView, SpecError};

/// `NAME-headless`: DNS for each pod, with the gRPC, peer, gossip (TCP and UDP) and metrics
/// ports.
pub fn headless_service(view: &ClusterView<'_>) -> Result<Service, SpecError> {
    let ports = &view.spec().ports;
    Ok(Service {
        metadata: view.metadata(view.headless_service_name(), "node")?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(view.selector_labels()),
            ports: Some(vec![
                port("rpc", ports.rpc, "TCP"),
                port("peer", ports.peer, "TCP"),
                port("gossip-tcp", ports.gossip, "TCP"),
                port("gossip-udp", ports.gossip, "UDP"),
                port("metrics", ports.metrics, "TCP"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// `NAME`: the gRPC port of the ready nodes, of the type and with the annotations the spec
/// asks for.
pub fn client_service(view: &ClusterView<'_>) -> Result<Service, SpecError> {
    let spec = view.spec();
    let mut metadata = view.metadata(view.client_service_name(), "node")?;
    if !spec.service.annotations.is_empty() {
        metadata.annotations = Some(spec.service.annotations.clone());
    }
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.service.type_.as_str().to_owned()),
            selector: Some(view.selector_labels()),
            ports: Some(vec![port("rpc", spec.ports.rpc, "TCP")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn port(name: &str, number: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        protocol: Some(protocol.to_owned()),
        target_port: Some(IntOrString::String(name.to_owned())),
        ..ServicePort::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServiceType;
    use crate::resources::tests::{cluster, view};

    #[test]
    fn headless_service_publishes_every_pod_with_peer_ports() {
        let cluster = cluster(3);
        let view = view(&cluster);
        let service = headless_service(&view).unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some("events-headless"));
        let spec = service.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap(), view.selector_labels());
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
            .collect();
        assert_eq!(
            ports,
            [
                ("rpc".into(), 8400, "TCP".into()),
                ("peer".into(), 8402, "TCP".into()),
                ("gossip-tcp".into(), 8401, "TCP".into()),
                ("gossip-udp".into(), 8401, "UDP".into()),
                ("metrics".into(), 9400, "TCP".into()),
            ]
        );
    }

    #[test]
    fn client_service_takes_type_and_annotations_from_the_spec() {
        let mut cluster = cluster(3);
        cluster.spec.service.type_ = ServiceType::LoadBalancer;
        cluster
            .spec
            .service
            .annotations
            .insert("lb.example/internal".into(), "true".into());
        cluster.spec.ports.rpc = 9000;
        let view = view(&cluster);
        let service = client_service(&view).unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some("events"));
        assert_eq!(
            service.metadata.annotations.unwrap()["lb.example/internal"],
            "true"
        );
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.publish_not_ready_addresses, None);
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, 9000);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("rpc".into()))
        );
        assert_eq!(spec.selector.unwrap(), view.selector_labels());
    }
}

//! `proglog-operator render`: every object the operator would apply for the `LogCluster`s in a
//! YAML stream, printed as a YAML stream, without a cluster (like `helm template`).
//!
//! The input may also hold objects the operator would read from the cluster: the ACL
//! ConfigMap and a user CA Secret the spec names, and the certificate Secrets of an earlier
//! render (`NAME-ca`, `NAME-tls`, `NAME-operator-tls`), which are then kept or renewed exactly
//! as the operator would at `--now`. The spec is taken as written, with the CRD's defaults
//! for what it leaves out (the same values the API server would fill in).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{IssuerKind, LogCluster};
use crate::resources::{self, AclSource, ClusterView, OperatorSettings, SpecError};
use crate::tls::{self, CaSource, Lifetimes, PkiRequest, TlsError};

/// The uid given to a `LogCluster` read from a file without one, so owner references can be
/// shown; the real one comes from the API server.
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// What a render cannot get past.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The input is not YAML.
    #[error("the input is not a YAML stream: {0}")]
    Yaml(#[source] Box<serde_saphyr::Error>),
    /// A document is not what its `kind` says.
    #[error("document {index} ({kind}): {source}")]
    Document {
        /// 1-based position in the stream.
        index: usize,
        /// Its kind.
        kind: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// Nothing to render.
    #[error("the input holds no LogCluster (apiVersion proglog.dev/v1alpha1)")]
    NoLogCluster,
    /// The spec cannot be built from.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A certificate cannot be made, or the user's CA is unusable.
    #[error("LogCluster {name}: {source}")]
    Tls {
        /// The resource.
        name: String,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// A Secret the spec names is not in the input.
    #[error("LogCluster {name}: Secret {secret} (spec.tls.issuer.secretName) is not in the input")]
    MissingCaSecret {
        /// The resource.
        name: String,
        /// The Secret.
        secret: String,
    },
    /// Output could not be written as YAML.
    #[error("cannot write YAML: {0}")]
    Write(#[source] serde_saphyr::SerializeError),
}

/// How to render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The time certificates are issued and checked at.
    pub now: Timestamp,
    /// Namespace of resources whose metadata has none.
    pub namespace: String,
    /// The operator's own settings.
    pub settings: OperatorSettings,
    /// Replace Secret contents with `<redacted>` (for sharing output, and stable golden files).
    pub redact_secrets: bool,
}

/// One object the operator applies.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "a handful per render, built once: boxing would only add noise"
)]
pub enum Object {
    /// A Secret.
    Secret(Secret),
    /// A ConfigMap.
    ConfigMap(ConfigMap),
    /// A Service.
    Service(Service),
    /// The StatefulSet.
    StatefulSet(StatefulSet),
    /// The PodDisruptionBudget.
    PodDisruptionBudget(PodDisruptionBudget),
    /// The NetworkPolicy.
    NetworkPolicy(NetworkPolicy),
}

impl Object {
    fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        match self {
            Object::Secret(object) => serde_saphyr::to_string(object),
            Object::ConfigMap(object) => serde_saphyr::to_string(object),
            Object::Service(object) => serde_saphyr::to_string(object),
            Object::StatefulSet(object) => serde_saphyr::to_string(object),
            Object::PodDisruptionBudget(object) => serde_saphyr::to_string(object),
            Object::NetworkPolicy(object) => serde_saphyr::to_string(object),
        }
    }
}

/// Everything the operator would apply for one `LogCluster`.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// `namespace/name` of the resource.
    pub cluster: String,
    /// Whether `spec.paused` is set (the operator would apply nothing).
    pub paused: bool,
    /// The certificates issued in this pass, and why.
    pub issued: Vec<tls::Issued>,
    /// The objects, in the order the operator applies them.
    pub objects: Vec<Object>,
}

/// The objects of the cluster `name` that the operator reads: ConfigMaps and Secrets by name.
#[derive(Debug, Default)]
pub struct Inputs {
    config_maps: BTreeMap<String, ConfigMap>,
    secrets: BTreeMap<String, Secret>,
}

impl Inputs {
    /// Adds a ConfigMap the operator could read.
    pub fn add_config_map(&mut self, config_map: ConfigMap) {
        let name = config_map.metadata.name.clone().unwrap_or_default();
        self.config_maps.insert(name, config_map);
    }

    /// Adds a Secret the operator could read.
    pub fn add_secret(&mut self, secret: Secret) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        self.secrets.insert(name, secret);
    }

    fn secret_data(&self, name: &str) -> Option<&tls::SecretData> {
        self.secrets
            .get(name)
            .and_then(|secret| secret.data.as_ref())
    }
}

/// Renders every `LogCluster` of a YAML stream; see the module documentation.
pub fn render_stream(input: &str, options: &RenderOptions) -> Result<String, RenderError> {
    let (clusters, inputs) = parse_stream(input)?;
    if clusters.is_empty() {
        return Err(RenderError::NoLogCluster);
    }
    let mut out = String::new();
    for cluster in &clusters {
        let rendered = render(cluster, &inputs, options)?;
        out.push_str(&to_yaml_stream(&rendered)?);
    }
    Ok(out)
}

/// Splits a YAML stream into `LogCluster`s and the other objects they may refer to.
pub fn parse_stream(input: &str) -> Result<(Vec<LogCluster>, Inputs), RenderError> {
    let mut clusters = Vec::new();
    let mut inputs = Inputs::default();
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(input).map_err(|err| RenderError::Yaml(Box::new(err)))?;
    for (position, value) in documents.into_iter().enumerate() {
        let index = position + 1;
        if value.is_null() {
            continue;
        }
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or_default();
        let (api_version, kind) = (field("apiVersion").to_owned(), field("kind").to_owned());
        let parse_error = |source| RenderError::Document {
            index,
            kind: kind.clone(),
            source,
        };
        match (api_version.as_str(), kind.as_str()) {
            ("proglog.dev/v1alpha1", "LogCluster") => {
                clusters.push(serde_json::from_value(value).map_err(parse_error)?)
            }
            ("v1", "ConfigMap") => {
                inputs.add_config_map(serde_json::from_value(value).map_err(parse_error)?)
            }
            ("v1", "Secret") => {
                let mut secret: Secret = serde_json::from_value(value).map_err(parse_error)?;
                // Written by hand, a Secret often uses stringData; the API server merges it.
                if let Some(strings) = secret.string_data.take() {
                    let data = secret.data.get_or_insert_with(BTreeMap::new);
                    for (key, text) in strings {
                        data.insert(key, k8s_openapi::ByteString(text.into_bytes()));
                    }
                }
                inputs.add_secret(secret)
            }
            _ => {}
        }
    }
    Ok((clusters, inputs))
}

/// Everything the operator would apply for `cluster`, in order: certificate Secrets,
/// ConfigMaps, Services, StatefulSet, PodDisruptionBudget, NetworkPolicy.
pub fn render(
    cluster: &LogCluster,
    inputs: &Inputs,
    options: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let mut cluster = cluster.clone();
    if cluster.metadata.uid.is_none() {
        cluster.metadata.uid = Some(PLACEHOLDER_UID.to_owned());
    }
    let view = ClusterView::new(&cluster, &options.namespace, &options.settings)?;
    let spec = view.spec();
    let node_count = view.replicas();
    let mut objects = Vec::new();

    // The certificates: always, since the nodes' peer listener is always mutual TLS.
    let issued = {
        let tls_error = |source| RenderError::Tls {
            name: view.name().to_owned(),
            source,
        };
        let lifetimes = Lifetimes::from_spec(&spec.tls).map_err(tls_error)?;
        let ca_common_name = format!("proglog CA {}/{}", view.namespace(), view.name());
        let ca = match (spec.tls.issuer.kind, &spec.tls.issuer.secret_name) {
            (IssuerKind::Secret, Some(secret_name)) => CaSource::User {
                secret_name,
                data: inputs.secret_data(secret_name).ok_or_else(|| {
                    RenderError::MissingCaSecret {
                        name: view.name().to_owned(),
                        secret: secret_name.clone(),
                    }
                })?,
            },
            (IssuerKind::Secret, None) => {
                return Err(SpecError::Invalid {
                    name: view.name().to_owned(),
                    field: "spec.tls.issuer.secretName",
                    reason: "is required with issuer kind Secret".into(),
                }
                .into());
            }
            (IssuerKind::Operator, _) => CaSource::Operator {
                existing: inputs.secret_data(&view.ca_secret_name()),
                common_name: &ca_common_name,
            },
        };
        let nodes = view.node_identities(node_count);
        let pki = tls::plan(&PkiRequest {
            now: options.now,
            lifetimes,
            ca,
            nodes: &nodes,
            existing_nodes: inputs.secret_data(&view.tls_secret_name()),
            existing_operator: inputs.secret_data(&view.operator_tls_secret_name()),
            // Offline: no node reports, so a CA replacement stops at the step it is at.
            loaded: None,
            running: None,
        })
        .map_err(tls_error)?;
        if let Some(secret) = resources::ca_secret(&view, &pki)? {
            objects.push(Object::Secret(secret));
        }
        objects.push(Object::Secret(resources::nodes_secret(&view, &pki)?));
        objects.push(Object::Secret(resources::operator_secret(&view, &pki)?));
        pki.issued
    };

    let config = resources::config_map(&view)?;
    let hash = resources::config_hash(&config);
    objects.push(Object::ConfigMap(config));
    let acl_source = spec.acl.config_map_name.as_ref().and_then(|name| {
        let data = inputs.config_maps.get(name)?.data.as_ref()?;
        Some(AclSource { name, data })
    });
    if let Some(acl) = resources::acl_config_map(&view, acl_source, node_count)? {
        objects.push(Object::ConfigMap(acl));
    }
    objects.push(Object::Service(resources::headless_service(&view)?));
    objects.push(Object::Service(resources::client_service(&view)?));
    objects.push(Object::StatefulSet(resources::stateful_set(&view, &hash)?));
    objects.push(Object::PodDisruptionBudget(
        resources::pod_disruption_budget(&view)?,
    ));
    objects.push(Object::NetworkPolicy(resources::network_policy(&view)?));

    if options.redact_secrets {
        for object in &mut objects {
            if let Object::Secret(secret) = object {
                redact(secret);
            }
        }
    }
    Ok(Rendered {
        cluster: format!("{}/{}", view.namespace(), view.name()),
        paused: spec.paused,
        issued,
        objects,
    })
}

/// Replaces every value with `<redacted>`, keeping the keys (moved to `stringData` so the
/// placeholder reads as text).
fn redact(secret: &mut Secret) {
    let keys = secret.data.take().unwrap_or_default().into_keys();
    secret.string_data = Some(keys.map(|key| (key, "<redacted>".to_owned())).collect());
}

/// The objects as a YAML stream, with a comment saying what they are for.
pub fn to_yaml_stream(rendered: &Rendered) -> Result<String, RenderError> {
    let mut out = format!("# LogCluster {}\n", rendered.cluster);
    if rendered.paused {
        out.push_str(
            "# spec.paused is true: the operator applies none of this until it is unset\n",
        );
    }
    for issued in &rendered.issued {
        out.push_str(&format!(
            "# certificate issued: {} ({})\n",
            issued.subject, issued.reason
        ));
    }
    for object in &rendered.objects {
        out.push_str("---\n");
        out.push_str(&object.to_yaml().map_err(RenderError::Write)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> RenderOptions {
        RenderOptions {
            now: "2026-01-01T00:00:00Z".parse().unwrap(),
            namespace: "default".into(),
            settings: OperatorSettings::default(),
            redact_secrets: false,
        }
    }

    const MINIMAL: &str = "apiVersion: proglog.dev/v1alpha1
kind: LogCluster
metadata:
  name: events
spec:
  replicas: 3
";

    #[test]
    fn a_minimal_cluster_renders_its_objects_in_order_with_the_peer_certificates() {
        let (clusters, inputs) = parse_stream(MINIMAL).unwrap();
        let rendered = render(&clusters[0], &inputs, &options()).unwrap();
        let kinds: Vec<_> = rendered
            .objects
            .iter()
            .map(|o| match o {
                Object::Secret(_) => "Secret",
                Object::ConfigMap(_) => "ConfigMap",
                Object::Service(_) => "Service",
                Object::StatefulSet(_) => "StatefulSet",
                Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
                Object::NetworkPolicy(_) => "NetworkPolicy",
            })
            .collect();
        // Plaintext for clients, but the peers' certificates all the same.
        assert_eq!(
            kinds,
            [
                "Secret",
                "Secret",
                "Secret",
                "ConfigMap",
                "Service",
                "Service",
                "StatefulSet",
                "PodDisruptionBudget",
                "NetworkPolicy"
            ]
        );
        assert_eq!(rendered.cluster, "default/events");
        let yaml = to_yaml_stream(&rendered).unwrap();
        assert!(yaml.contains("uid: 00000000-0000-0000-0000-000000000000"));
        assert!(
            yaml.contains("apiVersion: apps/v1\nkind: StatefulSet"),
            "{yaml}"
        );
    }

    #[test]
    fn tls_renders_secrets_and_a_second_pass_keeps_them() {
        let input = MINIMAL.replace("replicas: 3", "replicas: 3\n  tls:\n    enabled: true");
        let (clusters, inputs) = parse_stream(&input).unwrap();
        let first = render(&clusters[0], &inputs, &options()).unwrap();
        assert_eq!(first.issued.len(), 5, "CA, three nodes, the operator");
        // Feed the first pass's Secrets back: nothing is issued, nothing changes.
        let mut again = Inputs::default();
        for object in &first.objects {
            if let Object::Secret(secret) = object {
                again.add_secret(secret.clone());
            }
        }
        let second = render(&clusters[0], &again, &options()).unwrap();
        assert!(second.issued.is_empty(), "{:?}", second.issued);
        for (a, b) in first.objects.iter().zip(&second.objects) {
            if let (Object::Secret(a), Object::Secret(b)) = (a, b) {
                assert_eq!(a.data, b.data);
            }
        }
    }

    #[test]
    fn redaction_keeps_keys_and_drops_material() {
        let input = MINIMAL.replace("replicas: 3", "replicas: 1\n  tls:\n    enabled: true");
        let mut options = options();
        options.redact_secrets = true;
        let out = render_stream(&input, &options).unwrap();
        assert!(out.contains("events-0.crt: <redacted>"), "{out}");
        assert!(!out.contains("BEGIN"), "{out}");
    }

    #[test]
    fn bad_input_is_reported_not_panicked_on() {
        assert!(matches!(
            render_stream("kind: ConfigMap\napiVersion: v1\n", &options()),
            Err(RenderError::NoLogCluster)
        ));
        let err = render_stream(
            "apiVersion: proglog.dev/v1alpha1\nkind: LogCluster\nmetadata: {name: x}\nspec: {replicas: many}\n",
            &options(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("document 1 (LogCluster)"), "{err}");
        assert!(render_stream(": : :\n  - [", &options()).is_err());
        let user_ca = MINIMAL.replace(
            "replicas: 3",
            "replicas: 3\n  tls:\n    enabled: true\n    issuer: {kind: Secret, secretName: my-ca}",
        );
        let err = render_stream(&user_ca, &options()).unwrap_err();
        assert!(err.to_string().contains("my-ca"), "{err}");
    }
}

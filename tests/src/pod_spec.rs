//! [`PodPlan`]: what a kubelet would run for one pod of a rendered StatefulSet, read from the
//! template without Kubernetes (see [`crate::pods`] for running it).
//!
//! [`PodPlan::from_stateful_set`] reads pod `ordinal` of a rendered StatefulSet (a generic JSON
//! value, see [`crate::kube_objects`]): its name (`<statefulset>-<ordinal>`), hostname and
//! subdomain, the container's command, args and environment resolved as the kubelet resolves
//! them, its volume mounts and volumes, its security context and its HTTP probes. Anything the
//! template uses that is not imitated here (another volume type, an init container, a field
//! reference with no meaning here) is an error naming it, never silently dropped, so a change
//! in the rendering breaks the test that runs it instead of being skipped.
//!
//! # Environment
//!
//! As the kubelet: `envFrom` sources first (ConfigMaps and Secrets, each key a variable, with
//! the source's `prefix`), then `env` in order, each `value` expanded with Kubernetes'
//! `$(VAR)` syntax against the variables defined before it (`$$` is a literal `$`, a
//! reference to an undefined variable stays as written), and `valueFrom` field references
//! (`metadata.name` is the pod name, `metadata.namespace`, `status.podIP` the address given
//! to the pod, `status.hostIP` the host side of the lab, labels and annotations of the
//! template) and ConfigMap/Secret key references. `command` and `args` are expanded against
//! the result.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::kube_objects::{self, KubeObjectsError, Objects};
use crate::pod_volumes::ProjectedFile;

/// The mode of Secret and ConfigMap files when the volume names no `defaultMode`.
const DEFAULT_VOLUME_MODE: u32 = 0o644;

/// Why a pod cannot be planned from its template.
#[derive(Debug, thiserror::Error)]
pub enum PodSpecError {
    /// Reading the rendered objects failed.
    #[error(transparent)]
    Objects(#[from] KubeObjectsError),
    /// The template uses something this imitation does not.
    #[error("pod {pod}: {what} is not imitated here, so the pod cannot be run as rendered")]
    Unsupported {
        /// The pod.
        pod: String,
        /// What.
        what: String,
    },
    /// The template is inconsistent (a mount of an undefined volume, say).
    #[error("pod {pod}: {reason}")]
    Invalid {
        /// The pod.
        pod: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where a volume's contents come from.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeSource {
    /// A Secret, projected as files.
    Secret {
        /// The Secret.
        name: String,
        /// `items`: which keys, at which paths (all keys at their own names when empty).
        items: Vec<KeyToPath>,
        /// `defaultMode`.
        default_mode: u32,
        /// `optional`.
        optional: bool,
    },
    /// A ConfigMap, projected as files.
    ConfigMap {
        /// The ConfigMap.
        name: String,
        /// `items`.
        items: Vec<KeyToPath>,
        /// `defaultMode`.
        default_mode: u32,
        /// `optional`.
        optional: bool,
    },
    /// An empty directory for the pod's life.
    EmptyDir,
    /// A persistent volume claimed by the StatefulSet's `volumeClaimTemplates` (an empty
    /// directory that outlives the process).
    Claim,
}

/// One `items` entry of a Secret or ConfigMap volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyToPath {
    /// The key.
    pub key: String,
    /// The file's path in the volume.
    pub path: String,
    /// Its mode, if not the volume's default.
    pub mode: Option<u32>,
}

/// One `volumeMounts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name.
    pub volume: String,
    /// Where it appears in the container.
    pub mount_path: PathBuf,
    /// `readOnly`.
    pub read_only: bool,
}

/// The parts of the pod and container security context that decide who the process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityContext {
    /// `runAsUser` (root when unset, as in an image without a `USER`).
    pub run_as_user: Option<u32>,
    /// `runAsGroup`.
    pub run_as_group: Option<u32>,
    /// `fsGroup`: the volumes' group, and a supplementary group of the process.
    pub fs_group: Option<u32>,
    /// `supplementalGroups`.
    pub supplemental_groups: Vec<u32>,
    /// `runAsNonRoot`: the kubelet refuses to start the container as uid 0.
    pub run_as_non_root: bool,
    /// `readOnlyRootFilesystem`.
    pub read_only_root_filesystem: bool,
    /// `allowPrivilegeEscalation: false` (no new privileges).
    pub no_new_privileges: bool,
    /// `capabilities.drop` holds `ALL`.
    pub drop_all_capabilities: bool,
}

/// A probe the kubelet runs: `httpGet` or `grpc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `httpGet`: ready on a 2xx answer.
    Http {
        /// The path.
        path: String,
        /// The port (a named port resolved through the container's ports).
        port: u16,
    },
    /// `grpc`: ready when `grpc.health.v1.Health/Check` answers `SERVING`.
    Grpc {
        /// The port.
        port: u16,
        /// The service asked about (empty: the server as a whole).
        service: String,
    },
}

/// What the kubelet would run for one pod of a StatefulSet.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// The pod's name, `<statefulset>-<ordinal>`: also its hostname.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `serviceName` of the StatefulSet: the pod's DNS subdomain.
    pub subdomain: String,
    /// The container's name.
    pub container: String,
    /// `command`, expanded, if the template replaces the image's entrypoint.
    pub command: Option<Vec<String>>,
    /// `args`, expanded.
    pub args: Vec<String>,
    /// The environment, in the order the kubelet builds it (later entries win).
    pub env: Vec<(String, String)>,
    /// The mounts, in the template's order.
    pub mounts: Vec<VolumeMount>,
    /// The volumes, by name.
    pub volumes: BTreeMap<String, VolumeSource>,
    /// Who the process runs as.
    pub security: SecurityContext,
    /// `readinessProbe`.
    pub readiness: Option<Probe>,
    /// `livenessProbe`.
    pub liveness: Option<Probe>,
}

/// Facts about one pod that the cluster, not the template, decides.
#[derive(Debug, Clone, Copy)]
pub struct PodSite {
    /// The StatefulSet ordinal.
    pub ordinal: usize,
    /// `status.podIP`.
    pub pod_ip: Ipv4Addr,
    /// `status.hostIP`.
    pub host_ip: Ipv4Addr,
}

impl PodPlan {
    /// Plans pod `site.ordinal` of `stateful_set`, reading the ConfigMaps and Secrets its
    /// environment refers to from `objects`.
    pub fn from_stateful_set(
        objects: &Objects,
        stateful_set: &Value,
        site: PodSite,
    ) -> Result<PodPlan, PodSpecError> {
        let set_name = kube_objects::str_at(stateful_set, "/metadata/name")?;
        let namespace = kube_objects::str_at(stateful_set, "/metadata/namespace")?;
        let subdomain = kube_objects::str_at(stateful_set, "/spec/serviceName")?;
        let name = format!("{set_name}-{}", site.ordinal);
        let unsupported = |what: String| PodSpecError::Unsupported {
            pod: name.clone(),
            what,
        };
        let invalid = |reason: String| PodSpecError::Invalid {
            pod: name.clone(),
            reason,
        };
        let template = stateful_set
            .pointer("/spec/template")
            .ok_or_else(|| invalid("the StatefulSet has no spec.template".into()))?;
        let pod_spec = template
            .get("spec")
            .ok_or_else(|| invalid("the template has no spec".into()))?;
        if pod_spec
            .get("initContainers")
            .and_then(Value::as_array)
            .is_some_and(|list| !list.is_empty())
        {
            return Err(unsupported("initContainers".into()));
        }
        let containers = pod_spec
            .get("containers")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("the template has no containers".into()))?;
        let [container] = containers.as_slice() else {
            return Err(unsupported(format!(
                "{} containers (one is imitated)",
                containers.len()
            )));
        };
        let container_name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();

        let fields = PodFields {
            name: &name,
            namespace,
            site,
            template,
        };
        let env = resolve_env(objects, container, &fields)?;
        let lookup: BTreeMap<&str, &str> = env
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        let strings = |field: &str| -> Result<Option<Vec<String>>, PodSpecError> {
            match container.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map(|text| expand(text, &lookup))
                            .ok_or_else(|| invalid(format!("container {field} holds a non-string")))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(invalid(format!("container {field} is not a list"))),
            }
        };
        let command = strings("command")?;
        let args = strings("args")?.unwrap_or_default();

        let problems = Problems { pod: &name };
        let volumes = pod_volumes(stateful_set, pod_spec, &problems)?;
        let mounts = volume_mounts(container, &volumes, &problems)?;
        let security = security_context(pod_spec.get("securityContext"), container);
        let readiness = probe(container, "readinessProbe", &problems)?;
        let liveness = probe(container, "livenessProbe", &problems)?;

        Ok(PodPlan {
            name: name.clone(),
            namespace: namespace.to_owned(),
            subdomain: subdomain.to_owned(),
            container: container_name,
            command,
            args,
            env,
            mounts,
            volumes,
            security,
            readiness,
            liveness,
        })
    }

    /// The pod's DNS names under its headless Service, shortest first:
    /// `pod.svc`, `pod.svc.ns`, `pod.svc.ns.svc`, `pod.svc.ns.svc.<cluster_domain>`.
    pub fn dns_names(&self, cluster_domain: &str) -> Vec<String> {
        service_dns_names(
            &format!("{}.{}", self.name, self.subdomain),
            &self.namespace,
            cluster_domain,
        )
    }

    /// The value of environment variable `key`, as the process gets it.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The files of volume `volume` as the kubelet would project them from `objects`, or
    /// `None` for a volume that is a plain directory (`emptyDir`, a claim).
    pub fn projected_files(
        &self,
        objects: &Objects,
        volume: &str,
    ) -> Result<Option<Vec<ProjectedFile>>, PodSpecError> {
        let source = self
            .volumes
            .get(volume)
            .ok_or_else(|| PodSpecError::Invalid {
                pod: self.name.clone(),
                reason: format!("no volume {volume}"),
            })?;
        let (data, items, default_mode) = match source {
            VolumeSource::EmptyDir | VolumeSource::Claim => return Ok(None),
            VolumeSource::Secret {
                name,
                items,
                default_mode,
                optional,
            } => match objects.secret_data(name) {
                Ok(data) => (data, items, *default_mode),
                Err(KubeObjectsError::Missing { .. }) if *optional => return Ok(Some(Vec::new())),
                Err(err) => return Err(err.into()),
            },
            VolumeSource::ConfigMap {
                name,
                items,
                default_mode,
                optional,
            } => match objects.config_map_data(name) {
                Ok(data) => (data, items, *default_mode),
                Err(KubeObjectsError::Missing { .. }) if *optional => return Ok(Some(Vec::new())),
                Err(err) => return Err(err.into()),
            },
        };
        if items.is_empty() {
            return Ok(Some(
                data.into_iter()
                    .map(|(key, data)| ProjectedFile {
                        path: key,
                        data,
                        mode: default_mode,
                    })
                    .collect(),
            ));
        }
        items
            .iter()
            .map(|item| {
                let data = data.get(&item.key).ok_or_else(|| PodSpecError::Invalid {
                    pod: self.name.clone(),
                    reason: format!("volume {volume} projects missing key {}", item.key),
                })?;
                Ok(ProjectedFile {
                    path: item.path.clone(),
                    data: data.clone(),
                    mode: item.mode.unwrap_or(default_mode),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

impl PodPlan {
    /// The contents of the file at `path` in the pod (an absolute path under a Secret or
    /// ConfigMap volume's mount), as projected from `objects`; `None` when no such volume
    /// file exists there.
    pub fn file_in_pod(
        &self,
        objects: &Objects,
        path: &Path,
    ) -> Result<Option<Vec<u8>>, PodSpecError> {
        for mount in self.mounts.iter().rev() {
            let Ok(relative) = path.strip_prefix(&mount.mount_path) else {
                continue;
            };
            let Some(files) = self.projected_files(objects, &mount.volume)? else {
                return Ok(None);
            };
            let relative = relative.to_string_lossy();
            return Ok(files
                .into_iter()
                .find(|file| file.path == relative)
                .map(|file| file.data));
        }
        Ok(None)
    }
}

/// The four names of a Service (or of a pod under a headless Service, when `name` is
/// `pod.service`): `name`, `name.ns`, `name.ns.svc`, `name.ns.svc.<cluster_domain>`.
pub fn service_dns_names(name: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        name.to_owned(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.{cluster_domain}"),
    ]
}

/// What field references resolve against.
struct PodFields<'a> {
    name: &'a str,
    namespace: &'a str,
    site: PodSite,
    template: &'a Value,
}

impl PodFields<'_> {
    /// The value of a downward-API `fieldPath`, or `None` when it has no meaning here.
    fn field(&self, path: &str) -> Option<String> {
        let metadata_map = |map: &str, key: &str| {
            self.template
                .pointer(&format!("/metadata/{map}"))
                .and_then(|map| map.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match path {
            "metadata.name" => Some(self.name.to_owned()),
            "metadata.namespace" => Some(self.namespace.to_owned()),
            "status.podIP" | "status.podIPs" => Some(self.site.pod_ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Some(self.site.host_ip.to_string()),
            _ => {
                let (map, rest) = if let Some(rest) = path.strip_prefix("metadata.labels['") {
                    ("labels", rest)
                } else if let Some(rest) = path.strip_prefix("metadata.annotations['") {
                    ("annotations", rest)
                } else {
                    return None;
                };
                let key = rest.strip_suffix("']")?;
                if map == "labels" && key == "statefulset.kubernetes.io/pod-name" {
                    return Some(self.name.to_owned());
                }
                if map == "labels" && key == "apps.kubernetes.io/pod-index" {
                    return Some(self.site.ordinal.to_string());
                }
                metadata_map(map, key)
            }
        }
    }
}

/// The container's environment, as the kubelet builds it (see the module documentation).
fn resolve_env(
    objects: &Objects,
    container: &Value,
    fields: &PodFields<'_>,
) -> Result<Vec<(String, String)>, PodSpecError> {
    let unsupported = |what: String| PodSpecError::Unsupported {
        pod: fields.name.to_owned(),
        what,
    };
    let invalid = |reason: String| PodSpecError::Invalid {
        pod: fields.name.to_owned(),
        reason,
    };
    let text = |bytes: Vec<u8>, source: &str| {
        String::from_utf8(bytes).map_err(|_| invalid(format!("{source} is not UTF-8")))
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| {
        env.retain(|(existing, _)| *existing != key);
        env.push((key, value));
    };

    for source in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = source.get("prefix").and_then(Value::as_str).unwrap_or("");
        let (reference, data) = if let Some(reference) = source.get("configMapRef") {
            let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
            (reference, objects.config_map_data(name))
        } else if let Some(reference) = source.get("secretRef") {
            let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
            (reference, objects.secret_data(name))
        } else {
            return Err(unsupported(format!("envFrom source {source}")));
        };
        let data = match data {
            Ok(data) => data,
            Err(KubeObjectsError::Missing { .. })
                if reference.get("optional").and_then(Value::as_bool) == Some(true) =>
            {
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        for (key, value) in data {
            let value = text(value, &format!("envFrom key {key}"))?;
            set(&mut env, format!("{prefix}{key}"), value);
        }
    }

    for variable in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = variable
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("an env entry has no name".into()))?
            .to_owned();
        let value = if let Some(value_from) = variable.get("valueFrom") {
            if let Some(field) = value_from.get("fieldRef") {
                let path = field.get("fieldPath").and_then(Value::as_str).unwrap_or("");
                fields
                    .field(path)
                    .ok_or_else(|| unsupported(format!("env {key}: fieldRef {path}")))?
            } else if let Some(reference) = value_from
                .get("configMapKeyRef")
                .or_else(|| value_from.get("secretKeyRef"))
            {
                let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
                let wanted = reference.get("key").and_then(Value::as_str).unwrap_or("");
                let data = if value_from.get("configMapKeyRef").is_some() {
                    objects.config_map_data(name)
                } else {
                    objects.secret_data(name)
                };
                let optional = reference.get("optional").and_then(Value::as_bool) == Some(true);
                match data.map(|mut data| data.remove(wanted)) {
                    Ok(Some(bytes)) => text(bytes, &format!("env {key}"))?,
                    Ok(None) | Err(KubeObjectsError::Missing { .. }) if optional => continue,
                    Ok(None) => {
                        return Err(invalid(format!("env {key}: {name} has no key {wanted}")));
                    }
                    Err(err) => return Err(err.into()),
                }
            } else {
                return Err(unsupported(format!("env {key}: valueFrom {value_from}")));
            }
        } else {
            let raw = variable.get("value").and_then(Value::as_str).unwrap_or("");
            let defined: BTreeMap<&str, &str> = env
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            expand(raw, &defined)
        };
        set(&mut env, key, value);
    }
    Ok(env)
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the value of `NAME` if defined and stays
/// as written otherwise; `$$` is a literal `$`; any other `$` is kept.
pub fn expand(input: &str, defined: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match defined.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Builds the errors of one pod.
struct Problems<'a> {
    pod: &'a str,
}

impl Problems<'_> {
    fn unsupported(&self, what: String) -> PodSpecError {
        PodSpecError::Unsupported {
            pod: self.pod.to_owned(),
            what,
        }
    }

    fn invalid(&self, reason: String) -> PodSpecError {
        PodSpecError::Invalid {
            pod: self.pod.to_owned(),
            reason,
        }
    }
}

/// The pod's volumes by name: the template's and the StatefulSet's claim templates.
fn pod_volumes(
    stateful_set: &Value,
    pod_spec: &Value,
    problems: &Problems<'_>,
) -> Result<BTreeMap<String, VolumeSource>, PodSpecError> {
    let mut volumes = BTreeMap::new();
    for volume in pod_spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let volume_name = volume
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| problems.invalid("a volume has no name".into()))?;
        let source = parse_volume(volume).ok_or_else(|| {
            let kinds: Vec<&str> = volume
                .as_object()
                .into_iter()
                .flat_map(|fields| fields.keys())
                .map(String::as_str)
                .filter(|key| *key != "name")
                .collect();
            problems.unsupported(format!("volume {volume_name} ({})", kinds.join(", ")))
        })?;
        volumes.insert(volume_name.to_owned(), source);
    }
    let claims: BTreeSet<&str> = stateful_set
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(kube_objects::object_name)
        .collect();
    for claim in claims {
        if volumes
            .insert(claim.to_owned(), VolumeSource::Claim)
            .is_some()
        {
            return Err(problems.invalid(format!(
                "volume {claim} is both a pod volume and a claim template"
            )));
        }
    }
    Ok(volumes)
}

/// The container's `volumeMounts`, each of a defined volume.
fn volume_mounts(
    container: &Value,
    volumes: &BTreeMap<String, VolumeSource>,
    problems: &Problems<'_>,
) -> Result<Vec<VolumeMount>, PodSpecError> {
    let mut mounts = Vec::new();
    for mount in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let volume = mount
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| problems.invalid("a volume mount has no name".into()))?;
        let mount_path = mount
            .get("mountPath")
            .and_then(Value::as_str)
            .filter(|path| path.starts_with('/'))
            .ok_or_else(|| {
                problems.invalid(format!("mount of {volume} has no absolute mountPath"))
            })?;
        for field in ["subPath", "subPathExpr", "mountPropagation"] {
            if mount.get(field).is_some() {
                return Err(problems.unsupported(format!("{field} on the mount of {volume}")));
            }
        }
        if !volumes.contains_key(volume) {
            return Err(problems.invalid(format!("mount of undefined volume {volume}")));
        }
        mounts.push(VolumeMount {
            volume: volume.to_owned(),
            mount_path: PathBuf::from(mount_path),
            read_only: mount.get("readOnly").and_then(Value::as_bool) == Some(true),
        });
    }
    Ok(mounts)
}

/// The container's probe `field` (`readinessProbe`, ...), an `httpGet` or a `grpc` one; a
/// named port is resolved through the container's ports.
fn probe(
    container: &Value,
    field: &str,
    problems: &Problems<'_>,
) -> Result<Option<Probe>, PodSpecError> {
    let Some(probe) = container.get(field) else {
        return Ok(None);
    };
    let named_port = |wanted: &str| {
        container
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|port| port.get("name").and_then(Value::as_str) == Some(wanted))
            .and_then(|port| port.get("containerPort"))
            .and_then(Value::as_u64)
    };
    let port_of = |action: &Value| {
        match action.get("port") {
            Some(Value::Number(number)) => number.as_u64(),
            Some(Value::String(name)) => named_port(name),
            _ => None,
        }
        .and_then(|port| u16::try_from(port).ok())
        .ok_or_else(|| problems.invalid(format!("{field} names no usable port")))
    };
    if let Some(http) = probe.get("httpGet") {
        let path = http
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned();
        return Ok(Some(Probe::Http {
            path,
            port: port_of(http)?,
        }));
    }
    if let Some(grpc) = probe.get("grpc") {
        let service = grpc
            .get("service")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        return Ok(Some(Probe::Grpc {
            port: port_of(grpc)?,
            service,
        }));
    }
    Err(problems.unsupported(format!("a {field} other than httpGet or grpc")))
}

fn parse_volume(volume: &Value) -> Option<VolumeSource> {
    let items = |source: &Value| -> Vec<KeyToPath> {
        source
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| {
                Some(KeyToPath {
                    key: item.get("key")?.as_str()?.to_owned(),
                    path: item.get("path")?.as_str()?.to_owned(),
                    mode: item
                        .get("mode")
                        .and_then(Value::as_u64)
                        .and_then(|mode| u32::try_from(mode).ok()),
                })
            })
            .collect()
    };
    let mode = |source: &Value| {
        source
            .get("defaultMode")
            .and_then(Value::as_u64)
            .and_then(|mode| u32::try_from(mode).ok())
            .unwrap_or(DEFAULT_VOLUME_MODE)
    };
    let optional = |source: &Value| source.get("optional").and_then(Value::as_bool) == Some(true);
    if let Some(secret) = volume.get("secret") {
        Some(VolumeSource::Secret {
            name: secret.get("secretName")?.as_str()?.to_owned(),
            items: items(secret),
            default_mode: mode(secret),
            optional: optional(secret),
        })
    } else if let Some(config_map) = volume.get("configMap") {
        Some(VolumeSource::ConfigMap {
            name: config_map.get("name")?.as_str()?.to_owned(),
            items: items(config_map),
            default_mode: mode(config_map),
            optional: optional(config_map),
        })
    } else if volume.get("emptyDir").is_some() {
        Some(VolumeSource::EmptyDir)
    } else {
        None
    }
}

fn security_context(pod: Option<&Value>, container: &Value) -> SecurityContext {
    let container_context = container.get("securityContext");
    // The container's setting wins over the pod's.
    let id = |field: &str| {
        container_context
            .and_then(|context| context.get(field))
            .or_else(|| pod.and_then(|context| context.get(field)))
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
    };
    let supplemental_groups = pod
        .and_then(|context| context.get("supplementalGroups"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect();
    let flag = |field: &str| {
        container_context
            .and_then(|context| context.get(field))
            .and_then(Value::as_bool)
    };
    SecurityContext {
        run_as_user: id("runAsUser"),
        run_as_group: id("runAsGroup"),
        fs_group: pod
            .and_then(|context| context.get("fsGroup"))
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok()),
        supplemental_groups,
        run_as_non_root: container_context
            .and_then(|context| context.get("runAsNonRoot"))
            .or_else(|| pod.and_then(|context| context.get("runAsNonRoot")))
            .and_then(Value::as_bool)
            == Some(true),
        read_only_root_filesystem: flag("readOnlyRootFilesystem") == Some(true),
        no_new_privileges: flag("allowPrivilegeEscalation") == Some(false),
        drop_all_capabilities: container_context
            .and_then(|context| context.pointer("/capabilities/drop"))
            .and_then(Value::as_array)
            .is_some_and(|drop| drop.iter().any(|cap| cap.as_str() == Some("ALL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let defined = BTreeMap::from([("A", "x"), ("B", "$(A)")]);
        assert_eq!(expand("$(A).svc:8400", &defined), "x.svc:8400");
        assert_eq!(
            expand("$(B)", &defined),
            "$(A)",
            "values are not expanded twice"
        );
        assert_eq!(expand("$(C)-$$(A)-$A-$", &defined), "$(C)-$(A)-$A-$");
        assert_eq!(expand("$(A", &defined), "$(A");
    }
}

//! [`Objects`]: the Kubernetes objects `proglog-operator render` prints, read generically as
//! JSON values (no typed Kubernetes API, so nothing here depends on the operator's internals:
//! only on what it prints), and [`render`], which runs the operator binary.
//!
//! # Finding the binary
//!
//! Like [`crate::node_process::node_binary`]: `target/<profile>/proglog-operator` next to the
//! running test executable, or `PROGLOG_OPERATOR_BIN`. `cargo test --workspace` builds it; when
//! running only this package, build it first with `cargo build -p proglog-operator`, or a stale
//! binary is tested.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::Value;

/// The operator binary's name in `target/<profile>/`.
pub const OPERATOR_BINARY: &str = "proglog-operator";

/// Environment variable that overrides where the operator binary is looked up.
pub const OPERATOR_BINARY_ENV: &str = "PROGLOG_OPERATOR_BIN";

/// Why objects could not be rendered, parsed or read.
#[derive(Debug, thiserror::Error)]
pub enum KubeObjectsError {
    /// The operator binary is not where it was looked for.
    #[error(
        "no operator binary at {path}: build it with `cargo build -p {OPERATOR_BINARY}` (`cargo test --workspace` does), or set {OPERATOR_BINARY_ENV}"
    )]
    BinaryNotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The path of the running test executable is unknown.
    #[error("cannot locate the running test executable to find {OPERATOR_BINARY} next to it")]
    CurrentExe(#[source] std::io::Error),
    /// The input file could not be written, or the operator could not be run.
    #[error("cannot run `{OPERATOR_BINARY} render`: {context}")]
    Run {
        /// What failed.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operator refused to render.
    #[error("`{OPERATOR_BINARY} render` failed with {status}: {stderr}")]
    RenderFailed {
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The output is not a YAML stream.
    #[error("the rendered output is not a YAML stream: {0}")]
    Yaml(String),
    /// An object the test needs is not in the output.
    #[error("no {kind} named {name:?} among the rendered objects")]
    Missing {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
    },
    /// A field is missing or has the wrong type.
    #[error("{object}: field {field} is missing or not {expected}")]
    Field {
        /// `Kind/name` of the object.
        object: String,
        /// The field's path.
        field: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A Secret value is not base64.
    #[error("Secret {secret} key {key}: data is not base64: {reason}")]
    Base64 {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The documents of a rendered YAML stream, in order.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    documents: Vec<Value>,
}

impl Objects {
    /// Parses a multi-document YAML stream; empty documents are skipped.
    pub fn parse(yaml: &str) -> Result<Self, KubeObjectsError> {
        let documents: Vec<Value> = serde_saphyr::from_multiple(yaml)
            .map_err(|err| KubeObjectsError::Yaml(err.to_string()))?;
        Ok(Objects {
            documents: documents.into_iter().filter(|doc| !doc.is_null()).collect(),
        })
    }

    /// Every object, in the stream's order.
    pub fn all(&self) -> &[Value] {
        &self.documents
    }

    /// Objects of `kind`.
    pub fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> + '_ {
        let kind = kind.to_owned();
        self.documents
            .iter()
            .filter(move |doc| doc.get("kind").and_then(Value::as_str) == Some(kind.as_str()))
    }

    /// The object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> Result<&Value, KubeObjectsError> {
        self.of_kind(kind)
            .find(|doc| object_name(doc) == Some(name))
            .ok_or_else(|| KubeObjectsError::Missing {
                kind: kind.to_owned(),
                name: name.to_owned(),
            })
    }

    /// The only object of `kind` (a render has one StatefulSet, say).
    pub fn single(&self, kind: &str) -> Result<&Value, KubeObjectsError> {
        let mut found = self.of_kind(kind);
        match (found.next(), found.next()) {
            (Some(object), None) => Ok(object),
            _ => Err(KubeObjectsError::Missing {
                kind: kind.to_owned(),
                name: "(exactly one)".to_owned(),
            }),
        }
    }

    /// The data of the Secret `name`, decoded: `data` (base64) merged with `stringData`, as
    /// the API server would store it.
    pub fn secret_data(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, KubeObjectsError> {
        secret_data(self.get("Secret", name)?)
    }

    /// The data of the ConfigMap `name`: `data` as text and `binaryData` (base64) decoded.
    pub fn config_map_data(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>, KubeObjectsError> {
        config_map_data(self.get("ConfigMap", name)?)
    }

    /// The stream as YAML again (each document as JSON, which is YAML), for feeding rendered
    /// objects back to the operator.
    pub fn to_yaml_stream<'a>(objects: impl IntoIterator<Item = &'a Value>) -> String {
        objects
            .into_iter()
            .map(|object| format!("---\n{object}\n"))
            .collect()
    }
}

/// `metadata.name` of an object.
pub fn object_name(object: &Value) -> Option<&str> {
    object.pointer("/metadata/name").and_then(Value::as_str)
}

/// `Kind/name` of an object, for messages.
pub fn describe(object: &Value) -> String {
    format!(
        "{}/{}",
        object.get("kind").and_then(Value::as_str).unwrap_or("?"),
        object_name(object).unwrap_or("?")
    )
}

/// The string at JSON pointer `pointer` of `object`, or an error naming the field.
pub fn str_at<'a>(object: &'a Value, pointer: &str) -> Result<&'a str, KubeObjectsError> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| KubeObjectsError::Field {
            object: describe(object),
            field: pointer.to_owned(),
            expected: "a string",
        })
}

/// A Secret's data, decoded (`data` is base64, `stringData` text; `stringData` wins, as on the
/// API server).
pub fn secret_data(secret: &Value) -> Result<BTreeMap<String, Vec<u8>>, KubeObjectsError> {
    let mut data = BTreeMap::new();
    if let Some(encoded) = secret.get("data").and_then(Value::as_object) {
        for (key, value) in encoded {
            data.insert(key.clone(), decode_base64(secret, key, value)?);
        }
    }
    if let Some(strings) = secret.get("stringData").and_then(Value::as_object) {
        for (key, value) in strings {
            let text = value.as_str().ok_or_else(|| KubeObjectsError::Field {
                object: describe(secret),
                field: format!("stringData.{key}"),
                expected: "a string",
            })?;
            data.insert(key.clone(), text.as_bytes().to_vec());
        }
    }
    Ok(data)
}

/// A ConfigMap's data: `data` as text, `binaryData` decoded.
pub fn config_map_data(config_map: &Value) -> Result<BTreeMap<String, Vec<u8>>, KubeObjectsError> {
    let mut data = BTreeMap::new();
    if let Some(texts) = config_map.get("data").and_then(Value::as_object) {
        for (key, value) in texts {
            let text = value.as_str().ok_or_else(|| KubeObjectsError::Field {
                object: describe(config_map),
                field: format!("data.{key}"),
                expected: "a string",
            })?;
            data.insert(key.clone(), text.as_bytes().to_vec());
        }
    }
    if let Some(binary) = config_map.get("binaryData").and_then(Value::as_object) {
        for (key, value) in binary {
            data.insert(key.clone(), decode_base64(config_map, key, value)?);
        }
    }
    Ok(data)
}

fn decode_base64(object: &Value, key: &str, value: &Value) -> Result<Vec<u8>, KubeObjectsError> {
    let error = |reason: String| KubeObjectsError::Base64 {
        secret: describe(object),
        key: key.to_owned(),
        reason,
    };
    let text = value.as_str().ok_or_else(|| error("not a string".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|err| error(err.to_string()))
}

/// Runs `proglog-operator render` on `input` (a YAML stream: the LogCluster and whatever the
/// operator would read), at `now` (RFC 3339) if given, and parses what it prints.
pub fn render(input: &str, now: Option<&str>) -> Result<Objects, KubeObjectsError> {
    let run_error = |context: &str| {
        let context = context.to_owned();
        move |source| KubeObjectsError::Run { context, source }
    };
    let mut command = Command::new(operator_binary()?);
    command.args(["render", "-f", "-"]);
    if let Some(now) = now {
        command.args(["--now", now]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(run_error("spawn"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(run_error("write the input"))?;
    }
    let output = child.wait_with_output().map_err(run_error("wait for it"))?;
    if !output.status.success() {
        return Err(KubeObjectsError::RenderFailed {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Objects::parse(&String::from_utf8_lossy(&output.stdout))
}

/// Where to find the operator binary (see the module documentation).
pub fn operator_binary() -> Result<PathBuf, KubeObjectsError> {
    let path = match std::env::var_os(OPERATOR_BINARY_ENV) {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().map_err(KubeObjectsError::CurrentExe)?;
            // target/<profile>/deps/<test>-<hash> -> target/<profile>
            let profile_dir = exe.parent().and_then(Path::parent).ok_or_else(|| {
                KubeObjectsError::CurrentExe(std::io::Error::other(format!(
                    "{} has no grandparent directory",
                    exe.display()
                )))
            })?;
            profile_dir.join(OPERATOR_BINARY)
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(KubeObjectsError::BinaryNotFound { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_secrets_and_config_maps_from_a_stream() {
        let objects = Objects::parse(
            "# comment\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: aGk=}\nstringData: {b: there}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: v}\n",
        )
        .unwrap();
        let secret = objects.secret_data("s").unwrap();
        assert_eq!(secret["a"], b"hi");
        assert_eq!(secret["b"], b"there");
        assert_eq!(objects.config_map_data("c").unwrap()["k"], b"v");
        assert!(objects.get("Secret", "c").is_err());
        let again = Objects::parse(&Objects::to_yaml_stream(objects.all())).unwrap();
        assert_eq!(again.all(), objects.all());
    }
}

//! The server's TLS configuration, loaded from PEM files and reloaded when they change.
//!
//! The whole `rustls::ServerConfig` is rebuilt from the files and swapped atomically: each new
//! connection takes the config current at its accept, so a rotated certificate, key or client
//! CA applies to new connections while established ones keep the session they negotiated
//! (nothing is torn down, so an open `ConsumeStream` goes on). Swapping the whole config rather
//! than only the certificate (a `ResolvesServerCert`) lets the client CA rotate the same way.
//!
//! Rotation is detected by polling the files' contents every `reload_interval`: a few KiB read
//! per tick, with no inotify edge cases (editors that replace, Kubernetes secret volumes that
//! swap a symlink). A rotation caught half way (a new certificate with the old key) fails the
//! key check and is retried at the next tick, while the previous config keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::SecurityError;
use super::identity::{serial_number, subject_common_name};

/// Shortest allowed reload poll interval.
pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// Longest allowed reload poll interval.
pub const MAX_RELOAD_INTERVAL: Duration = Duration::from_secs(3600);

/// TLS for the gRPC server (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, end entity first).
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to: mutual TLS. Without it,
    /// clients are not asked for certificates.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes. Default 5 s; 100 ms to 1 h.
    pub reload_interval: Duration,
    /// How long a client may take to finish the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once, at most; more connections wait to be accepted.
    /// Default 256.
    pub max_handshakes: usize,
    /// TLS connections open at once, at most; more wait to be accepted. Default 10 000.
    pub max_connections: usize,
    /// Whether clients may connect without a certificate when `client_ca` is set. The node
    /// sets it when the ACL is on, which then answers `UNAUTHENTICATED` per call (and leaves
    /// health and reflection open to probes). Default false: mutual TLS is enforced by the
    /// handshake.
    pub client_cert_optional: bool,
}

impl TlsConfig {
    /// TLS with `cert` and `key`, no client authentication, default limits.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            reload_interval: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
            max_connections: super::DEFAULT_MAX_CONNECTIONS,
            client_cert_optional: false,
        }
    }

    /// Checks the limits and loads the files once, naming the flag to fix.
    pub fn validate(&self) -> Result<(), SecurityError> {
        if !(MIN_RELOAD_INTERVAL..=MAX_RELOAD_INTERVAL).contains(&self.reload_interval) {
            return Err(SecurityError::Invalid {
                flag: "tls-reload-interval-ms",
                reason: format!(
                    "must be between {MIN_RELOAD_INTERVAL:?} and {MAX_RELOAD_INTERVAL:?}"
                ),
            });
        }
        if self.handshake_timeout.is_zero() || self.max_handshakes == 0 || self.max_connections == 0
        {
            return Err(SecurityError::Invalid {
                flag: "tls limits",
                reason: "the handshake timeout and connection limits must be positive".into(),
            });
        }
        load_server_config(&TlsFiles::read(self)?, self).map(drop)
    }
}

/// The bytes of the TLS files as read at one moment: what a reload compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl TlsFiles {
    /// The TLS this node calls its peers with: these files' certificate as its client
    /// identity, and the client CA (the cluster's CA) to check theirs.
    pub fn peer_client_config(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key));
        if let Some(ca) = &self.client_ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        config
    }

    /// SHA-256 (lowercase hex) of the certificate file's bytes.
    pub fn certificate_sha256(&self) -> String {
        sha256_hex(&self.cert)
    }

    /// SHA-256 (lowercase hex) of the client CA file's bytes (the trust bundle), if there is
    /// one.
    pub fn trust_bundle_sha256(&self) -> Option<String> {
        self.client_ca.as_deref().map(sha256_hex)
    }

    /// Reads the files `config` names.
    pub fn read(config: &TlsConfig) -> Result<Self, SecurityError> {
        Ok(TlsFiles {
            cert: read_file("tls-cert", &config.cert)?,
            key: read_file("tls-key", &config.key)?,
            client_ca: config
                .client_ca
                .as_deref()
                .map(|path| read_file("tls-client-ca", path))
                .transpose()?,
        })
    }
}

/// SHA-256 of `bytes`, lowercase hex, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// The crypto provider: ring, so no C toolchain (aws-lc) is needed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| SecurityError::Pem {
            flag,
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(SecurityError::Pem {
            flag,
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certificates)
}

/// Builds the server config from file contents: certificate and key must match, the client CA
/// must hold at least one usable certificate. ALPN offers `h2` (gRPC).
pub fn load_server_config(
    files: &TlsFiles,
    config: &TlsConfig,
) -> Result<ServerConfig, SecurityError> {
    let chain = parse_certificates("tls-cert", &config.cert, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|err| SecurityError::Pem {
        flag: "tls-key",
        path: config.key.clone(),
        reason: err.to_string(),
    })?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| SecurityError::Invalid {
            flag: "tls",
            reason: err.to_string(),
        })?;
    let builder = match (&config.client_ca, &files.client_ca) {
        (Some(ca_path), Some(ca_pem)) => {
            let mut roots = RootCertStore::empty();
            for certificate in parse_certificates("tls-client-ca", ca_path, ca_pem)? {
                roots.add(certificate).map_err(|err| SecurityError::Pem {
                    flag: "tls-client-ca",
                    path: ca_path.clone(),
                    reason: err.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.client_cert_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|err| SecurityError::Pem {
                flag: "tls-client-ca",
                path: ca_path.clone(),
                reason: err.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server =
        builder
            .with_single_cert(chain, key)
            .map_err(|err| SecurityError::KeyMismatch {
                cert: config.cert.clone(),
                key: config.key.clone(),
                reason: err.to_string(),
            })?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(server)
}

/// The server config new connections use, replaced when the files change.
#[derive(Debug)]
pub struct ReloadableTlsConfig {
    config: TlsConfig,
    current: RwLock<(TlsFiles, Arc<ServerConfig>)>,
    /// The files in force, for the other users of the same certificate (peer calls).
    files: watch::Sender<Arc<TlsFiles>>,
}

impl ReloadableTlsConfig {
    /// Loads the files named by `config`.
    pub fn load(config: TlsConfig) -> Result<Arc<Self>, SecurityError> {
        let files = TlsFiles::read(&config)?;
        let server = Arc::new(load_server_config(&files, &config)?);
        log_certificate("TLS certificate loaded", &files, &config);
        Ok(Arc::new(ReloadableTlsConfig {
            config,
            files: watch::Sender::new(Arc::new(files.clone())),
            current: RwLock::new((files, server)),
        }))
    }

    /// The files in force, changing whenever a reload swaps new ones in.
    pub fn subscribe_files(&self) -> watch::Receiver<Arc<TlsFiles>> {
        self.files.subscribe()
    }

    /// The config a connection accepted now should use.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().1)
    }

    /// The settings this was loaded with.
    pub fn settings(&self) -> &TlsConfig {
        &self.config
    }

    /// Re-reads the files; if they changed and load, swaps the config in. Returns whether a new
    /// config was installed. Files that changed but do not load leave the previous config in
    /// place (a rotation half done, most likely) and are reported as an error.
    pub fn reload_if_changed(&self) -> Result<bool, SecurityError> {
        let files = TlsFiles::read(&self.config)?;
        if self.current.read().0 == files {
            return Ok(false);
        }
        let server = Arc::new(load_server_config(&files, &self.config)?);
        log_certificate("TLS certificate reloaded", &files, &self.config);
        // The server config first: what is reported as loaded is already in force.
        *self.current.write() = (files.clone(), server);
        self.files.send_replace(Arc::new(files));
        Ok(true)
    }

    /// Polls the files every `reload_interval` until `shutdown`, swapping in each change. The
    /// same failure is logged once, not at every tick.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.reload_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let this = Arc::clone(&self);
            let outcome = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            match outcome {
                Ok(Ok(_)) => last_error = None,
                Ok(Err(err)) => {
                    let message = err.to_string();
                    if last_error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(error = %message, "TLS files changed but do not load; still serving the previous certificate");
                        last_error = Some(message);
                    }
                }
                Err(err) => tracing::error!(error = %err, "TLS reload task failed"),
            }
        }
    }
}

fn log_certificate(message: &str, files: &TlsFiles, config: &TlsConfig) {
    let leaf = CertificateDer::pem_slice_iter(&files.cert)
        .next()
        .and_then(Result::ok);
    let subject = leaf.as_ref().and_then(subject_common_name);
    let serial = leaf.as_ref().and_then(serial_number);
    tracing::info!(
        cert = %config.cert.display(),
        subject = subject.as_deref().unwrap_or("-"),
        serial = serial.as_deref().unwrap_or("-"),
        mutual_tls = config.client_ca.is_some(),
        "{message}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::test_pki::{Issued, TestCa};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        // Atomic, as a rotation should be: write aside, then rename over.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    fn install(dir: &Path, issued: &Issued) -> TlsConfig {
        let cert = write(dir, "server.pem", &issued.cert_pem);
        let key = write(dir, "server.key", &issued.key_pem);
        let mut config = TlsConfig::new(cert, key);
        config.reload_interval = MIN_RELOAD_INTERVAL;
        config
    }

    #[test]
    fn reload_swaps_in_changed_files_and_keeps_the_old_config_on_a_half_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let first = ca.issue("node-a", 1);
        let config = install(dir.path(), &first);
        let tls = ReloadableTlsConfig::load(config).unwrap();
        let before = tls.current();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");
        assert!(Arc::ptr_eq(&before, &tls.current()));

        // Half a rotation: a new certificate, the old key. Refused; the old config stays.
        let second = ca.issue("node-b", 2);
        write(dir.path(), "server.pem", &second.cert_pem);
        let err = tls.reload_if_changed().unwrap_err();
        assert_eq!(err.flag(), "tls-key", "{err}");
        assert!(Arc::ptr_eq(&before, &tls.current()));

        // The rotation completes: the new config is swapped in.
        write(dir.path(), "server.key", &second.key_pem);
        assert!(tls.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&before, &tls.current()));
        assert!(!tls.reload_if_changed().unwrap(), "already current");
    }

    #[tokio::test]
    async fn watch_reloads_within_a_few_intervals_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let tls = ReloadableTlsConfig::load(install(dir.path(), &ca.issue("node-a", 1))).unwrap();
        let before = tls.current();
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(Arc::clone(&tls).watch(shutdown.clone()));
        let next = ca.issue("node-b", 2);
        write(dir.path(), "server.key", &next.key_pem);
        write(dir.path(), "server.pem", &next.cert_pem);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::ptr_eq(&before, &tls.current()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not reloaded in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn validate_names_the_flag_of_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let mut config = install(dir.path(), &ca.issue("node-a", 1));
        config.validate().unwrap();

        let mut missing = config.clone();
        missing.cert = dir.path().join("nope.pem");
        let err = missing.validate().unwrap_err();
        assert_eq!(err.flag(), "tls-cert");
        assert!(
            err.to_string().starts_with("cannot read --tls-cert"),
            "{err}"
        );

        let mut not_a_ca = config.clone();
        not_a_ca.client_ca = Some(write(dir.path(), "ca.pem", "not PEM"));
        assert_eq!(not_a_ca.validate().unwrap_err().flag(), "tls-client-ca");

        config.client_ca = Some(write(dir.path(), "ca.pem", &ca.pem));
        config.validate().unwrap();
        config.reload_interval = Duration::from_millis(1);
        assert_eq!(
            config.validate().unwrap_err().flag(),
            "tls-reload-interval-ms"
        );
    }
}

//! The cluster's certificates: a CA, one certificate per node, and one for the operator, and
//! the decision of what to keep and what to issue again.
//!
//! [`plan`] is pure apart from key generation: given the Secrets' current data (or none) and
//! the time, it returns the data the Secrets should hold and when things expire. A certificate
//! is issued again when it is missing or unreadable, when it comes within `renewBefore` of its
//! end, when its names no longer match (the cluster was renamed into another namespace, say),
//! when its key does not match, or when the CA that signed it is no longer the CA. Everything
//! that is still good is kept byte for byte, so applying the result again changes nothing.
//!
//! Nodes present their own certificate both as servers and as clients (they call each other),
//! so node certificates carry both `serverAuth` and `clientAuth`; the subject common name is
//! the node id, the pod name, which the ACL and the peer service check.
//!
//! Which Secret holds what: `NAME-ca` holds the CA's `ca.crt` and `ca.key` (only for a CA the
//! operator generated; with `issuer.kind: Secret` the user's Secret is read and never written).
//! `NAME-tls` holds the trust bundle `ca.crt` and every node's `<pod>.crt` and `<pod>.key`; it
//! is mounted in every pod, and each node picks its own files by its pod name (one Secret per
//! pod cannot be mounted from one pod template). `NAME-operator-tls` holds the operator's
//! client certificate.
//!
//! When the CA itself is replaced (the operator's renewed, or the user's Secret changed), the
//! kubelet updates each pod's copy of `NAME-tls` at its own time, so the new CA goes out in
//! steps, as Strimzi does: first a bundle trusting old and new CA, with certificates unchanged;
//! once every running node reports (in `ClusterStatus`) that it has loaded that bundle,
//! certificates from the new CA. The old CA stays in the bundle until it ends, so what it
//! signed keeps working. No two nodes, and neither the operator, distrust each other on the way
//! (see [`Rotation`]), unless the old CA comes within half of `renewBefore` of its end with a
//! node still behind: then the certificates go out anyway, or they would all end together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};

/// The data of a Secret, key to bytes.
pub type SecretData = BTreeMap<String, ByteString>;

/// Key of the CA certificate, in the CA Secret and as the trust bundle elsewhere.
pub const CA_CERT: &str = "ca.crt";
/// Key of the CA's private key in the CA Secret.
pub const CA_KEY: &str = "ca.key";
/// Key of the CA this one replaced, kept in the trust bundle until it expires.
pub const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
/// Key of a certificate in a `kubernetes.io/tls` Secret (the operator's, a user CA's).
pub const TLS_CERT: &str = "tls.crt";
/// Key of a private key in a `kubernetes.io/tls` Secret.
pub const TLS_KEY: &str = "tls.key";
/// Subject common name of the operator's client certificate (the ACL grants it `admin`).
pub const OPERATOR_COMMON_NAME: &str = "proglog-operator";

/// How far before `now` certificates start, for clocks that lag a little.
const CLOCK_SKEW_SECONDS: i64 = 300;

/// A certificate, key or CA that cannot be used, or one that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Key generation failed (the crypto library refused).
    #[error("cannot generate a key pair: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// Signing a certificate failed.
    #[error("cannot issue the certificate of {subject}: {source}")]
    Issue {
        /// The subject common name.
        subject: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A name cannot go in a certificate.
    #[error("`{name}` cannot be a DNS name in a certificate: {source}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// The user's CA Secret lacks a key.
    #[error("CA Secret {secret} has no `{key}` (it needs `tls.crt` and `tls.key`, PEM)")]
    MissingCaKey {
        /// The Secret's name.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// The user's CA cannot sign.
    #[error("CA Secret {secret}: {reason}")]
    UnusableCa {
        /// The Secret's name.
        secret: String,
        /// What is wrong.
        reason: String,
    },
    /// A validity setting does not fit.
    #[error("tls.{field}: {reason}")]
    BadValidity {
        /// `caValidity`, `certValidity` or `renewBefore`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// How long certificates live and when they are renewed (`spec.tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Lifetime of a CA the operator generates.
    pub ca_validity: std::time::Duration,
    /// Lifetime of each node (and the operator's) certificate.
    pub cert_validity: std::time::Duration,
    /// Renew this long before the end.
    pub renew_before: std::time::Duration,
}

impl Lifetimes {
    /// Takes the spec's durations, refusing the combinations the CRD's rules refuse too.
    pub fn from_spec(spec: &crate::crd::TlsSpec) -> Result<Self, TlsError> {
        let lifetimes = Lifetimes {
            ca_validity: spec.ca_validity.into(),
            cert_validity: spec.cert_validity.into(),
            renew_before: spec.renew_before.into(),
        };
        let bad = |field, reason: &str| {
            Err(TlsError::BadValidity {
                field,
                reason: reason.to_owned(),
            })
        };
        if spec.cert_validity.is_negative() || lifetimes.cert_validity.is_zero() {
            return bad("certValidity", "must be positive");
        }
        if spec.renew_before.is_negative() || lifetimes.renew_before >= lifetimes.cert_validity {
            return bad(
                "renewBefore",
                "must be at least zero and shorter than certValidity",
            );
        }
        if lifetimes.ca_validity <= lifetimes.cert_validity {
            return bad("caValidity", "must be longer than certValidity");
        }
        Ok(lifetimes)
    }
}

/// Who a certificate is for: its common name and the names it is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Subject common name: the node id (pod name), or [`OPERATOR_COMMON_NAME`].
    pub common_name: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
}

/// Where the CA comes from.
#[derive(Debug, Clone, Copy)]
pub enum CaSource<'a> {
    /// The operator's own CA, with the CA Secret's current data if it exists.
    Operator {
        /// Data of `NAME-ca`, if it exists.
        existing: Option<&'a SecretData>,
        /// Subject common name for a new CA.
        common_name: &'a str,
    },
    /// A CA the user keeps in a Secret (`tls.crt`, `tls.key`).
    User {
        /// The Secret's name, for errors.
        secret_name: &'a str,
        /// Its data.
        data: &'a SecretData,
    },
}

/// Everything [`plan`] needs.
#[derive(Debug, Clone, Copy)]
pub struct PkiRequest<'a> {
    /// The time decisions are made at.
    pub now: Timestamp,
    /// Lifetimes and renewal margin.
    pub lifetimes: Lifetimes,
    /// The CA.
    pub ca: CaSource<'a>,
    /// One identity per node that needs a certificate, in ordinal order.
    pub nodes: &'a [Identity],
    /// Current data of `NAME-tls`, if it exists.
    pub existing_nodes: Option<&'a SecretData>,
    /// Current data of `NAME-operator-tls`, if it exists.
    pub existing_operator: Option<&'a SecretData>,
    /// What each node reports it has loaded, when the caller asked them (see [`Rotation`]).
    pub loaded: Option<&'a [LoadedTls]>,
    /// The nodes whose pods run, whose reports a replacement waits for (`None`: every node).
    pub running: Option<&'a [String]>,
}

/// What one node reports it has loaded (its `ClusterStatus`): the SHA-256 of its peer
/// listener's certificate and trust bundle files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadedTls {
    /// Node id (pod name).
    pub node: String,
    /// SHA-256 of the trust bundle in force, lowercase hex.
    pub trust_bundle_sha256: String,
    /// SHA-256 of its certificate in force, lowercase hex.
    pub certificate_sha256: String,
}

/// Where a CA replacement stands. The kubelet updates each pod's copy of a Secret at its own
/// time, so a new CA goes out in steps that never leave two parties distrusting each other:
/// first a trust bundle holding the old and the new CA (certificates stay as they are); once
/// every running node has loaded that bundle, certificates from the new CA. The old CA stays
/// in the bundle until it ends, so certificates it signed (clients' too) keep working.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Rotation {
    /// No CA is being replaced (or its certificates are out).
    #[default]
    Steady,
    /// The bundle trusting old and new CA is out; these nodes have not loaded it yet, and
    /// certificates from the old CA are kept until they have.
    AwaitingTrust {
        /// The nodes that have not.
        nodes: Vec<String>,
    },
    /// The old CA ends within half of `renewBefore` and these nodes have still not loaded the
    /// bundle: certificates from the new CA went out anyway, since waiting longer would let
    /// every certificate from the old one end at once.
    Forced {
        /// The nodes that had not loaded the bundle.
        nodes: Vec<String>,
    },
    /// A replacement is under way and the next step depends on what the nodes have loaded:
    /// plan again with [`PkiRequest::loaded`].
    NeedsReports,
}

/// Why a certificate was issued (again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueReason {
    /// There was none.
    Missing,
    /// What was there does not parse.
    Unreadable(String),
    /// It ends within `renewBefore` (or has ended).
    Expiring {
        /// Its end.
        not_after: Timestamp,
    },
    /// Its common name or alternative names differ from what it needs now.
    NamesChanged,
    /// It was not signed by the current CA.
    IssuerChanged,
    /// The key next to it is not its key.
    KeyMismatch,
}

impl std::fmt::Display for IssueReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssueReason::Missing => f.write_str("missing"),
            IssueReason::Unreadable(reason) => write!(f, "unreadable: {reason}"),
            IssueReason::Expiring { not_after } => write!(f, "expires at {not_after}"),
            IssueReason::NamesChanged => f.write_str("names changed"),
            IssueReason::IssuerChanged => f.write_str("signed by another CA"),
            IssueReason::KeyMismatch => f.write_str("key does not match"),
        }
    }
}

/// One certificate [`plan`] issued, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Its subject common name (the CA's for the CA).
    pub subject: String,
    /// Why.
    pub reason: IssueReason,
}

/// What the certificate Secrets should hold.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Data of `NAME-ca`; `None` when the CA is the user's.
    pub ca_secret: Option<SecretData>,
    /// Data of `NAME-tls`: `ca.crt` and each node's `<pod>.crt` and `<pod>.key`.
    pub nodes_secret: SecretData,
    /// Data of `NAME-operator-tls`: `tls.crt`, `tls.key`, `ca.crt`.
    pub operator_secret: SecretData,
    /// When the CA expires.
    pub ca_not_after: Timestamp,
    /// When the first of the node and operator certificates expires.
    pub certs_not_after: Timestamp,
    /// The user's CA ends within `renewBefore`: the operator cannot renew it; the user must.
    pub ca_expiring: bool,
    /// What was issued in this pass, CA first.
    pub issued: Vec<Issued>,
    /// Where a CA replacement stands.
    pub rotation: Rotation,
}

/// Decides which certificates to keep and issues the rest. See the module documentation.
pub fn plan(request: &PkiRequest<'_>) -> Result<Pki, TlsError> {
    let now = request.now.as_second();
    let renew_before = seconds(request.lifetimes.renew_before);
    let mut issued = Vec::new();
    let (ca, ca_secret) = match request.ca {
        CaSource::Operator {
            existing,
            common_name,
        } => {
            let (ca, data, reason) = operator_ca(existing, common_name, now, &request.lifetimes)?;
            if let Some(reason) = reason {
                issued.push(Issued {
                    subject: common_name.to_owned(),
                    reason,
                });
            }
            (ca, Some(data))
        }
        CaSource::User { secret_name, data } => (user_ca(secret_name, data, now)?, None),
    };
    let ca_expiring = now.saturating_add(renew_before) >= ca.not_after;
    let stage = stage(request, &ca, now);

    let mut nodes_secret = SecretData::new();
    let mut operator_secret = SecretData::new();
    let mut certs_not_after = i64::MAX;
    let leaves = request
        .nodes
        .iter()
        .map(|node| {
            (
                node.clone(),
                LeafKind::Node,
                request.existing_nodes,
                format!("{}.crt", node.common_name),
                format!("{}.key", node.common_name),
            )
        })
        .chain(std::iter::once((
            Identity {
                common_name: OPERATOR_COMMON_NAME.to_owned(),
                dns_names: Vec::new(),
                ip_addresses: Vec::new(),
            },
            LeafKind::Operator,
            request.existing_operator,
            TLS_CERT.to_owned(),
            TLS_KEY.to_owned(),
        )));
    for (identity, kind, existing, cert_key, key_key) in leaves {
        let current = existing.and_then(|data| Some((data.get(&cert_key)?, data.get(&key_key)?)));
        let decision = match current {
            None => Err(IssueReason::Missing),
            Some((cert, key)) => {
                let checked =
                    check_leaf(&cert.0, &key.0, &identity, &ca.signer(), now, renew_before);
                match checked {
                    // Until every node trusts the new CA, a certificate from the old one stays.
                    Err(IssueReason::IssuerChanged) if !stage.reissue => stage
                        .outgoing
                        .iter()
                        .map(|old| check_leaf(&cert.0, &key.0, &identity, old, now, renew_before))
                        .find(|checked| !matches!(checked, Err(IssueReason::IssuerChanged)))
                        .unwrap_or(Err(IssueReason::IssuerChanged)),
                    other => other,
                }
            }
        };
        let (cert_pem, key_pem, not_after) = match decision {
            Ok(not_after) => {
                let (cert, key) = current.map_or((Vec::new(), Vec::new()), |(cert, key)| {
                    (cert.0.clone(), key.0.clone())
                });
                (cert, key, not_after)
            }
            Err(reason) => {
                let leaf = issue_leaf(&identity, kind, &ca, now, &request.lifetimes)?;
                issued.push(Issued {
                    subject: identity.common_name.clone(),
                    reason,
                });
                (leaf.cert_pem, leaf.key_pem, leaf.not_after)
            }
        };
        certs_not_after = certs_not_after.min(not_after);
        let target = match kind {
            LeafKind::Node => &mut nodes_secret,
            LeafKind::Operator => &mut operator_secret,
        };
        target.insert(cert_key, ByteString(cert_pem));
        target.insert(key_key, ByteString(key_pem));
    }
    let Stage {
        bundle, rotation, ..
    } = stage;
    nodes_secret.insert(CA_CERT.to_owned(), ByteString(bundle.clone()));
    operator_secret.insert(CA_CERT.to_owned(), ByteString(bundle));
    Ok(Pki {
        ca_secret,
        nodes_secret,
        operator_secret,
        ca_not_after: timestamp(ca.not_after),
        certs_not_after: timestamp(certs_not_after),
        ca_expiring,
        issued,
        rotation,
    })
}

/// The step of a CA replacement this pass is at (see [`Rotation`]).
struct Stage {
    /// The trust bundle to publish: the CA's own, then the outgoing CAs' certificates.
    bundle: Vec<u8>,
    /// The outgoing CAs (valid, still in the published bundle), to keep their certificates.
    outgoing: Vec<Signer>,
    /// Whether certificates not from the CA are issued again now.
    reissue: bool,
    rotation: Rotation,
}

/// Whether the CA whose SubjectPublicKeyInfo (DER) is `ca_key` signed `cert`.
fn signed_by(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    ca_key: &[u8],
) -> Result<bool, String> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(ca_key)
        .map_err(|err| format!("CA key: {err}"))?;
    Ok(cert.verify_signature(Some(&spki)).is_ok())
}

/// Whether a certificate stored under `key` in `data` was not signed by `ca` (or is absent or
/// unreadable: it will be issued from the CA anyway).
fn not_from(data: Option<&SecretData>, key: &str, ca: &Ca) -> bool {
    let Some(cert) = data.and_then(|data| data.get(key)) else {
        return false;
    };
    parse(&cert.0, |cert| {
        signed_by(cert, &ca.public_key).map(|signed| !signed)
    })
    .unwrap_or(false)
}

/// Decides the step from the published bundle (`ca.crt` of `NAME-tls`), the certificates in
/// the Secrets and the node reports.
fn stage(request: &PkiRequest<'_>, ca: &Ca, now: i64) -> Stage {
    let fresh = Stage {
        bundle: ca.trust_bundle.clone(),
        outgoing: Vec::new(),
        reissue: true,
        rotation: Rotation::Steady,
    };
    let current = certificate_blocks(&ca.chain);
    let Some((ca_der, _)) = current.first() else {
        return fresh;
    };
    let published = request
        .existing_nodes
        .and_then(|data| data.get(CA_CERT))
        .map(|pem| certificate_blocks(&pem.0))
        .unwrap_or_default();
    if published.is_empty() {
        // Nothing runs with a bundle yet: publish everything at once.
        return fresh;
    }
    // The CA's own bundle (a chain stays whole), then every published CA that is not in it
    // and has not ended: an outgoing CA stays trusted until it ends, so what it signed
    // (clients' certificates included) keeps working.
    let mut bundle = Vec::new();
    let mut seen: Vec<&[u8]> = Vec::new();
    for (der, text) in &current {
        if !seen.contains(&der.as_slice()) {
            bundle.extend_from_slice(text);
            seen.push(der);
        }
    }
    let mut outgoing = Vec::new();
    for (der, text) in &published {
        if seen.contains(&der.as_slice()) {
            continue;
        }
        if let Some(signer) = Signer::of_valid(der, now) {
            bundle.extend_from_slice(text);
            outgoing.push(signer);
            seen.push(der);
        }
    }
    // Certificates still from another CA: a replacement is under way.
    let pending = request.nodes.iter().any(|node| {
        not_from(
            request.existing_nodes,
            &format!("{}.crt", node.common_name),
            ca,
        )
    }) || not_from(request.existing_operator, TLS_CERT, ca);
    if outgoing.is_empty() || !pending {
        return Stage {
            bundle,
            outgoing,
            reissue: true,
            rotation: Rotation::Steady,
        };
    }
    // The nodes whose report counts: those that run (a pod that starts later reads the
    // Secret as it is then).
    let required: Vec<String> = request
        .nodes
        .iter()
        .map(|node| node.common_name.clone())
        .filter(|node| request.running.is_none_or(|running| running.contains(node)))
        .collect();
    let trusted = published.iter().any(|(der, _)| der == ca_der);
    let behind = if !trusted {
        // Step one: the bundle with both goes out now; every node must load it.
        required
    } else {
        match request.loaded {
            None => {
                return Stage {
                    bundle,
                    outgoing,
                    reissue: false,
                    rotation: Rotation::NeedsReports,
                };
            }
            Some(loaded) => {
                let digest = sha256_hex(&bundle);
                required
                    .into_iter()
                    .filter(|node| {
                        !loaded.iter().any(|report| {
                            report.node == *node && report.trust_bundle_sha256 == digest
                        })
                    })
                    .collect()
            }
        }
    };
    if behind.is_empty() {
        // Step two: every node trusts the CA, so certificates come from it now.
        return Stage {
            bundle,
            outgoing,
            reissue: true,
            rotation: Rotation::Steady,
        };
    }
    // An outgoing CA about to end cannot wait any longer: what it signed would end with it,
    // all at once.
    let renew_before = seconds(request.lifetimes.renew_before);
    let ending = outgoing
        .iter()
        .any(|old| old.not_after.saturating_sub(now) <= renew_before / 2);
    if ending {
        return Stage {
            bundle,
            outgoing,
            reissue: true,
            rotation: Rotation::Forced { nodes: behind },
        };
    }
    Stage {
        bundle,
        outgoing,
        reissue: false,
        rotation: Rotation::AwaitingTrust { nodes: behind },
    }
}

/// The `CERTIFICATE` blocks of a PEM bundle, each as its DER and its text (newline ended);
/// blocks that do not parse are left out.
fn certificate_blocks(pem: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(pem);
    let mut rest = text.as_ref();
    let mut blocks = Vec::new();
    while let Some(start) = rest.find(BEGIN) {
        let Some(length) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + length + END.len()];
        if let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(block.as_bytes()) {
            blocks.push((pem.contents, format!("{block}\n").into_bytes()));
        }
        rest = &rest[start + length + END.len()..];
    }
    blocks
}

/// SHA-256 of `bytes`, lowercase hex, as `sha256sum` prints it and nodes report it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Whose certificate: decides the extended key usages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeafKind {
    /// A node: server and client.
    Node,
    /// The operator: client only.
    Operator,
}

/// The CA in force for this pass.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its public key (SubjectPublicKeyInfo, DER), to check what it signed.
    public_key: Vec<u8>,
    not_after: i64,
    /// The CA certificate, plus the previous CA's while that is valid (PEM).
    trust_bundle: Vec<u8>,
    /// The CA's own certificate (with the chain above it, for a user's CA), PEM.
    chain: Vec<u8>,
}

/// What checking a certificate against a CA needs: the CA's key and end.
struct Signer {
    /// SubjectPublicKeyInfo, DER.
    public_key: Vec<u8>,
    not_after: i64,
}

impl Signer {
    /// The CA in a DER certificate, if it parses and has not ended at `now`.
    fn of_valid(der: &[u8], now: i64) -> Option<Signer> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let end = not_after(&cert);
        (end > now).then(|| Signer {
            public_key: cert.public_key().raw.to_vec(),
            not_after: end,
        })
    }
}

impl Ca {
    fn signer(&self) -> Signer {
        Signer {
            public_key: self.public_key.clone(),
            not_after: self.not_after,
        }
    }
}

/// Keeps the operator's CA when it is readable, matches its key and is not about to end;
/// otherwise makes a new one, keeping the old certificate in the bundle while it is valid.
fn operator_ca(
    existing: Option<&SecretData>,
    common_name: &str,
    now: i64,
    lifetimes: &Lifetimes,
) -> Result<(Ca, SecretData, Option<IssueReason>), TlsError> {
    let renew_before = seconds(lifetimes.renew_before);
    let cert = existing.and_then(|data| data.get(CA_CERT));
    let key = existing.and_then(|data| data.get(CA_KEY));
    let previous = existing
        .and_then(|data| data.get(PREVIOUS_CA_CERT))
        .filter(|pem| parse(&pem.0, |cert| Ok(not_after(cert))).is_ok_and(|end| end > now));
    let reason = match (cert, key) {
        (Some(cert), Some(key)) => match load_ca(&cert.0, &key.0) {
            Ok(ca) if now.saturating_add(renew_before) < ca.not_after => {
                let mut bundle = cert.0.clone();
                let mut data = SecretData::new();
                data.insert(CA_CERT.to_owned(), cert.clone());
                data.insert(CA_KEY.to_owned(), key.clone());
                if let Some(previous) = previous {
                    append_pem(&mut bundle, &previous.0);
                    data.insert(PREVIOUS_CA_CERT.to_owned(), previous.clone());
                }
                return Ok((
                    Ca {
                        trust_bundle: bundle,
                        ..ca
                    },
                    data,
                    None,
                ));
            }
            Ok(ca) => IssueReason::Expiring {
                not_after: timestamp(ca.not_after),
            },
            Err(reason) => reason,
        },
        _ => IssueReason::Missing,
    };
    // The CA being replaced stays trusted while it is valid.
    let outgoing =
        cert.filter(|pem| parse(&pem.0, |cert| Ok(not_after(cert))).is_ok_and(|end| end > now));

    let key_pair = KeyPair::generate().map_err(TlsError::KeyGeneration)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset_date_time(now - CLOCK_SKEW_SECONDS);
    let end = now.saturating_add(seconds(lifetimes.ca_validity));
    params.not_after = offset_date_time(end);
    let certificate = params
        .self_signed(&key_pair)
        .map_err(|source| TlsError::Issue {
            subject: common_name.to_owned(),
            source,
        })?;
    let cert_pem = certificate.pem().into_bytes();
    let mut data = SecretData::new();
    data.insert(CA_CERT.to_owned(), ByteString(cert_pem.clone()));
    data.insert(
        CA_KEY.to_owned(),
        ByteString(key_pair.serialize_pem().into_bytes()),
    );
    let cert_pem_for_chain = cert_pem.clone();
    let mut bundle = cert_pem;
    if let Some(outgoing) = outgoing {
        append_pem(&mut bundle, &outgoing.0);
        data.insert(PREVIOUS_CA_CERT.to_owned(), outgoing.clone());
    }
    let public_key = key_pair.subject_public_key_info();
    Ok((
        Ca {
            issuer: Issuer::new(params, key_pair),
            public_key,
            not_after: end,
            trust_bundle: bundle,
            chain: cert_pem_for_chain,
        },
        data,
        Some(reason),
    ))
}

/// Loads the user's CA, refusing one that cannot sign: not a CA, key not matching, expired.
fn user_ca(secret: &str, data: &SecretData, now: i64) -> Result<Ca, TlsError> {
    let get = |key| {
        data.get(key).ok_or_else(|| TlsError::MissingCaKey {
            secret: secret.to_owned(),
            key,
        })
    };
    let (cert, key) = (get(TLS_CERT)?, get(TLS_KEY)?);
    let unusable = |reason: String| TlsError::UnusableCa {
        secret: secret.to_owned(),
        reason,
    };
    let is_ca = parse(&cert.0, |cert| Ok(cert.is_ca())).map_err(&unusable)?;
    if !is_ca {
        return Err(unusable(
            "tls.crt is not a CA certificate (basicConstraints CA:TRUE)".into(),
        ));
    }
    let ca = load_ca(&cert.0, &key.0).map_err(|reason| unusable(reason.to_string()))?;
    if ca.not_after <= now {
        return Err(unusable(format!(
            "the CA expired at {}",
            timestamp(ca.not_after)
        )));
    }
    Ok(ca)
}

/// A private key from PEM in any of the encodings CA tools write: PKCS#8 (`PRIVATE KEY`, what
/// rcgen and `openssl genpkey` write), PKCS#1 (`RSA PRIVATE KEY`, `openssl genrsa
/// -traditional`, cert-manager's default for RSA) or SEC1 (`EC PRIVATE KEY`, `openssl ecparam
/// -genkey`, cert-manager's default for ECDSA). Blocks that are no key (`EC PARAMETERS`) are
/// skipped. rcgen on ring reads PKCS#8 only, so the other two are wrapped in PKCS#8 first.
fn key_pair_from_pem(text: &str) -> Result<KeyPair, String> {
    let accepted =
        "give a PKCS#8 (PRIVATE KEY), PKCS#1 (RSA PRIVATE KEY) or SEC1 (EC PRIVATE KEY) PEM key";
    let pem = x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .filter_map(Result::ok)
        .find(|pem| pem.label.ends_with("PRIVATE KEY"))
        .ok_or_else(|| format!("no private key in the PEM text: {accepted}"))?;
    let pkcs8 = match pem.label.as_str() {
        "PRIVATE KEY" => pem.contents,
        "RSA PRIVATE KEY" => pkcs8::wrap(&pkcs8::RSA_ENCRYPTION, &pem.contents),
        "EC PRIVATE KEY" => {
            let curve = pkcs8::sec1_curve(&pem.contents)
                .ok_or("the EC key names no curve (its SEC1 parameters are missing)")?;
            pkcs8::wrap(&pkcs8::ec_public_key(curve), &pem.contents)
        }
        "ENCRYPTED PRIVATE KEY" => {
            return Err(format!(
                "the key is encrypted with a passphrase, which the operator does not have: \
                 {accepted}, unencrypted (`openssl pkey -in KEY -out PLAIN`)"
            ));
        }
        other => return Err(format!("a `{other}` key is not supported: {accepted}")),
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|err| {
        if pkcs8::names_p521(&pkcs8) {
            "a P-521 EC key is not supported: give a P-256 or P-384 key (cert-manager: \
             privateKey.algorithm ECDSA with size 256 or 384), or RSA"
                .to_owned()
        } else {
            format!(
                "the key does not load ({err}): give an RSA (2048 to 8192 bits), P-256 or P-384 key"
            )
        }
    })
}

/// Just enough DER to put a PKCS#1 or SEC1 key into a PKCS#8 `PrivateKeyInfo` (RFC 5208).
mod pkcs8 {
    /// AlgorithmIdentifier of rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters.
    pub const RSA_ENCRYPTION: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];

    /// AlgorithmIdentifier of id-ecPublicKey (1.2.840.10045.2.1) on `curve` (an OID, whole).
    pub fn ec_public_key(curve: &[u8]) -> Vec<u8> {
        let mut content = vec![0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        content.extend_from_slice(curve);
        tlv(0x30, &content)
    }

    /// `PrivateKeyInfo { version 0, algorithm, privateKey }`.
    pub fn wrap(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
        let mut content = vec![0x02, 0x01, 0x00];
        content.extend_from_slice(algorithm);
        content.extend(tlv(0x04, key));
        tlv(0x30, &content)
    }

    /// OID secp521r1 (1.3.132.0.35), whole: the EC curve ring cannot use.
    const SECP521R1: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

    /// Whether a PKCS#8 key names the P-521 curve anywhere.
    pub fn names_p521(key: &[u8]) -> bool {
        key.windows(SECP521R1.len())
            .any(|window| window == SECP521R1)
    }

    /// The curve OID (tag, length and value) in a SEC1 `ECPrivateKey`'s `[0]` parameters.
    pub fn sec1_curve(key: &[u8]) -> Option<&[u8]> {
        let (0x30, mut fields, _) = read(key)? else {
            return None;
        };
        while !fields.is_empty() {
            let (tag, content, rest) = read(fields)?;
            if tag == 0xa0 {
                let (0x06, _, after) = read(content)? else {
                    return None;
                };
                return Some(&content[..content.len() - after.len()]);
            }
            fields = rest;
        }
        None
    }

    /// One DER element: its tag, its content and what follows it.
    fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let octets = usize::from(first & 0x7f);
            if octets == 0 || octets > 4 || rest.len() < octets {
                return None;
            }
            let (bytes, after) = rest.split_at(octets);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |len, &byte| (len << 8) | usize::from(byte))
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let len = content.len();
        let mut out = vec![tag];
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|&byte| byte == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }
}

/// Reads a CA certificate and its key, checking that they belong together.
fn load_ca(cert_pem: &[u8], key_pem: &[u8]) -> Result<Ca, IssueReason> {
    let (public_key, end) = parse(cert_pem, |cert| {
        Ok((cert.public_key().raw.to_vec(), not_after(cert)))
    })
    .map_err(IssueReason::Unreadable)?;
    let key_text = std::str::from_utf8(key_pem)
        .map_err(|_| IssueReason::Unreadable("the key is not PEM text".into()))?;
    let key_pair = key_pair_from_pem(key_text).map_err(IssueReason::Unreadable)?;
    if key_pair.subject_public_key_info() != public_key {
        return Err(IssueReason::KeyMismatch);
    }
    let cert_text = std::str::from_utf8(cert_pem)
        .map_err(|_| IssueReason::Unreadable("the certificate is not PEM text".into()))?;
    let issuer = Issuer::from_ca_cert_pem(cert_text, key_pair)
        .map_err(|err| IssueReason::Unreadable(err.to_string()))?;
    Ok(Ca {
        issuer,
        public_key,
        not_after: end,
        trust_bundle: cert_pem.to_vec(),
        chain: cert_pem.to_vec(),
    })
}

/// Returns the certificate's end if it can stay, or why it must be issued again.
fn check_leaf(
    cert_pem: &[u8],
    key_pem: &[u8],
    identity: &Identity,
    ca: &Signer,
    now: i64,
    renew_before: i64,
) -> Result<i64, IssueReason> {
    let facts = parse(cert_pem, |cert| {
        let signed_by_ca = signed_by(cert, &ca.public_key)?;
        Ok(LeafFacts {
            not_after: not_after(cert),
            names: names_of(cert)?,
            public_key: cert.public_key().raw.to_vec(),
            signed_by_ca,
        })
    })
    .map_err(IssueReason::Unreadable)?;
    if !facts.signed_by_ca {
        return Err(IssueReason::IssuerChanged);
    }
    if facts.names != Names::of(identity) {
        return Err(IssueReason::NamesChanged);
    }
    let key_matches = std::str::from_utf8(key_pem)
        .ok()
        .and_then(|text| key_pair_from_pem(text).ok())
        .is_some_and(|key| key.subject_public_key_info() == facts.public_key);
    if !key_matches {
        return Err(IssueReason::KeyMismatch);
    }
    // Renew within the margin, unless a new certificate would end no later (a user CA that
    // itself ends soon caps every certificate it signs: reissuing would change nothing).
    let renewal_end = now.saturating_add(renew_before);
    if renewal_end >= facts.not_after && ca.not_after > facts.not_after {
        return Err(IssueReason::Expiring {
            not_after: timestamp(facts.not_after),
        });
    }
    if facts.not_after <= now {
        return Err(IssueReason::Expiring {
            not_after: timestamp(facts.not_after),
        });
    }
    Ok(facts.not_after)
}

struct LeafFacts {
    not_after: i64,
    names: Names,
    public_key: Vec<u8>,
    signed_by_ca: bool,
}

/// The identity a certificate states, comparable regardless of order.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    common_name: Option<String>,
    dns: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
}

impl Names {
    fn of(identity: &Identity) -> Names {
        Names {
            common_name: Some(identity.common_name.clone()),
            dns: identity.dns_names.iter().cloned().collect(),
            ips: identity.ip_addresses.iter().copied().collect(),
        }
    }
}

fn names_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Names, String> {
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut dns = BTreeSet::new();
    let mut ips = BTreeSet::new();
    let sans = cert
        .subject_alternative_name()
        .map_err(|err| format!("subjectAltName: {err}"))?;
    for name in sans.iter().flat_map(|ext| ext.value.general_names.iter()) {
        match name {
            x509_parser::extensions::GeneralName::DNSName(name) => {
                dns.insert((*name).to_owned());
            }
            x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                    _ => None,
                };
                if let Some(ip) = ip {
                    ips.insert(ip);
                }
            }
            _ => {}
        }
    }
    Ok(Names {
        common_name,
        dns,
        ips,
    })
}

struct Leaf {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    not_after: i64,
}

fn issue_leaf(
    identity: &Identity,
    kind: LeafKind,
    ca: &Ca,
    now: i64,
    lifetimes: &Lifetimes,
) -> Result<Leaf, TlsError> {
    let key_pair = KeyPair::generate().map_err(TlsError::KeyGeneration)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&identity.common_name);
    for name in &identity.dns_names {
        let dns = name
            .as_str()
            .try_into()
            .map_err(|source| TlsError::BadName {
                name: name.clone(),
                source,
            })?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params.subject_alt_names.extend(
        identity
            .ip_addresses
            .iter()
            .map(|ip| SanType::IpAddress(*ip)),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match kind {
        LeafKind::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        LeafKind::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset_date_time(now - CLOCK_SKEW_SECONDS);
    // Never beyond the CA: a certificate cannot outlive its issuer.
    let end = now
        .saturating_add(seconds(lifetimes.cert_validity))
        .min(ca.not_after);
    params.not_after = offset_date_time(end);
    let certificate =
        params
            .signed_by(&key_pair, &ca.issuer)
            .map_err(|source| TlsError::Issue {
                subject: identity.common_name.clone(),
                source,
            })?;
    Ok(Leaf {
        cert_pem: certificate.pem().into_bytes(),
        key_pem: key_pair.serialize_pem().into_bytes(),
        not_after: end,
    })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "proglog");
    name.push(DnType::CommonName, common_name);
    name
}

/// Parses the first certificate of a PEM blob and reads from it with `read`.
fn parse<T>(
    pem: &[u8],
    read: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> Result<T, String>,
) -> Result<T, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|err| format!("not a PEM certificate: {err}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|err| format!("not an X.509 certificate: {err}"))?;
    read(&cert)
}

fn not_after(cert: &x509_parser::certificate::X509Certificate<'_>) -> i64 {
    cert.validity().not_after.timestamp()
}

fn append_pem(bundle: &mut Vec<u8>, pem: &[u8]) {
    if !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(pem);
}

/// Whole seconds of a duration, saturating.
fn seconds(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// Seconds since the epoch as a timestamp, clamped to what both time libraries hold.
pub(crate) fn timestamp(seconds: i64) -> Timestamp {
    let clamped = seconds.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    Timestamp::from_second(clamped).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Certificates use the UTC of `seconds`, clamped to the X.509 range (years 1950 to 9999).
fn offset_date_time(seconds: i64) -> time::OffsetDateTime {
    const YEAR_9999_END: i64 = 253_402_300_799;
    const YEAR_1950: i64 = -631_152_000;
    time::OffsetDateTime::from_unix_timestamp(seconds.clamp(YEAR_1950, YEAR_9999_END))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    const DAY: i64 = 86_400;
    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn lifetimes() -> Lifetimes {
        Lifetimes::from_spec(&crate::crd::TlsSpec::default()).unwrap()
    }

    fn node(name: &str, namespace: &str) -> Identity {
        Identity {
            common_name: name.to_owned(),
            dns_names: vec![
                format!("{name}.events-headless.{namespace}.svc.cluster.local"),
                "localhost".to_owned(),
            ],
            ip_addresses: vec![IpAddr::from([127, 0, 0, 1])],
        }
    }

    fn request<'a>(now: i64, nodes: &'a [Identity], previous: Option<&'a Pki>) -> PkiRequest<'a> {
        PkiRequest {
            now: timestamp(now),
            lifetimes: lifetimes(),
            ca: CaSource::Operator {
                existing: previous.and_then(|pki| pki.ca_secret.as_ref()),
                common_name: "proglog CA test",
            },
            nodes,
            existing_nodes: previous.map(|pki| &pki.nodes_secret),
            existing_operator: previous.map(|pki| &pki.operator_secret),
            loaded: None,
            running: None,
        }
    }

    fn subjects(pki: &Pki) -> Vec<(&str, &IssueReason)> {
        pki.issued
            .iter()
            .map(|issued| (issued.subject.as_str(), &issued.reason))
            .collect()
    }

    #[test]
    fn node_certificates_serve_and_call_with_their_names() {
        let nodes = [node("events-0", "prod")];
        let pki = plan(&request(T0, &nodes, None)).unwrap();
        let pem = &pki.nodes_secret["events-0.crt"].0;
        parse(pem, |cert| {
            let cn = cert.subject().iter_common_name().next().unwrap();
            assert_eq!(cn.as_str().unwrap(), "events-0");
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);
            let sans = &cert.subject_alternative_name().unwrap().unwrap().value;
            assert!(sans.general_names.contains(&GeneralName::DNSName(
                "events-0.events-headless.prod.svc.cluster.local"
            )));
            assert!(
                sans.general_names
                    .contains(&GeneralName::IPAddress(&[127, 0, 0, 1]))
            );
            assert!(!cert.is_ca());
            assert_eq!(not_after(cert), T0 + 90 * DAY);
            Ok(())
        })
        .unwrap();
        let operator = &pki.operator_secret[TLS_CERT].0;
        parse(operator, |cert| {
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && !eku.server_auth);
            Ok(())
        })
        .unwrap();
        parse(&pki.ca_secret.as_ref().unwrap()[CA_CERT].0, |cert| {
            assert!(cert.is_ca());
            assert_eq!(not_after(cert), T0 + 3650 * DAY);
            Ok(())
        })
        .unwrap();
        assert_eq!(pki.ca_not_after, timestamp(T0 + 3650 * DAY));
        assert_eq!(pki.certs_not_after, timestamp(T0 + 90 * DAY));
        assert_eq!(
            subjects(&pki),
            [
                ("proglog CA test", &IssueReason::Missing),
                ("events-0", &IssueReason::Missing),
                ("proglog-operator", &IssueReason::Missing),
            ]
        );
    }

    #[test]
    fn certificates_renew_exactly_renew_before_their_end() {
        let nodes = [node("events-0", "prod")];
        let first = plan(&request(T0, &nodes, None)).unwrap();
        // 90 days of validity, renewed 30 days before: kept until day 60, renewed at day 60.
        let kept = plan(&request(T0 + 60 * DAY - 1, &nodes, Some(&first))).unwrap();
        assert!(kept.issued.is_empty(), "{:?}", kept.issued);
        assert_eq!(kept.nodes_secret, first.nodes_secret);
        assert_eq!(kept.ca_secret, first.ca_secret);
        let renewed = plan(&request(T0 + 60 * DAY, &nodes, Some(&first))).unwrap();
        let expiring = IssueReason::Expiring {
            not_after: timestamp(T0 + 90 * DAY),
        };
        assert_eq!(
            subjects(&renewed),
            [("events-0", &expiring), ("proglog-operator", &expiring)]
        );
        assert_ne!(
            renewed.nodes_secret["events-0.crt"],
            first.nodes_secret["events-0.crt"]
        );
        assert_eq!(renewed.ca_secret, first.ca_secret, "the CA is kept");
        assert_eq!(renewed.certs_not_after, timestamp(T0 + 150 * DAY));
    }

    #[test]
    fn changed_names_new_nodes_and_foreign_keys_are_issued_again() {
        let nodes = [node("events-0", "prod")];
        let first = plan(&request(T0, &nodes, None)).unwrap();
        let moved = [node("events-0", "staging"), node("events-1", "staging")];
        let second = plan(&request(T0 + DAY, &moved, Some(&first))).unwrap();
        assert_eq!(
            subjects(&second),
            [
                ("events-0", &IssueReason::NamesChanged),
                ("events-1", &IssueReason::Missing)
            ]
        );
        let mut swapped = second.clone();
        let other_key = swapped.nodes_secret["events-1.key"].clone();
        swapped
            .nodes_secret
            .insert("events-0.key".to_owned(), other_key);
        let third = plan(&request(T0 + DAY, &moved, Some(&swapped))).unwrap();
        assert_eq!(subjects(&third), [("events-0", &IssueReason::KeyMismatch)]);
        let mut garbled = second.clone();
        garbled.nodes_secret.insert(
            "events-1.crt".to_owned(),
            ByteString(b"not a cert".to_vec()),
        );
        let fourth = plan(&request(T0 + DAY, &moved, Some(&garbled))).unwrap();
        assert!(matches!(
            fourth.issued[0].reason,
            IssueReason::Unreadable(_)
        ));
        // Nodes no longer asked for are dropped.
        let shrunk = plan(&request(T0 + DAY, &moved[..1], Some(&second))).unwrap();
        assert!(!shrunk.nodes_secret.contains_key("events-1.crt"));
    }

    /// What `names` report: the trust bundle of `trust` and their certificates of `certs`.
    fn reports(trust: &Pki, certs: &Pki, names: &[&str]) -> Vec<LoadedTls> {
        names
            .iter()
            .map(|name| LoadedTls {
                node: (*name).to_owned(),
                trust_bundle_sha256: sha256_hex(&trust.nodes_secret[CA_CERT].0),
                certificate_sha256: sha256_hex(&certs.nodes_secret[&format!("{name}.crt")].0),
            })
            .collect()
    }

    fn bundle_size(pki: &Pki) -> usize {
        String::from_utf8_lossy(&pki.nodes_secret[CA_CERT].0)
            .matches("BEGIN CERTIFICATE")
            .count()
    }

    #[test]
    fn a_replaced_ca_goes_out_in_steps_each_waiting_for_every_running_node() {
        let nodes = [node("events-0", "prod"), node("events-1", "prod")];
        let both = ["events-0", "events-1"].map(str::to_owned).to_vec();
        let ca_end = T0 + 3650 * DAY;
        let at = ca_end - 30 * DAY;
        // Certificates renewed the day before, from the old CA (capped at its end).
        let start = plan(&request(T0, &nodes, None)).unwrap();
        let first = plan(&request(at - DAY, &nodes, Some(&start))).unwrap();
        assert_eq!(first.rotation, Rotation::Steady);
        assert_eq!(first.issued.len(), 3, "{:?}", first.issued);

        // Step one: a new CA and a bundle trusting both; the certificates stay.
        let second = plan(&request(at, &nodes, Some(&first))).unwrap();
        assert_eq!(subjects(&second).len(), 1, "{:?}", second.issued);
        assert_eq!(second.issued[0].subject, "proglog CA test");
        assert_eq!(bundle_size(&second), 2);
        for key in ["events-0.crt", "events-1.crt"] {
            assert_eq!(second.nodes_secret[key], first.nodes_secret[key]);
        }
        assert_eq!(
            second.operator_secret[TLS_CERT],
            first.operator_secret[TLS_CERT]
        );
        assert_eq!(
            second.operator_secret[CA_CERT],
            second.nodes_secret[CA_CERT]
        );
        assert_eq!(
            second.rotation,
            Rotation::AwaitingTrust {
                nodes: both.clone()
            }
        );

        // Without reports nothing moves; with one node behind, nothing moves either.
        let mut asked = request(at + 60, &nodes, Some(&second));
        let unasked = plan(&asked).unwrap();
        assert_eq!(unasked.rotation, Rotation::NeedsReports);
        assert!(unasked.issued.is_empty());
        assert_eq!(unasked.nodes_secret, second.nodes_secret);
        let one = reports(&second, &second, &["events-0"]);
        asked.loaded = Some(&one);
        let waiting = plan(&asked).unwrap();
        assert_eq!(
            waiting.rotation,
            Rotation::AwaitingTrust {
                nodes: vec!["events-1".to_owned()]
            }
        );
        assert!(waiting.issued.is_empty());
        // A node whose pod does not run is not waited for: it reads the Secret when it starts.
        let running = ["events-0".to_owned()];
        asked.running = Some(&running);
        let without_it = plan(&asked).unwrap();
        assert_eq!(without_it.issued.len(), 3, "{:?}", without_it.issued);
        asked.running = None;

        // Step two: every node trusts the new CA, so certificates come from it now; the old CA
        // stays in the bundle, so what it signed keeps working.
        let all = reports(&second, &second, &["events-0", "events-1"]);
        asked.loaded = Some(&all);
        let third = plan(&asked).unwrap();
        assert_eq!(
            subjects(&third),
            [
                ("events-0", &IssueReason::IssuerChanged),
                ("events-1", &IssueReason::IssuerChanged),
                (OPERATOR_COMMON_NAME, &IssueReason::IssuerChanged),
            ]
        );
        assert_eq!(third.nodes_secret[CA_CERT], second.nodes_secret[CA_CERT]);
        assert_eq!(third.rotation, Rotation::Steady);

        // Done: no report is asked for again, and nothing changes until the old CA ends.
        let fourth = plan(&request(at + 180, &nodes, Some(&third))).unwrap();
        assert_eq!(fourth.rotation, Rotation::Steady);
        assert!(fourth.issued.is_empty(), "{:?}", fourth.issued);
        assert_eq!(fourth.nodes_secret, third.nodes_secret);
        let ended = plan(&request(ca_end + 1, &nodes, Some(&fourth))).unwrap();
        assert_eq!(bundle_size(&ended), 1);
        assert_eq!(ended.rotation, Rotation::Steady);
    }

    #[test]
    fn a_replacement_still_waiting_when_the_old_ca_nears_its_end_goes_ahead() {
        let nodes = [node("events-0", "prod"), node("events-1", "prod")];
        let ca_end = T0 + 3650 * DAY;
        let at = ca_end - 30 * DAY;
        let start = plan(&request(T0, &nodes, None)).unwrap();
        let first = plan(&request(at - DAY, &nodes, Some(&start))).unwrap();
        let second = plan(&request(at, &nodes, Some(&first))).unwrap();
        // events-1 never reports; 16 days before the old CA ends (renewBefore is 30 days),
        // the replacement still waits; 14 days before, it goes ahead.
        let one = reports(&second, &second, &["events-0"]);
        let mut asked = request(ca_end - 16 * DAY, &nodes, Some(&second));
        asked.loaded = Some(&one);
        assert!(matches!(
            plan(&asked).unwrap().rotation,
            Rotation::AwaitingTrust { .. }
        ));
        asked.now = timestamp(ca_end - 14 * DAY);
        let forced = plan(&asked).unwrap();
        assert_eq!(
            forced.rotation,
            Rotation::Forced {
                nodes: vec!["events-1".to_owned()]
            }
        );
        assert_eq!(forced.issued.len(), 3, "{:?}", forced.issued);
    }

    #[test]
    fn a_user_ca_signs_and_is_never_written() {
        let nodes = [node("events-0", "prod")];
        let generated = plan(&request(T0, &nodes, None)).unwrap();
        let ca = generated.ca_secret.unwrap();
        let user = SecretData::from([
            (TLS_CERT.to_owned(), ca[CA_CERT].clone()),
            (TLS_KEY.to_owned(), ca[CA_KEY].clone()),
        ]);
        let mut request = request(T0, &nodes, None);
        request.ca = CaSource::User {
            secret_name: "my-ca",
            data: &user,
        };
        let pki = plan(&request).unwrap();
        assert!(pki.ca_secret.is_none());
        assert_eq!(pki.nodes_secret[CA_CERT], ca[CA_CERT]);
        assert!(!pki.ca_expiring);

        // A leaf is not a CA.
        let leaf = SecretData::from([
            (
                TLS_CERT.to_owned(),
                generated.nodes_secret["events-0.crt"].clone(),
            ),
            (
                TLS_KEY.to_owned(),
                generated.nodes_secret["events-0.key"].clone(),
            ),
        ]);
        request.ca = CaSource::User {
            secret_name: "my-ca",
            data: &leaf,
        };
        let err = plan(&request).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
        let empty = SecretData::new();
        request.ca = CaSource::User {
            secret_name: "my-ca",
            data: &empty,
        };
        let err = plan(&request).unwrap_err();
        assert!(err.to_string().contains("tls.crt"), "{err}");
    }

    /// A user CA made by cert-manager or openssl: its key in PKCS#1 (RSA), SEC1 (EC, after an
    /// `EC PARAMETERS` block) or PKCS#8, all of which load and sign node certificates that
    /// chain to it.
    #[test]
    fn user_ca_keys_load_in_pkcs1_sec1_and_pkcs8() {
        let keys = [
            (
                include_str!("../tests/fixtures/keys/ca-rsa.pem"),
                include_str!("../tests/fixtures/keys/ca-rsa-pkcs1.key"),
            ),
            (
                include_str!("../tests/fixtures/keys/ca-ec.pem"),
                include_str!("../tests/fixtures/keys/ca-ec-sec1.key"),
            ),
            (
                include_str!("../tests/fixtures/keys/ca-ec.pem"),
                include_str!("../tests/fixtures/keys/ca-ec-pkcs8.key"),
            ),
        ];
        let nodes = [node("events-0", "prod")];
        for (cert, key) in keys {
            let user = SecretData::from([
                (TLS_CERT.to_owned(), ByteString(cert.as_bytes().to_vec())),
                (TLS_KEY.to_owned(), ByteString(key.as_bytes().to_vec())),
            ]);
            let mut request = request(T0, &nodes, None);
            request.ca = CaSource::User {
                secret_name: "my-ca",
                data: &user,
            };
            let pki = plan(&request).unwrap_or_else(|err| panic!("{err}\n{key}"));
            let leaf = &pki.nodes_secret["events-0.crt"].0;
            let ca_key = load_ca(cert.as_bytes(), key.as_bytes()).unwrap().public_key;
            let signed = parse(leaf, |leaf| signed_by(leaf, &ca_key)).unwrap();
            assert!(signed, "a node certificate not signed by the user CA");
        }
        // Something else is refused, naming what is accepted.
        let err = key_pair_from_pem(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n",
        )
        .err()
        .unwrap();
        assert!(err.contains("PKCS#1"), "{err}");
        // An encrypted key, and a curve ring cannot use, say so and what to give instead.
        let err = key_pair_from_pem(include_str!("../tests/fixtures/keys/encrypted-pkcs8.key"))
            .err()
            .unwrap();
        assert!(err.contains("encrypted"), "{err}");
        let err = key_pair_from_pem(include_str!("../tests/fixtures/keys/p521-sec1.key"))
            .err()
            .unwrap();
        assert!(err.contains("P-521") && err.contains("P-256"), "{err}");
    }

    #[test]
    fn lifetimes_that_cannot_work_are_refused() {
        let mut spec = crate::crd::TlsSpec::default();
        spec.renew_before = spec.cert_validity;
        let err = Lifetimes::from_spec(&spec).unwrap_err();
        assert!(err.to_string().contains("renewBefore"), "{err}");
        let mut spec = crate::crd::TlsSpec::default();
        spec.ca_validity = spec.cert_validity;
        assert!(Lifetimes::from_spec(&spec).is_err());
    }
}

//! `PeerIdentity`: who is on the other end of a TLS connection, as handlers and the ACL layer
//! see it (tonic puts it in every request's extensions).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// The peer of one TLS connection: its address and, under mutual TLS, its verified certificate
/// chain and the subject common name (CN) the ACL authorizes.
///
/// Computed once per connection (at the end of the handshake), so requests pay nothing to
/// read it.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    remote_addr: SocketAddr,
    certificates: Option<Arc<[CertificateDer<'static>]>>,
    common_name: Option<Arc<str>>,
}

impl PeerIdentity {
    /// The identity of a peer at `remote_addr` that presented `certificates` (end entity first),
    /// already verified by the TLS handshake.
    pub fn new(remote_addr: SocketAddr, certificates: Option<&[CertificateDer<'static>]>) -> Self {
        let certificates: Option<Arc<[CertificateDer<'static>]>> = certificates
            .filter(|chain| !chain.is_empty())
            .map(Arc::from);
        let common_name = certificates
            .as_deref()
            .and_then(|chain| chain.first())
            .and_then(|leaf| subject_common_name(leaf))
            .map(Arc::from);
        PeerIdentity {
            remote_addr,
            certificates,
            common_name,
        }
    }

    /// The peer's TCP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// The client's verified certificate chain, end entity first (`None` without mutual TLS).
    pub fn certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.certificates.as_deref()
    }

    /// The subject common name of the client's certificate: the ACL subject.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The identity tonic recorded for the connection a request came on (`None` on plaintext).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerIdentity> {
        request.extensions().get::<PeerIdentity>()
    }
}

/// The first subject CN of a DER certificate, if it parses and has a UTF-8 one.
pub fn subject_common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// The serial number of a DER certificate as colon-separated hex, for logs.
pub fn serial_number(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    Some(parsed.raw_serial_as_string())
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::security::test_pki::TestCa;

    #[test]
    fn common_name_and_serial_come_from_the_leaf() {
        let ca = TestCa::new();
        let issued = ca.issue("root", 0x2a);
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let ca_cert = CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap();
        let peer = PeerIdentity::new(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            Some(&[leaf, ca_cert]),
        );
        assert_eq!(peer.common_name(), Some("root"));
        assert_eq!(peer.certificates().map(<[_]>::len), Some(2));
        let serial = serial_number(&peer.certificates().unwrap()[0]).unwrap();
        assert_eq!(serial, "2a");

        let anonymous = PeerIdentity::new(SocketAddr::from(([127, 0, 0, 1], 9)), Some(&[]));
        assert!(anonymous.certificates().is_none() && anonymous.common_name().is_none());
    }
}

//! The certificate a TLS server presents to a new connection, read with a raw rustls client
//! (mutual TLS: the client presents its own certificate), for tests of certificate rotation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// What the client trusts and presents.
#[derive(Debug, Clone, Copy)]
pub struct ClientPem<'a> {
    /// The CA (PEM) the server's certificate must chain to.
    pub ca: &'a [u8],
    /// The client's certificate chain (PEM).
    pub cert: &'a [u8],
    /// The client's private key (PEM).
    pub key: &'a [u8],
}

/// Connects to `addr`, checks the server's certificate against `client.ca` for `server_name`
/// (a DNS name or an IP address), and returns the leaf certificate it presented. Fails after
/// `deadline`.
pub async fn served_certificate(
    addr: SocketAddr,
    server_name: &str,
    client: ClientPem<'_>,
    deadline: Duration,
) -> anyhow::Result<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(client.ca).context("read the CA")?)?;
    let chain = CertificateDer::pem_slice_iter(client.cert)
        .collect::<Result<Vec<_>, _>>()
        .context("read the client certificate")?;
    let key = PrivateKeyDer::from_pem_slice(client.key).context("read the client key")?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(server_name.to_owned())?;
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = connector.connect(server_name, tcp).await?;
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .context("the server presented no certificate")?;
        anyhow::Ok(served.clone().into_owned())
    };
    tokio::time::timeout(deadline, handshake)
        .await
        .with_context(|| format!("TLS handshake with {addr} took longer than {deadline:?}"))?
}

//! TLS for `wss://` upstreams (and the OAuth2 token endpoint): rustls with the system's root
//! certificates, or `tls.ca_file` instead of them (as curl's `--cacert`), an optional client
//! certificate for mTLS, and an optional `server_name` to verify instead of the URL's host.
//! Verification is never disabled: a certificate error fails the attempt with its reason.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::TlsConfig;

/// System roots, read once: reading them is slow and they do not change under a running daemon.
fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(format!(
                    "no usable system root certificates ({} errors)",
                    loaded.errors.len()
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// The client config for one connection attempt. Files are read each time, so rotated
/// certificates are picked up on the next connection.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match &tls.ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("tls.ca_file {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls.ca_file {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "tls.ca_file {}: no usable certificate",
                    path.display()
                ));
            }
            Arc::new(roots)
        }
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup: {e}"))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("tls.client_cert {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls.client_cert {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "tls.client_cert {}: no certificate",
                    cert.display()
                ));
            }
            // The key's parse error could quote key material: name the file only.
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|_| format!("tls.client_key {}: no usable private key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name to verify the server's certificate against.
pub fn server_name(tls: &TlsConfig, host: &str) -> Result<ServerName<'static>, String> {
    let name = tls.server_name.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_owned())
        .map_err(|e| format!("invalid TLS server name {name:?}: {e}"))
}

/// Wraps `stream` in TLS for `host`.
pub async fn connect<S>(
    tls: &TlsConfig,
    host: &str,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, TlsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let config = client_config(tls).map_err(TlsError::Setup)?;
    let name = server_name(tls, host).map_err(TlsError::Setup)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| TlsError::Handshake(e.to_string()))
}

/// Why TLS could not be set up or negotiated.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Local setup (files, names): retrying will not help until the config changes.
    #[error("{0}")]
    Setup(String),
    /// The handshake failed, e.g. an unknown issuer or a name mismatch.
    #[error("tls handshake: {0}")]
    Handshake(String),
}

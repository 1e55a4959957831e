//! A test PKI (a CA generated per test with rcgen) and a `wss://` upstream on 127.0.0.1 that
//! reports, per connection, whether the TLS and WebSocket handshakes succeeded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A CA and the files the daemon's `tls.*` keys point at.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    /// The CA certificate, for `tls.ca_file`.
    pub ca_file: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    /// A fresh CA.
    pub fn new() -> TestPki {
        let dir = super::temp_dir();
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write ca");
        TestPki { dir, ca_file, ca }
    }

    /// A leaf certificate for `names`, signed by the CA: (cert PEM path, key PEM path).
    pub fn leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (c, k) = (
            self.dir.path().join(format!("{stem}.pem")),
            self.dir.path().join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    /// A server config presenting a certificate for `names`; with `require_client`, clients
    /// must present a certificate signed by the CA (mTLS).
    pub fn server_config(&self, names: &[&str], require_client: bool) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.leaf("server", names);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .expect("read cert")
            .collect::<Result<_, _>>()
            .expect("parse cert");
        let key = PrivateKeyDer::from_pem_file(&key).expect("read key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if require_client {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&self.ca_file).expect("ca") {
                roots.add(c.expect("ca cert")).expect("add ca");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(builder.with_single_cert(chain, key).expect("server cert"))
    }
}

/// A `wss://` upstream: every connection's outcome arrives on `outcomes`; accepted ones get a
/// `hello` text frame and stay open.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub outcomes: mpsc::UnboundedReceiver<Result<(), String>>,
}

impl TlsUpstream {
    /// Serves on 127.0.0.1:0 with `config`.
    pub async fn start(config: Arc<rustls::ServerConfig>) -> TlsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, outcomes) = mpsc::unbounded_channel();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            let _ = tx.send(Err(format!("tls: {e}")));
                            return;
                        }
                    };
                    let mut ws = match tokio_tungstenite::accept_async(tls).await {
                        Ok(ws) => ws,
                        Err(e) => {
                            let _ = tx.send(Err(format!("ws: {e}")));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(()));
                    let _ = ws.send(Message::text("hello")).await;
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
        TlsUpstream { addr, outcomes }
    }

    /// `wss://HOST:PORT/` for a host name that resolves to loopback.
    pub fn url(&self, host: &str) -> String {
        format!("wss://{host}:{}/", self.addr.port())
    }

    /// The next connection's outcome, bounded in time.
    pub async fn next_outcome(&mut self) -> Result<(), String> {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.outcomes.recv())
            .await
            .expect("a connection in time")
            .expect("server running")
    }
}

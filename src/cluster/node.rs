//! This daemon's place in the fleet: one NATS connection shared by every clustered endpoint,
//! the lease bucket, and the settings from `[cluster]`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::OnceCell;

use super::interest::{Interest, InterestError};
use super::lease::{LeaseError, Leases};
use super::stream::Retention;
use crate::config::ClusterConfig;

/// The fleet connection. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// What this daemon last heard of its NATS connection.
#[derive(Clone, Debug, Default)]
pub struct Link {
    /// Connected to a server now.
    pub connected: bool,
    /// The client's or server's last error (`authorization violation`, an IO error), cleared
    /// on connecting.
    pub error: Option<String>,
}

struct Inner {
    cfg: ClusterConfig,
    link: tokio::sync::watch::Sender<Link>,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Opened on first use: the server may not be reachable when the daemon starts.
    leases: OnceCell<Leases>,
    /// Opened on first use, like `leases`.
    interest: OnceCell<Interest>,
}

/// Why the NATS client could not even be set up (bad credentials source, unreadable TLS
/// file); a server that is down is not an error, the client keeps trying.
#[derive(Debug, thiserror::Error)]
#[error("cluster: {0}")]
pub struct NodeError(String);

impl Node {
    /// Sets up the client for `cfg`; returns at once and connects in the background, so a
    /// NATS server that is down delays clustered endpoints, not the daemon's start.
    ///
    /// # Errors
    /// A secret reference that cannot be resolved, or options the client refuses.
    pub async fn connect(cfg: &ClusterConfig) -> Result<Node, NodeError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("ws-sidecar {}", cfg.name))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .require_tls(cfg.require_tls);
        if let Some((user, password)) = &cfg.user {
            let password = password
                .resolve()
                .await
                .map_err(|e| NodeError(format!("password: {e}")))?;
            options = options.user_and_password(user.clone(), password.expose().to_string());
        }
        if let Some(token) = &cfg.token {
            let token = token
                .resolve()
                .await
                .map_err(|e| NodeError(format!("token: {e}")))?;
            options = options.token(token.expose().to_string());
        }
        if let Some(ca) = &cfg.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &cfg.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let link = tokio::sync::watch::Sender::new(Link::default());
        let events = link.clone();
        options = options.event_callback(move |event| {
            let events = events.clone();
            async move { on_event(&events, event) }
        });
        let client = options
            .connect(cfg.servers.as_slice())
            .await
            .map_err(|e| NodeError(e.to_string()))?;
        let js = jetstream::new(client.clone());
        Ok(Node {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                link,
                client,
                js,
                leases: OnceCell::new(),
                interest: OnceCell::new(),
            }),
        })
    }

    /// This daemon's name in the fleet (`cluster.name`), the lease holder it writes.
    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    /// The NATS client (core NATS: requests between hosts).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The connection's state as it changes.
    pub fn link(&self) -> tokio::sync::watch::Receiver<Link> {
        self.inner.link.subscribe()
    }

    /// Why NATS is not answering, for a status line: the servers and the last error heard,
    /// e.g. `nats://nats-1:4222: authorization violation`.
    pub fn trouble(&self) -> String {
        let servers = self.inner.cfg.servers.join(", ");
        let link = self.inner.link.borrow();
        match (&link.error, link.connected) {
            (Some(e), _) => format!("{servers}: {e}"),
            (None, false) => format!("{servers}: not reachable"),
            (None, true) => servers,
        }
    }

    /// The JetStream context.
    pub fn js(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// Whether the client is connected to a server now.
    pub fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The lease bucket, opened (or created with `cluster.lease_ttl`) on first success.
    ///
    /// # Errors
    /// [`LeaseError`]: the server did not answer, or the bucket has another TTL.
    pub async fn leases(&self) -> Result<&Leases, LeaseError> {
        self.inner
            .leases
            .get_or_try_init(|| {
                Leases::open_with(
                    &self.inner.js,
                    self.inner.cfg.lease_ttl,
                    self.inner.cfg.replicas,
                )
            })
            .await
    }

    /// The bucket of the fleet's held keys, opened (or created with `cluster.lease_ttl`) on
    /// first success.
    ///
    /// # Errors
    /// [`InterestError`]: the server did not answer, or the bucket has another TTL.
    pub async fn interest(&self) -> Result<&Interest, InterestError> {
        self.inner
            .interest
            .get_or_try_init(|| {
                Interest::open(
                    &self.inner.js,
                    self.inner.cfg.lease_ttl,
                    self.inner.cfg.replicas,
                )
            })
            .await
    }

    /// What every endpoint stream keeps, from `[cluster.retention]` and `cluster.replicas`.
    pub fn retention(&self) -> Retention {
        let r = &self.inner.cfg.retention;
        Retention {
            max_messages: r.max_messages,
            max_bytes: r.max_bytes,
            max_age: r.max_age,
            duplicate_window: r.duplicate_window,
            replicas: self.inner.cfg.replicas,
        }
    }

    /// How long a lease lasts without renewal.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.cfg.lease_ttl
    }
}

/// Records a client event; logs what an operator needs (the client's own logging of events is
/// replaced by this callback).
fn on_event(link: &tokio::sync::watch::Sender<Link>, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => {
            tracing::info!("connected to NATS");
            link.send_modify(|l| {
                l.connected = true;
                l.error = None;
            });
        }
        Event::Disconnected | Event::Closed => {
            tracing::warn!("disconnected from NATS; reconnecting");
            link.send_modify(|l| l.connected = false);
        }
        Event::ServerError(e) => {
            tracing::warn!(error = %e, "NATS server error");
            link.send_modify(|l| l.error = Some(e.to_string()));
        }
        Event::ClientError(e) => {
            tracing::warn!(error = %e, "NATS client error");
            link.send_modify(|l| l.error = Some(e.to_string()));
        }
        other => tracing::info!(event = %other, "NATS"),
    }
}

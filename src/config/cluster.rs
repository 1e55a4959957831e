//! `[cluster]`: the NATS JetStream that endpoints with `cluster = true` share across a fleet
//! of daemons (issue 17, `docs/cluster.md`).

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

/// `[cluster]`: how this daemon reaches the fleet's NATS JetStream, and what the per-endpoint
/// streams keep. Absent: no endpoint may set `cluster = true`, and no NATS client runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// `nats`: the servers, `nats://host:port` or `tls://host:port` (a string or a list); the
    /// client tries them in order and reconnects to any.
    pub servers: Vec<String>,
    /// `name`: this daemon's name in the fleet, stored as the lease holder and shown in status;
    /// default `<host name>-<pid>`. Names are for people: the lease revision is the fence.
    pub name: String,
    /// `user` and `password` (a secret reference).
    pub user: Option<(String, Secret)>,
    /// `token` (a secret reference).
    pub token: Option<Secret>,
    /// `tls_ca`: a PEM file of CAs to verify the servers with (otherwise the system roots).
    pub tls_ca: Option<PathBuf>,
    /// `tls_cert` and `tls_key`: a client certificate and its key, PEM (mutual TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// `require_tls`: refuse a server that does not upgrade to TLS (implied by `tls://`).
    pub require_tls: bool,
    /// `lease_ttl`: how long a leader's lease lasts without a renewal (renewed every third of
    /// it); a failover takes about this long plus one upstream connect. At least 1 s.
    pub lease_ttl: Duration,
    /// `replicas`: copies JetStream keeps of every stream and of the lease bucket (1, 3 or 5);
    /// the guarantees of README "Running a fleet" need 3.
    pub replicas: usize,
    /// `[cluster.retention]`: what each endpoint's stream keeps, i.e. how far back a
    /// `from_seq` reaches across the fleet.
    pub retention: ClusterRetention,
}

/// `[cluster.retention]`: each endpoint stream's limits; the oldest messages go first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRetention {
    /// `max_messages`; `None`: no count limit.
    pub max_messages: Option<u64>,
    /// `max_bytes`; `None`: no size limit.
    pub max_bytes: Option<u64>,
    /// `max_age`; `None`: no age limit.
    pub max_age: Option<Duration>,
    /// `duplicate_window`: how long the server remembers message ids to drop a retried append
    /// (JetStream's default, 2 minutes).
    pub duplicate_window: Duration,
}

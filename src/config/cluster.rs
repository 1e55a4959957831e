//! `[cluster]`: the NATS JetStream that endpoints with `cluster = true` share across a fleet
//! of daemons (issue 17, `docs/cluster.md`).

use std::path::PathBuf;
use std::time::Duration;

use config::{Value, ValueKind};

use super::handshake::read_secret;
use super::load::{at_least, non_empty, size_at_least};
use super::summary::secret_source;
use super::units::{format_duration, format_size};
use super::value::{boolean, duration, integer, kind_name, string, Node, Report, Table};
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

/// `lease_ttl` when not written.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The delete markers that end a lease (the bucket's `max_age`) take no shorter age.
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// A failover takes about a lease: longer would leave a fleet without its feed for that long.
const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
/// JetStream's own default duplicate window.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The server refuses shorter duplicate windows, and so stream ages shorter than one.
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest `name`: it is stored as the lease holder and shown in every status.
const MAX_NAME: usize = 64;

/// Reads `[cluster]`; `None` when it is unusable (every reason already reported).
pub(super) fn read_cluster(r: &mut Report, node: &Node<'_>) -> Option<ClusterConfig> {
    let mut t = Table::open(r, node)?;
    let servers = t.need(r, "nats").map(|n| read_servers(r, &n));
    let name = t.or(r, "name", name, default_name());
    let user = t.opt(r, "user", non_empty);
    let password = t.get("password").and_then(|n| read_secret(r, &n));
    let token = t.get("token").and_then(|n| read_secret(r, &n));
    if t.has("user") != t.has("password") {
        let (missing, given) = if t.has("user") {
            ("password", "user")
        } else {
            ("user", "password")
        };
        r.at(&t.path_of(missing), together(given));
    }
    if t.has("token") && t.has("user") {
        r.at(
            &t.path_of("token"),
            "set either user and password, or token, not both",
        );
    }
    let path = |v: &Value| non_empty(v).map(PathBuf::from);
    let tls_ca = t.opt(r, "tls_ca", path);
    let tls_cert = t.opt(r, "tls_cert", path);
    let tls_key = t.opt(r, "tls_key", path);
    if t.has("tls_cert") != t.has("tls_key") {
        let (missing, given) = if t.has("tls_cert") {
            ("tls_key", "tls_cert")
        } else {
            ("tls_cert", "tls_key")
        };
        r.at(&t.path_of(missing), together(given));
    }
    let require_tls = t.or(r, "require_tls", boolean, false);
    let lease_ttl = t.or(r, "lease_ttl", lease_ttl, DEFAULT_LEASE_TTL);
    let replicas = t.or(r, "replicas", replicas, 1);
    let retention = t.get("retention").map_or(
        Some(ClusterRetention {
            max_messages: None,
            max_bytes: None,
            max_age: None,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
        }),
        |n| read_retention(r, &n),
    );
    t.finish(r);
    let servers = servers.filter(|s| !s.is_empty())?;
    let require_tls = require_tls || servers.iter().any(|s| s.starts_with("tls://"));
    Some(ClusterConfig {
        servers,
        name,
        user: user.zip(password),
        token,
        tls_ca,
        tls_client: tls_cert.zip(tls_key),
        require_tls,
        lease_ttl,
        replicas,
        retention: retention?,
    })
}

/// Reports `endpoints.NAME.cluster = true` in a file without `[cluster]`; `endpoint` is the
/// endpoint's table, read by `read_endpoint` (which takes the value itself).
pub(super) fn check_endpoint(r: &mut Report, endpoint: &Node<'_>, has_section: bool) {
    let ValueKind::Table(map) = &endpoint.value.kind else {
        return;
    };
    let Some(value) = map.get("cluster") else {
        return;
    };
    if !has_section && boolean(value) == Ok(true) {
        r.at(
            &endpoint.child("cluster", value),
            "needs a [cluster] section: the NATS servers the endpoint is shared through",
        );
    }
}

/// The error at the missing half of a pair of keys.
fn together(given: &str) -> String {
    format!("required key is missing: {given} is set, and the two go together")
}

/// `nats`: one URL, several separated by commas (as `NATS_URL` writes them, and the only way
/// to give more than one from the environment), or a list. Every URL is checked; the
/// servers come back in the order written, empty when none was usable.
fn read_servers(r: &mut Report, node: &Node<'_>) -> Vec<String> {
    match &node.value.kind {
        ValueKind::String(s) if s.trim().is_empty() => {
            r.at(node, "must name at least one server");
            Vec::new()
        }
        ValueKind::String(s) => s
            .split(',')
            .map(str::trim)
            .enumerate()
            .filter_map(|(i, url)| {
                nats_url(url)
                    .map_err(|e| {
                        let which = if s.contains(',') {
                            format!("server {}: ", i + 1)
                        } else {
                            String::new()
                        };
                        r.at(node, format!("{which}{e}"));
                    })
                    .ok()
            })
            .collect(),
        ValueKind::Array(items) => {
            if items.is_empty() {
                r.at(node, "must name at least one server");
            }
            node.list(r, |v| nats_url(&string(v)?))
        }
        other => {
            r.at(
                node,
                format!(
                    "expected a URL or a list of them, found {}",
                    kind_name(other)
                ),
            );
            Vec::new()
        }
    }
}

/// A `nats://host:port` or `tls://host:port` URL, normalised (`nats://h:4222`). Nothing it
/// says shows a credential written in the URL.
fn nats_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("invalid URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        // A bare `nats://secret@host` is token auth, so the user part is hidden too.
        let port = url.port().map_or(String::new(), |p| format!(":{p}"));
        let host = url.host_str().unwrap_or_default();
        return Err(format!(
            "{}://***@{host}{port}: credentials are not written in the URL: use user and \
             password, or token (secret references such as {{ env = \"VAR\" }})",
            url.scheme()
        ));
    }
    match url.scheme() {
        "nats" | "tls" => {}
        "ws" | "wss" => {
            return Err(format!(
                "NATS over WebSocket ({}://) is not supported: use nats:// or tls://",
                url.scheme()
            ))
        }
        other => return Err(format!("URL scheme must be nats or tls, not {other:?}")),
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("URL has no host")?;
    let port = url
        .port()
        .ok_or_else(|| format!("URL has no port: write {}://{host}:4222", url.scheme()))?;
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err("a NATS server URL has only a host and a port".into());
    }
    Ok(format!("{}://{host}:{port}", url.scheme()))
}

/// `name`: letters, digits, `_`, `.` and `-`, at most [`MAX_NAME`] characters.
fn name(v: &Value) -> Result<String, String> {
    let name = string(v)?;
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if !name.chars().all(allowed_in_name) {
        return Err("invalid name: use letters, digits, '_', '.' and '-'".into());
    }
    if name.chars().count() > MAX_NAME {
        return Err(format!("must be at most {MAX_NAME} characters"));
    }
    Ok(name)
}

fn allowed_in_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// `<host name>-<pid>`: unique on the host, and readable in a fleet's status.
fn default_name() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    fleet_name(&host, std::process::id())
}

/// `host` with characters a name cannot hold as `-`, cut so that `-<pid>` still fits.
fn fleet_name(host: &str, pid: u32) -> String {
    let pid = format!("-{pid}");
    let host: String = host
        .chars()
        .map(|c| if allowed_in_name(c) { c } else { '-' })
        .take(MAX_NAME - pid.len())
        .collect();
    let host = if host.is_empty() { "host".into() } else { host };
    format!("{host}{pid}")
}

fn lease_ttl(v: &Value) -> Result<Duration, String> {
    let d = duration(v)?;
    if d < MIN_LEASE_TTL {
        return Err(format!(
            "must be at least {}: the delete markers that end a lease in JetStream need that",
            format_duration(MIN_LEASE_TTL)
        ));
    }
    if d > MAX_LEASE_TTL {
        return Err(format!(
            "must be at most {}: a failover takes about this long",
            format_duration(MAX_LEASE_TTL)
        ));
    }
    Ok(d)
}

fn replicas(v: &Value) -> Result<usize, String> {
    match integer(v)? {
        n @ (1 | 3 | 5) => Ok(n),
        n => Err(format!(
            "must be 1, 3 or 5, not {n}: a JetStream stream keeps up to 5 copies, and an even \
             number survives no more failures than one fewer"
        )),
    }
}

fn read_retention(r: &mut Report, node: &Node<'_>) -> Option<ClusterRetention> {
    let mut t = Table::open(r, node)?;
    let max_messages = t.opt(r, "max_messages", at_least(1u64));
    let max_bytes = t.opt(r, "max_bytes", |v| {
        size_at_least(1)(v)
            .and_then(|n| u64::try_from(n).map_err(|_| format!("{n} is out of range")))
    });
    let max_age = t.opt(r, "max_age", |v| {
        at_least_window(v, "the duplicate window (at least 1s) cannot be longer")
    });
    let written = t.opt(r, "duplicate_window", |v| {
        at_least_window(
            v,
            "a retry after a lost acknowledgement must still find the id",
        )
    });
    // Unwritten, the window is JetStream's default shortened to max_age, as the server does.
    let duplicate_window = written.unwrap_or_else(|| {
        max_age.map_or(DEFAULT_DUPLICATE_WINDOW, |age| {
            age.min(DEFAULT_DUPLICATE_WINDOW)
        })
    });
    if let (Some(window), Some(age)) = (written, max_age) {
        if window > age {
            r.at(
                &t.path_of("duplicate_window"),
                format!(
                    "must not be longer than retention.max_age ({}): JetStream refuses a \
                     duplicate window longer than the messages it keeps",
                    format_duration(age)
                ),
            );
        }
    }
    t.finish(r);
    Some(ClusterRetention {
        max_messages,
        max_bytes,
        max_age,
        duplicate_window,
    })
}

/// A duration of at least [`MIN_WINDOW`]; `why` says why.
fn at_least_window(v: &Value, why: &str) -> Result<Duration, String> {
    let d = duration(v)?;
    if d < MIN_WINDOW {
        return Err(format!(
            "must be at least {}: {why}",
            format_duration(MIN_WINDOW)
        ));
    }
    Ok(d)
}

/// `[cluster]`: servers, this daemon's name, the auth kind (where a secret comes from, never
/// the secret), TLS files, lease and what the streams keep.
pub(super) fn summary(out: &mut Vec<String>, c: &ClusterConfig) {
    let tls = if c.require_tls { ", TLS required" } else { "" };
    out.push(format!("cluster   {}{tls}", c.servers.join(", ")));
    let mut line = |text: String| out.push(format!("          {text}"));
    line(format!(
        "name {}, lease ttl {}, {} replica{}",
        c.name,
        format_duration(c.lease_ttl),
        c.replicas,
        if c.replicas == 1 { "" } else { "s" }
    ));
    let auth = match (&c.user, &c.token) {
        (Some((user, password)), _) => {
            format!("auth user {user}, password {}", secret_source(password))
        }
        (None, Some(token)) => format!("auth token {}", secret_source(token)),
        (None, None) => "auth none".into(),
    };
    line(auth);
    let mut tls_parts = Vec::new();
    if let Some(ca) = &c.tls_ca {
        tls_parts.push(format!("ca {}", ca.display()));
    }
    if let Some((cert, key)) = &c.tls_client {
        tls_parts.push(format!(
            "client cert {}, key {}",
            cert.display(),
            key.display()
        ));
    }
    if !tls_parts.is_empty() {
        line(format!("tls {}", tls_parts.join(", ")));
    }
    let ret = &c.retention;
    let mut limits = Vec::new();
    if let Some(n) = ret.max_messages {
        limits.push(format!("{n} messages"));
    }
    if let Some(n) = ret.max_bytes {
        limits.push(usize::try_from(n).map_or(format!("{n}B"), format_size));
    }
    if let Some(age) = ret.max_age {
        limits.push(format!("{} old", format_duration(age)));
    }
    let limits = if limits.is_empty() {
        "no limits".to_owned()
    } else {
        format!("at most {}", limits.join(" / "))
    };
    line(format!(
        "retention {limits}, duplicate window {}",
        format_duration(ret.duplicate_window)
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_becomes_a_valid_fleet_name() {
        assert_eq!(fleet_name("web-1.eu", 42), "web-1.eu-42");
        assert_eq!(fleet_name("my host/ü", 7), "my-host---7");
        assert_eq!(fleet_name("", 7), "host-7");
        let long = fleet_name(&"h".repeat(100), 4_194_304);
        assert_eq!(long.len(), MAX_NAME);
        assert!(long.ends_with("h-4194304"), "{long}");
        assert!(name(&Value::new(None, long.as_str())).is_ok());
    }
}

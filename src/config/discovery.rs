//! `endpoints.NAME.url` as a table: how the WebSocket URL is discovered before every connection
//! attempt (Slack's `apps.connections.open`, Discord's `/gateway/bot`, a SignalR negotiate
//! behind a helper program), instead of being written in the file.

use config::{Value, ValueKind};

use super::endpoint::{parse_url, pointer as json_pointer, token as header_name};
use super::handshake::read_secret;
use super::load::non_empty;
use super::template::{template, Allowed};
use super::value::{kind_name, string, Node, Report, Table};
use crate::redact::redact_url;
use crate::secret::Secret;

/// `endpoints.NAME.url`: a fixed URL, or how to find one for every connection attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum UrlSource {
    Fixed(url::Url),
    /// Asked for before every attempt and used once: discovered URLs often carry a single-use
    /// ticket, so they are secrets and never reused for a reconnect.
    Discover(Discovery),
}

/// Where a discovered URL comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// `{ command = ["prog", "arg"] }`: its stdout, trimmed.
    Command(Vec<String>),
    /// `{ post = "https://…" }` or `{ get = "https://…" }`: a JSON answer.
    Http(Box<HttpDiscovery>),
}

/// The HTTP method of a discovery request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryMethod {
    Get,
    Post,
}

/// An HTTP discovery request and how its JSON answer is read.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpDiscovery {
    pub method: DiscoveryMethod,
    /// `http://` or `https://`; the endpoint's `proxy` and `tls` (but `server_name`) apply.
    pub url: url::Url,
    /// Extra request headers, sorted by name; values are secrets.
    pub headers: Vec<(String, Secret)>,
    /// The credential of the request (e.g. Slack's app-level token), put in `header` as
    /// `format` says.
    pub token: Option<Secret>,
    /// Header carrying `token` (default `Authorization`).
    pub header: String,
    /// How `token` is written into `header` (default `Bearer {{token}}`).
    pub format: String,
    /// Where the URL is in the answer (default `/url`).
    pub pointer: String,
    /// Where an answer without a URL names its error (e.g. Slack's `/error`), to show it.
    pub error_pointer: Option<String>,
    /// Errors at `error_pointer` that mean the credential was refused: they count as auth
    /// failures (as HTTP 401 and 403 do), so `auth.max_failures` applies.
    pub auth_errors: Vec<String>,
}

impl UrlSource {
    /// The fixed URL, if this is one.
    pub fn fixed(&self) -> Option<&url::Url> {
        match self {
            UrlSource::Fixed(u) => Some(u),
            UrlSource::Discover(_) => None,
        }
    }

    /// How the source may be shown in status, logs and `check-config`: a fixed URL redacted,
    /// a discovery by where it asks (the program, or the method and redacted request URL).
    pub fn shown(&self) -> String {
        match self {
            UrlSource::Fixed(u) => redact_url(u),
            UrlSource::Discover(Discovery::Command(argv)) => {
                // Arguments may hold a secret of their own: only the program.
                format!(
                    "(discovered by command {})",
                    argv.first().map_or("?", String::as_str)
                )
            }
            UrlSource::Discover(Discovery::Http(h)) => {
                format!(
                    "(discovered by {} {})",
                    h.method.as_str(),
                    redact_url(&h.url)
                )
            }
        }
    }
}

impl DiscoveryMethod {
    /// The method as written on the wire and in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryMethod::Get => "GET",
            DiscoveryMethod::Post => "POST",
        }
    }
}

/// Headers an HTTP/1.1 client writes itself.
const REQUEST_HEADERS: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
];

/// `url`: a string (`ws://` or `wss://`, checked by `ws_url`) or a discovery table.
pub(super) fn read_url(
    r: &mut Report,
    node: &Node<'_>,
    ws_url: impl Fn(&Value) -> Result<url::Url, String>,
) -> Option<UrlSource> {
    match &node.value.kind {
        ValueKind::Table(_) => read_discovery(r, node).map(UrlSource::Discover),
        ValueKind::String(_) => node.to(r, ws_url).map(UrlSource::Fixed),
        other => {
            r.at(
                node,
                format!(
                    "expected a ws:// or wss:// URL, or a table {{ command = [...] }}, \
                     {{ post = \"https://…\" }} or {{ get = \"https://…\" }}; found {}",
                    kind_name(other)
                ),
            );
            None
        }
    }
}

fn read_discovery(r: &mut Report, node: &Node<'_>) -> Option<Discovery> {
    let mut t = Table::open(r, node)?;
    let given = ["command", "post", "get"]
        .into_iter()
        .filter(|k| t.has(k))
        .count();
    // The keys of the other form are left unread, so `finish` reports them as unknown.
    let found = if t.has("command") {
        read_command(r, &mut t).map(Discovery::Command)
    } else {
        read_http(r, &mut t).map(|h| Discovery::Http(Box::new(h)))
    };
    t.finish(r);
    if given != 1 {
        r.at(
            node,
            "a discovered URL takes exactly one of command, post or get",
        );
        return None;
    }
    found
}

fn read_command(r: &mut Report, t: &mut Table<'_>) -> Option<Vec<String>> {
    let n = t.get("command")?;
    let argv = n.list(r, string);
    if !matches!(&n.value.kind, ValueKind::Array(_)) {
        return None;
    }
    if argv.is_empty() {
        r.at(&n, "must not be empty");
        return None;
    }
    if argv.first().is_some_and(String::is_empty) {
        r.at(&n, "program name must not be empty");
        return None;
    }
    Some(argv)
}

fn read_http(r: &mut Report, t: &mut Table<'_>) -> Option<HttpDiscovery> {
    let post = t.opt(r, "post", http_url);
    let get = t.opt(r, "get", http_url);
    let (method, url) = match (post, get) {
        (Some(u), _) => (DiscoveryMethod::Post, Some(u)),
        (None, Some(u)) => (DiscoveryMethod::Get, Some(u)),
        (None, None) => (DiscoveryMethod::Post, None),
    };
    let headers = t
        .get("headers")
        .map(|n| read_request_headers(r, &n))
        .unwrap_or_default();
    let token = t.get("token").and_then(|n| read_secret(r, &n));
    let header = t.opt(r, "header", header_name);
    let format = t.opt(r, "format", |v| {
        let f = template(Allowed::HEADER)(v)?;
        if !f.contains("{{token}}") {
            return Err("must contain {{token}}".into());
        }
        if f.contains(['\r', '\n', '\0']) {
            return Err("must not contain CR, LF or NUL".into());
        }
        Ok(f)
    });
    if token.is_none() {
        for (key, set) in [("header", header.is_some()), ("format", format.is_some())] {
            if set {
                r.at(&t.path_of(key), "only used with token, which is not set");
            }
        }
    }
    let header = header.unwrap_or_else(|| "Authorization".into());
    if token.is_some() && headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(&header)) {
        r.at(
            &t.path_of("headers"),
            format!("{header} is set by token; set it in one place"),
        );
    }
    let pointer = t.or(r, "pointer", json_pointer, "/url".into());
    let error_pointer = t.opt(r, "error_pointer", json_pointer);
    let auth_errors = t
        .get("auth_errors")
        .map(|n| n.list(r, non_empty))
        .unwrap_or_default();
    if error_pointer.is_none() && !auth_errors.is_empty() {
        r.at(
            &t.path_of("auth_errors"),
            "only used with error_pointer, which is not set",
        );
    }
    Some(HttpDiscovery {
        method,
        url: url?,
        headers,
        token,
        header,
        format: format.unwrap_or_else(|| "Bearer {{token}}".into()),
        pointer,
        error_pointer,
        auth_errors,
    })
}

/// The discovery request's URL: `https://` or `http://`, shown redacted in errors.
fn http_url(v: &Value) -> Result<url::Url, String> {
    let url = parse_url(v)?;
    match url.scheme() {
        "https" | "http" => {}
        other => {
            return Err(format!(
                "discovery URL scheme must be https or http, not {other:?}"
            ))
        }
    }
    if url.fragment().is_some() {
        return Err(format!(
            "{}: a request URL cannot have a #fragment",
            redact_url(&url)
        ));
    }
    Ok(url)
}

/// Request header names sorted (the `config` crate does not keep file order); values are secrets.
fn read_request_headers(r: &mut Report, node: &Node<'_>) -> Vec<(String, Secret)> {
    let Some(mut t) = Table::open(r, node) else {
        return Vec::new();
    };
    let mut headers: Vec<(String, Secret)> = Vec::new();
    for (name, node) in t.entries() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            r.at(&node, "invalid header name");
        } else if REQUEST_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            r.at(&node, "set by the HTTP client itself");
        } else if headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(&name)) {
            r.at(&node, "duplicate header (names are case-insensitive)");
        }
        let Some(secret) = read_secret(r, &node) else {
            continue;
        };
        if let Secret::Plain(value) = &secret {
            if value.contains(['\r', '\n', '\0']) {
                r.at(&node, "header value must not contain CR, LF or NUL");
            }
        }
        headers.push((name, secret));
    }
    t.finish(r);
    headers
}

/// What the discovery request is sent with, for `check-config`'s summary: where the secrets
/// come from, never their values.
pub(super) fn summary(d: &Discovery, secret_source: impl Fn(&Secret) -> String) -> String {
    match d {
        Discovery::Command(argv) => format!(
            "stdout of command {} (run before every attempt)",
            argv.first().map_or("?", String::as_str)
        ),
        Discovery::Http(h) => {
            let mut text = format!("{} {}", h.method.as_str(), redact_url(&h.url));
            if let Some(token) = &h.token {
                text.push_str(&format!(
                    ", token {} as {}: {}",
                    secret_source(token),
                    h.header,
                    h.format
                ));
            }
            for (name, value) in &h.headers {
                text.push_str(&format!(", header {name} ({})", secret_source(value)));
            }
            text.push_str(&format!(", URL at {}", h.pointer));
            if let Some(p) = &h.error_pointer {
                text.push_str(&format!(", error at {p}"));
            }
            if !h.auth_errors.is_empty() {
                text.push_str(&format!(" (auth: {})", h.auth_errors.join(", ")));
            }
            text.push_str(" (before every attempt)");
            text
        }
    }
}

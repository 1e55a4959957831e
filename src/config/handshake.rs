//! What an endpoint adds to its handshake request, all of which may hold a secret: extra
//! `headers`, `auth` (token, placement, renewal) and the secret references both use.

use config::{Value, ValueKind};

use super::endpoint::{parse_url, secs, token};
use super::load::{at_least, non_empty, one_of, positive};
use super::template::{literal, template, Allowed};
use super::value::{duration, kind_name, string, Node, Report, Table};
use super::{AuthConfig, AuthPlacement, RenewMode, TokenSource};
use crate::secret::Secret;

/// Headers the WebSocket handshake writes itself; a second copy would break the upgrade.
const HANDSHAKE_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
];

/// Header names sorted (the `config` crate does not keep file order); values are secrets.
pub(super) fn read_headers(
    r: &mut Report,
    node: &Node<'_>,
    auth_header: Option<&str>,
) -> Vec<(String, Secret)> {
    let Some(mut t) = Table::open(r, node) else {
        return Vec::new();
    };
    let mut headers: Vec<(String, Secret)> = Vec::new();
    for (name, node) in t.entries() {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            r.at(&node, "invalid header name");
        } else if lower == "sec-websocket-protocol" {
            r.at(
                &node,
                "set by the handshake from `subprotocols`; use that instead",
            );
        } else if HANDSHAKE_HEADERS.contains(&lower.as_str()) {
            r.at(&node, "set by the WebSocket handshake itself");
        } else if headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(&name)) {
            r.at(&node, "duplicate header (names are case-insensitive)");
        } else if auth_header.is_some_and(|a| a.eq_ignore_ascii_case(&name)) {
            r.at(&node, "conflicts with auth.header, which sets this header");
        }
        let Some(secret) = read_secret(r, &node) else {
            continue;
        };
        if let Secret::Plain(value) = &secret {
            if value.contains(['\r', '\n', '\0']) {
                r.at(&node, "header value must not contain CR, LF or NUL");
            }
            if let Err(e) = literal(value, "a credential header is auth.header with auth.format") {
                r.at(&node, e);
            }
        }
        headers.push((name, secret));
    }
    t.finish(r);
    headers
}

/// A secret reference: a plain string, `{ env }`, `{ file }` or `{ command }`.
pub(crate) fn read_secret(r: &mut Report, node: &Node<'_>) -> Option<Secret> {
    match &node.value.kind {
        ValueKind::String(s) => return Some(Secret::Plain(s.clone())),
        ValueKind::Table(_) => {}
        other => {
            r.at(
                node,
                format!(
                    "expected a secret (a string, {{ env = \"VAR\" }}, {{ file = \"path\" }} \
                     or {{ command = [\"prog\", \"arg\"] }}), found {}",
                    kind_name(other)
                ),
            );
            return None;
        }
    }
    let mut t = Table::open(r, node)?;
    let given = ["env", "file", "command"]
        .iter()
        .filter(|k| t.has(k))
        .count();
    let env = t.opt(r, "env", non_empty).map(Secret::Env);
    let file = t.opt(r, "file", non_empty).map(|f| Secret::File(f.into()));
    let command = t.get("command").and_then(|n| {
        let argv = n.list(r, string);
        if matches!(&n.value.kind, ValueKind::Array(a) if a.is_empty()) {
            r.at(&n, "must not be empty");
        } else if argv.first().is_some_and(String::is_empty) {
            r.at(&n, "program name must not be empty");
        }
        argv.first()
            .is_some_and(|p| !p.is_empty())
            .then_some(Secret::Command(argv))
    });
    t.finish(r);
    if given != 1 {
        r.at(
            node,
            "a secret reference takes exactly one of env, file or command",
        );
        return None;
    }
    env.or(file).or(command)
}

/// `auth`; `captures` are the names its `renew_frame` may use.
pub(super) fn read_auth(
    r: &mut Report,
    node: &Node<'_>,
    captures: &std::collections::BTreeSet<String>,
) -> Option<AuthConfig> {
    let mut t = Table::open(r, node)?;
    let token = t.need(r, "token").and_then(|n| read_token(r, &n));
    let header = t.opt(r, "header", token_name);
    let format = t.opt(r, "format", header_template);
    let query = t.opt(r, "query", non_empty);
    let placement = match (header, query) {
        (Some(_), Some(_)) => {
            r.at(&t.path_of("query"), "set either header or query, not both");
            None
        }
        (None, Some(name)) => {
            if format.is_some() {
                r.at(&t.path_of("format"), "only applies with header, not query");
            }
            Some(AuthPlacement::Query { name })
        }
        (header, None) => Some(AuthPlacement::Header {
            name: header.unwrap_or_else(|| "Authorization".into()),
            format: format.unwrap_or_else(|| "Bearer {{token}}".into()),
        }),
    };
    let max_failures = t.or(r, "max_failures", at_least(1u32), 3);
    let refresh_before = t.or(r, "refresh_before", duration, secs(60));
    let ttl = t.opt(r, "ttl", positive);
    let renew = t.or(
        r,
        "renew",
        |v| {
            one_of(
                v,
                &[
                    ("reconnect", RenewMode::Reconnect),
                    ("frame", RenewMode::Frame),
                    ("none", RenewMode::None),
                ],
            )
        },
        RenewMode::Reconnect,
    );
    let renew_frame = t.opt(
        r,
        "renew_frame",
        template(Allowed {
            token: true,
            last_id: false,
            frame: Some(captures),
            share: false,
        }),
    );
    match (renew, &renew_frame) {
        (RenewMode::Frame, None) => r.at(
            &t.path_of("renew_frame"),
            "required key is missing (renew = \"frame\" sends it)",
        ),
        (RenewMode::Reconnect | RenewMode::None, Some(_)) => r.at(
            &t.path_of("renew_frame"),
            "only used with renew = \"frame\"",
        ),
        _ => {}
    }
    if renew == RenewMode::None && t.has("refresh_before") {
        r.at(
            &t.path_of("refresh_before"),
            "not used with renew = \"none\": every connection gets a fresh token",
        );
    }
    t.finish(r);
    Some(AuthConfig {
        token: token?,
        placement: placement?,
        max_failures,
        refresh_before,
        ttl,
        renew,
        renew_frame,
    })
}

fn token_name(v: &Value) -> Result<String, String> {
    let name = token(v)?;
    if HANDSHAKE_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("{name:?} is set by the WebSocket handshake itself"));
    }
    Ok(name)
}

fn header_template(v: &Value) -> Result<String, String> {
    let format = template(Allowed::HEADER)(v)?;
    if !format.contains("{{token}}") {
        return Err("must contain {{token}}".into());
    }
    if format.contains(['\r', '\n', '\0']) {
        return Err("must not contain CR, LF or NUL".into());
    }
    Ok(format)
}

/// `token`: a secret reference, or `{ oauth2 = { token_url, client_id, client_secret, scope } }`.
fn read_token(r: &mut Report, node: &Node<'_>) -> Option<TokenSource> {
    let is_oauth2 = matches!(&node.value.kind, ValueKind::Table(m) if m.contains_key("oauth2"));
    if !is_oauth2 {
        return read_secret(r, node).map(TokenSource::Secret);
    }
    let mut outer = Table::open(r, node)?;
    let inner = outer.get("oauth2");
    outer.finish(r);
    let mut t = Table::open(r, &inner?)?;
    let token_url = t.required(r, "token_url", |v| {
        let url = parse_url(v)?;
        match url.scheme() {
            "https" | "http" => Ok(url),
            other => Err(format!(
                "token URL scheme must be https or http, not {other:?}"
            )),
        }
    });
    let client_id = t.required(r, "client_id", non_empty);
    let client_secret = t.need(r, "client_secret").and_then(|n| read_secret(r, &n));
    let scope = t.opt(r, "scope", string);
    t.finish(r);
    Some(TokenSource::OAuth2 {
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret?,
        scope,
    })
}

//! What `ws-sidecar check-config` prints: warnings about secrets written in clear, and a compact
//! summary of the effective configuration. Neither ever contains a secret value.

use super::units::{format_duration, format_size};
use super::value::join_key;
use super::{
    AccessConfig, AuthConfig, AuthPlacement, Config, Discovery, EndpointConfig, IdKind, IdScope,
    ListenAddr, LogFormat, Principal, ProxyConfig, RenewMode, SlowPolicy, TokenSource, UrlSource,
};
use crate::redact::{is_secret_name, redact_url, redact_url_with};
use crate::secret::Secret;

impl Config {
    /// `<file>: <key.path>: …` lines for secrets written in clear text; never the values.
    pub fn warnings(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut owned: Vec<(String, String)> = Vec::new();
        for (name, ep) in &self.endpoints {
            let at = |keys: &[&str]| {
                keys.iter().fold(join_key("endpoints", name), |path, key| {
                    join_key(&path, key)
                })
            };
            let mut urls: Vec<(String, &url::Url)> = Vec::new();
            match &ep.url {
                UrlSource::Fixed(u) => urls.push((at(&["url"]), u)),
                UrlSource::Discover(Discovery::Http(h)) => {
                    urls.push((
                        at(&["url", h.method.as_str().to_lowercase().as_str()]),
                        &h.url,
                    ));
                    if h.token.as_ref().is_some_and(Secret::is_plain) {
                        keys.push((at(&["url", "token"]), PLAIN));
                    }
                    for (header, value) in &h.headers {
                        let looks_secret =
                            is_secret_name(header) || header.eq_ignore_ascii_case("cookie");
                        if looks_secret && value.is_plain() {
                            keys.push((join_key(&at(&["url", "headers"]), header), PLAIN));
                        }
                    }
                }
                UrlSource::Discover(Discovery::Command(_)) => {}
            }
            urls.extend(
                ep.fallback_urls
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (format!("{}[{i}]", at(&["fallback_urls"])), u)),
            );
            urls.extend(ep.proxy.url().map(|u| (at(&["proxy"]), u)));
            for (key, url) in urls {
                let extra = auth_query(ep).into_iter().collect::<Vec<_>>();
                if redact_url_with(url, &extra) != url.as_str() {
                    keys.push((key, "URL holds a credential in clear text"));
                }
            }
            for (header, value) in &ep.headers {
                // Only headers that look like credentials: a plain User-Agent is no secret.
                let looks_secret = is_secret_name(header) || header.eq_ignore_ascii_case("cookie");
                if looks_secret && value.is_plain() {
                    keys.push((join_key(&at(&["headers"]), header), PLAIN));
                }
            }
            match ep.auth.as_ref().map(|a| &a.token) {
                Some(TokenSource::Secret(s)) if s.is_plain() => {
                    keys.push((at(&["auth", "token"]), PLAIN));
                }
                Some(TokenSource::OAuth2 { client_secret, .. }) if client_secret.is_plain() => {
                    keys.push((at(&["auth", "token", "oauth2", "client_secret"]), PLAIN));
                }
                _ => {}
            }
            if let Some(a) = ep.auth.as_ref().filter(|a| a.renew != RenewMode::None) {
                if let Some(ttl) = a.ttl.filter(|ttl| *ttl <= a.refresh_before) {
                    owned.push((
                        at(&["auth", "ttl"]),
                        format!(
                            "{} is not longer than auth.refresh_before ({}): the token is renewed halfway through its life instead, every {}",
                            crate::fmt::duration(ttl),
                            crate::fmt::duration(a.refresh_before),
                            crate::fmt::duration((ttl / 2).max(crate::upstream::auth::MIN_RENEW_AFTER)),
                        ),
                    ));
                }
            }
        }
        if let Some(c) = &self.cluster {
            if c.user.as_ref().is_some_and(|(_, p)| p.is_plain()) {
                keys.push(("cluster.password".into(), PLAIN));
            }
            if c.token.as_ref().is_some_and(Secret::is_plain) {
                keys.push(("cluster.token".into(), PLAIN));
            }
            if !self.endpoints.values().any(|ep| ep.cluster) {
                owned.push((
                    "cluster".into(),
                    "no endpoint sets cluster = true: nothing is shared through these NATS \
                     servers"
                        .into(),
                ));
            }
        }
        let source = self.source.display();
        keys.into_iter()
            .map(|(key, what)| (key, what.to_owned()))
            .chain(owned)
            .map(|(key, what)| format!("{source}: {key}: {what}"))
            .collect()
    }

    /// The effective configuration in a few readable lines per endpoint, each ending with a
    /// newline; secrets are described by where they come from, URLs are redacted.
    pub fn summary(&self) -> String {
        let mut out = vec![format!("config    {}", self.source.display())];
        let format = match self.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
            LogFormat::Journald => "journald",
        };
        out.push(format!(
            "log       level {}, format {format}",
            self.log.level
        ));
        let listen: Vec<String> = self.grpc.listen.iter().map(listen_addr).collect();
        let remote = if self.grpc.allow_remote {
            " (remote allowed)"
        } else {
            ""
        };
        out.push(format!("grpc      {}{remote}", listen.join(", ")));
        out.push(format!(
            "stream    {}",
            self.stream
                .path
                .as_ref()
                .map_or("off".into(), |p| p.display().to_string())
        ));
        let group = self.sockets.group.as_deref().unwrap_or("(process group)");
        out.push(format!(
            "sockets   mode {:04o}, group {group}",
            self.sockets.mode
        ));
        out.push(format!(
            "http      {}",
            self.http.listen.map_or("off".into(), |a| a.to_string())
        ));
        out.push(format!("store     {}", self.store.path.display()));
        out.push(format!(
            "limits    {} subscribers",
            self.limits.max_subscribers
        ));
        if let Some(c) = &self.cluster {
            super::cluster::summary(&mut out, c);
        }
        for (name, ep) in &self.endpoints {
            out.push(String::new());
            endpoint_summary(&mut out, name, ep);
        }
        // Every line ends with its newline, the last one too: what follows (check-config's
        // verdict, the next journal entry) starts a line of its own.
        out.into_iter().map(|line| line + "\n").collect()
    }
}

const PLAIN: &str = "secret written in clear text; prefer { env = \"VAR\" }, \
                     { file = \"path\" } or { command = [\"prog\"] }";

fn auth_query(ep: &EndpointConfig) -> Option<&str> {
    match ep.auth.as_ref().map(|a| &a.placement) {
        Some(AuthPlacement::Query { name }) => Some(name.as_str()),
        _ => None,
    }
}

fn listen_addr(addr: &ListenAddr) -> String {
    match addr {
        ListenAddr::Unix(path) => format!("unix:{}", path.display()),
        ListenAddr::Tcp(addr) => addr.to_string(),
    }
}

fn endpoint_summary(out: &mut Vec<String>, name: &str, ep: &EndpointConfig) {
    let extra: Vec<&str> = auth_query(ep).into_iter().collect();
    let url = |u: &url::Url| redact_url_with(u, &extra);
    let shown = match &ep.url {
        UrlSource::Fixed(u) => url(u),
        discovered => discovered.shown(),
    };
    out.push(format!("endpoint {name}  {shown}"));
    let mut line = |label: &str, text: String| out.push(format!("  {label:<12}{text}"));
    if ep.cluster {
        line(
            "cluster",
            "shared with the fleet: one upstream connection, every message through the \
             cluster's stream"
                .into(),
        );
    }
    if let UrlSource::Discover(d) = &ep.url {
        line("url", super::discovery::summary(d, secret_source));
    }
    if !ep.fallback_urls.is_empty() {
        let urls: Vec<String> = ep.fallback_urls.iter().map(url).collect();
        line(
            "fallbacks",
            format!(
                "{} (after {} failures)",
                urls.join(", "),
                ep.backoff.fallback_after
            ),
        );
    }
    if !ep.headers.is_empty() {
        let headers: Vec<String> = ep
            .headers
            .iter()
            .map(|(h, v)| format!("{h} ({})", secret_source(v)))
            .collect();
        line("headers", headers.join(", "));
    }
    if !ep.subprotocols.is_empty() {
        line("protocols", ep.subprotocols.join(", "));
    }
    if !ep.on_connect.is_empty() {
        // Frames may carry credentials of their own: count them, do not print them.
        let frames = ep.on_connect.iter().filter(|s| s.send.is_some()).count();
        let waits = ep
            .on_connect
            .iter()
            .filter(|s| !s.expect.is_empty())
            .count();
        line(
            "on_connect",
            format!("{frames} frame(s), {waits} answer(s) waited for"),
        );
    }
    if !ep.captures.is_empty() {
        let names: Vec<&str> = ep.captures.iter().map(|c| c.name.as_str()).collect();
        line("captures", names.join(", "));
    }
    if !ep.rules.is_empty() {
        let replies = ep.rules.iter().filter(|r| r.reply.is_some()).count();
        let drops = ep.rules.iter().filter(|r| r.drop).count();
        let actions = ep.rules.iter().filter(|r| r.action.is_some()).count();
        line(
            "rules",
            format!(
                "{} ({replies} reply, {drops} drop, {actions} act on the connection)",
                ep.rules.len()
            ),
        );
    }
    if let Some(max) = ep.max_lifetime {
        line(
            "lifetime",
            format!(
                "rotated after {} (less up to a tenth)",
                format_duration(max)
            ),
        );
    }
    if ep.decode != super::Decode::None {
        line("decode", format!("{} (binary frames)", ep.decode.name()));
    }
    if ep.framing == super::Framing::SocketIo {
        line(
            "framing",
            "Socket.IO packets (events delivered as their arrays)".into(),
        );
    }
    if let Some(subs) = &ep.subscriptions {
        let by = match &subs.route {
            super::Route::Key(super::KeyRule::Pointer(p)) => format!("key at {p}"),
            super::Route::Key(super::KeyRule::Template(t)) => format!("key {t}"),
            super::Route::Id(p) => format!("subscription id at {p}"),
        };
        let unsub = if subs.unsubscribe.is_some() {
            "unsubscribed when the last holder leaves"
        } else {
            "never unsubscribed (no unsubscribe frame)"
        };
        line(
            "keys",
            format!(
                "shared upstream subscriptions, messages named by {by}, {unsub}, at most {} per connection",
                subs.max
            ),
        );
    }
    if let Some(reqs) = &ep.requests {
        let ids = match &reqs.ids {
            super::IdStyle::Integer => "integer".to_owned(),
            super::IdStyle::Text { prefix } if prefix.is_empty() => "string".to_owned(),
            super::IdStyle::Text { prefix } => format!("string {prefix:?}+n"),
        };
        let resend = if reqs.idempotent {
            "sent again when the connection drops"
        } else {
            "UNAVAILABLE when the connection drops"
        };
        line(
            "requests",
            format!(
                "id at {} ({ids}), timeout {}, at most {} in flight, {resend}",
                reqs.id,
                format_duration(reqs.timeout),
                reqs.max_in_flight
            ),
        );
    }
    let proxy = match &ep.proxy {
        // What this process's environment gives for the main URL: check-config runs with the
        // service's environment, so this is what the daemon will do.
        ProxyConfig::Env => match &ep.url {
            UrlSource::Fixed(u) => match ep.proxy.route(u) {
                Ok(Some(route)) => route.to_string(),
                Ok(None) => "none (environment: no proxy variable applies)".into(),
                Err(e) => format!("unusable, the endpoint will fail: {e}"),
            },
            UrlSource::Discover(_) => "from the environment, for each discovered URL".into(),
        },
        ProxyConfig::Direct => "none (direct)".into(),
        ProxyConfig::Url(u) => u.redacted(),
    };
    line(
        "connect",
        format!(
            "timeout {}, max message {}, proxy {proxy}",
            format_duration(ep.connect_timeout),
            format_size(ep.max_message_size)
        ),
    );
    let tls = &ep.tls;
    let mut tls_parts = Vec::new();
    if let Some(ca) = &tls.ca_file {
        tls_parts.push(format!("ca {}", ca.display()));
    }
    if let Some(cert) = &tls.client_cert {
        tls_parts.push(format!("client cert {}", cert.display()));
    }
    if let Some(server) = &tls.server_name {
        tls_parts.push(format!("server name {server}"));
    }
    if !tls_parts.is_empty() {
        line("tls", tls_parts.join(", "));
    }
    if let Some(auth) = &ep.auth {
        line("auth", auth_summary(auth));
    }
    let hb = &ep.heartbeat;
    let mut heartbeat = format!(
        "ping {}, pong timeout {}, idle timeout {}",
        hb.ping_interval.map_or("off".into(), format_duration),
        format_duration(hb.pong_timeout),
        hb.idle_timeout.map_or("off".into(), format_duration)
    );
    match (&hb.app_ping, &hb.app_ping_interval_capture) {
        (Some(_), Some((name, _))) => {
            heartbeat.push_str(&format!(", app ping every captures.{name}"));
        }
        (Some(_), None) => heartbeat.push_str(&format!(
            ", app ping every {}",
            format_duration(hb.app_ping_interval)
        )),
        (None, _) => {}
    }
    line("heartbeat", heartbeat);
    if let Some(rl) = &ep.rate_limit {
        let control = if rl.control_frames {
            ", pings and pongs count"
        } else {
            ""
        };
        line(
            "rate limit",
            format!(
                "{} frames per {}{control}",
                rl.messages,
                format_duration(rl.per)
            ),
        );
    }
    let b = &ep.backoff;
    line(
        "backoff",
        format!(
            "{}..{} x{}, min {}, reset after {}",
            format_duration(b.initial),
            format_duration(b.max),
            b.multiplier,
            format_duration(b.min_delay),
            format_duration(b.reset_after)
        ),
    );
    if !ep.close_codes.is_empty() {
        let codes: Vec<String> = ep
            .close_codes
            .iter()
            .map(|(code, action)| format!("{code} {}", format!("{action:?}").to_lowercase()))
            .collect();
        line("close codes", codes.join(", "));
    }
    if !ep.drop.is_empty() {
        let filters: Vec<String> = ep
            .drop
            .iter()
            .map(|f| format!("{} = {}", f.pointer, f.equals))
            .collect();
        line("drop", filters.join("; "));
    }
    match &ep.resume {
        None => line("resume", "off".into()),
        Some(resume) => {
            let mut text = format!("id {}", resume.id_pointer);
            match resume.id_kind {
                IdKind::Integer if resume.contiguous => text.push_str(" (integer, contiguous)"),
                IdKind::Integer => text.push_str(" (integer)"),
                IdKind::String => {
                    text.push_str(&format!(" (string, dedup {})", resume.dedup_window))
                }
            }
            match (resume.scope, &resume.session) {
                (IdScope::Connection, _) => text.push_str(", ids per connection"),
                (IdScope::Session, Some(s)) => {
                    text.push_str(&format!(", ids per session (captures.{s})"))
                }
                _ => {}
            }
            if let Some(channel) = &resume.channel_pointer {
                text.push_str(&format!(", per channel {channel}"));
            }
            if resume.url.is_some() {
                text.push_str(", resume url");
            }
            if let Some(query) = &resume.query {
                text.push_str(&format!(", query {query}"));
            }
            if resume.frame.is_some() {
                text.push_str(", resume frame");
            }
            line("resume", text);
        }
    }
    let r = &ep.replay;
    let slow = match r.slow_subscriber {
        SlowPolicy::Skip => "skip",
        SlowPolicy::Disconnect => "disconnect",
    };
    line(
        "replay",
        format!(
            "{} messages / {}, {}, slow subscribers {slow}",
            r.messages,
            format_size(r.bytes),
            if r.persist { "persisted" } else { "in memory" }
        ),
    );
    let o = &ep.outbox;
    line(
        "outbox",
        format!(
            "{} messages / {} / {}, {}",
            o.max_messages,
            format_size(o.max_bytes),
            format_duration(o.max_age),
            if o.durable { "durable" } else { "not durable" }
        ),
    );
    line("access", access_summary(&ep.access));
}

fn auth_summary(auth: &AuthConfig) -> String {
    let token = match &auth.token {
        TokenSource::Secret(s) => format!("token {}", secret_source(s)),
        TokenSource::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        } => {
            let scope = scope
                .as_deref()
                .map_or(String::new(), |s| format!(" scope {s:?}"));
            format!(
                "oauth2 {} client {client_id} secret {}{scope}",
                redact_url(token_url),
                secret_source(client_secret)
            )
        }
    };
    let placement = match &auth.placement {
        AuthPlacement::Header { name, format } => format!("header {name}: {format}"),
        AuthPlacement::Query { name } => format!("query ?{name}="),
    };
    let renew = match auth.renew {
        RenewMode::Reconnect => "renew by reconnect",
        RenewMode::Frame => "renew by frame",
        RenewMode::None => "used at connect only, fresh for each connection",
    };
    let ttl = auth
        .ttl
        .map_or(String::new(), |t| format!(", ttl {}", format_duration(t)));
    let when = match auth.renew {
        RenewMode::None => String::new(),
        _ => format!(" {} before expiry", format_duration(auth.refresh_before)),
    };
    format!(
        "{token}, {placement}, {renew}{when}{ttl}, gives up after {} auth failures",
        auth.max_failures
    )
}

/// Where a secret comes from; names a variable, file or program, never the value.
pub(super) fn secret_source(secret: &Secret) -> String {
    match secret {
        Secret::Plain(_) => "in the config file".into(),
        Secret::Env(var) => format!("from env {var}"),
        Secret::File(path) => format!("from file {}", path.display()),
        // Arguments may hold a secret of their own (a vault path, a key id): only the program.
        Secret::Command(argv) => {
            format!("from command {}", argv.first().map_or("?", String::as_str))
        }
    }
}

fn access_summary(access: &AccessConfig) -> String {
    let list = |l: &Option<Vec<Principal>>| match l {
        None => "everyone".to_owned(),
        Some(l) if l.is_empty() => "nobody".to_owned(),
        Some(l) => l
            .iter()
            .map(|p| match p {
                Principal::Uid(n) => format!("uid:{n}"),
                Principal::Gid(n) => format!("gid:{n}"),
                Principal::User(u) => format!("user:{u}"),
                Principal::Group(g) => format!("group:{g}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    format!(
        "subscribe {}; publish {}",
        list(&access.subscribe),
        list(&access.publish)
    )
}

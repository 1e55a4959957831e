//! Which proxy a connection goes through: the endpoint's `proxy` key, or the environment read as
//! curl reads it. Owns proxy URL parsing (one parser for the key and the environment variables)
//! and the rule that a proxy setting that applies but cannot be used is an error, never a
//! direct connection. Opening the tunnel is `upstream::proxy`'s job.

use std::ffi::OsString;
use std::fmt;

use hyper_util::client::proxy::matcher::Matcher;
use percent_encoding::percent_decode_str;

use crate::redact::redact_url;

/// Which proxy an endpoint uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProxyConfig {
    /// From `https_proxy`/`http_proxy`/`ALL_PROXY` and `NO_PROXY`, as curl reads them.
    #[default]
    Env,
    /// `proxy = ""`: connect directly whatever the environment says.
    Direct,
    /// `proxy = "http://…"`, `"socks5://…"` or `"socks5h://…"`.
    Url(ProxyUrl),
}

/// The protocol spoken with a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyScheme {
    /// HTTP CONNECT, with basic auth when the URL has a user.
    Http,
    /// SOCKS5; the target's name is resolved here and its address sent.
    Socks5,
    /// SOCKS5; the target's name is sent and the proxy resolves it.
    Socks5h,
}

/// A usable proxy URL: a supported scheme, a host, a port, and the userinfo percent-decoded
/// (RFC 3986) and nothing else. `Debug` shows it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// As written, for display (always redacted) and the clear-text credential warning.
    url: url::Url,
    scheme: ProxyScheme,
    /// Without the brackets of an IPv6 literal, ready for a socket address.
    host: String,
    port: u16,
    /// User name and password, decoded; `None` when the URL has no user.
    credentials: Option<(String, String)>,
}

/// SOCKS5 carries the user name and the password in one length byte each (RFC 1929).
const SOCKS_FIELD_MAX: usize = 255;

impl ProxyUrl {
    /// Parses a proxy URL; without `scheme://` it is `http://`, as curl reads it. Errors never
    /// contain the value: it may hold a password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let owned;
        let text = match text.split_once("://") {
            Some((scheme, _)) => {
                let scheme = scheme.to_ascii_lowercase();
                if !matches!(scheme.as_str(), "http" | "socks5" | "socks5h") {
                    return Err(unsupported(&scheme));
                }
                text
            }
            None => {
                owned = format!("http://{text}");
                &owned
            }
        };
        let url = url::Url::parse(text).map_err(|e| format!("invalid proxy URL: {e}"))?;
        let scheme = match url.scheme() {
            "http" => ProxyScheme::Http,
            "socks5" => ProxyScheme::Socks5,
            "socks5h" => ProxyScheme::Socks5h,
            other => return Err(unsupported(other)),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("proxy URL has no host")?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{}: a proxy URL is only scheme://[user:password@]host[:port]",
                redact_url(&url)
            ));
        }
        // curl's default for a proxy without a port is 1080; http keeps its own 80 here, as
        // this daemon always did.
        let port = url.port_or_known_default().unwrap_or(1080);
        let credentials = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let user = decode(url.username(), "user name")?;
            let password = decode(url.password().unwrap_or(""), "password")?;
            if scheme != ProxyScheme::Http
                && (user.len() > SOCKS_FIELD_MAX || password.len() > SOCKS_FIELD_MAX)
            {
                return Err(format!(
                    "a SOCKS5 proxy user name or password has at most {SOCKS_FIELD_MAX} bytes"
                ));
            }
            Some((user, password))
        };
        Ok(ProxyUrl {
            url,
            scheme,
            host,
            port,
            credentials,
        })
    }

    /// The URL as written, e.g. for the warning about a password in clear text.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The protocol spoken with the proxy.
    pub fn scheme(&self) -> ProxyScheme {
        self.scheme
    }

    /// Host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port, defaulted when the URL has none.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Decoded user name and password, to put on the wire only.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.url).trim_end_matches('/').to_owned()
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn unsupported(scheme: &str) -> String {
    // The scheme is shown only when it looks like one: a value without `://` structure could
    // be anything, a password included.
    let looks_like_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.len() <= 16
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if looks_like_scheme {
        format!("proxy scheme {scheme} is not supported (use http, socks5 or socks5h)")
    } else {
        "invalid proxy URL: invalid scheme".into()
    }
}

/// RFC 3986 percent-decoding: `+` and `&` stay what they are.
fn decode(raw: &str, what: &str) -> Result<String, String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("the proxy {what} is not UTF-8 once percent-decoded"))
}

/// The proxy one connection goes through, and the setting it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    pub proxy: ProxyUrl,
    /// The environment variable it was read from; `None` for the `proxy` key.
    pub var: Option<&'static str>,
}

impl fmt::Display for ProxyRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.proxy.redacted())?;
        match self.var {
            Some(var) => write!(f, " (from {var})"),
            None => Ok(()),
        }
    }
}

/// A proxy environment variable that applies to a connection but cannot be used. Its text
/// names the variable and never contains the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ProxyEnvError {
    pub var: &'static str,
    pub reason: String,
}

/// Variables for `https://` and `wss://` targets, in curl's order.
const HTTPS_VARS: &[&str] = &["https_proxy", "HTTPS_PROXY"];
/// For `http://` and `ws://` only the lowercase name: the uppercase one can be set from a CGI
/// request header ("httpoxy"), which is why curl ignores it.
const HTTP_VARS: &[&str] = &["http_proxy"];
const ALL_VARS: &[&str] = &["all_proxy", "ALL_PROXY"];
const NO_VARS: &[&str] = &["no_proxy", "NO_PROXY"];

impl ProxyConfig {
    /// The configured URL, when one is written in the config.
    pub fn url(&self) -> Option<&url::Url> {
        match self {
            ProxyConfig::Url(u) => Some(u.url()),
            ProxyConfig::Env | ProxyConfig::Direct => None,
        }
    }

    /// The proxy for `target` (a `ws(s)://` upstream or an `http(s)://` token endpoint); `None`
    /// for a direct connection.
    pub fn route(&self, target: &url::Url) -> Result<Option<ProxyRoute>, ProxyEnvError> {
        self.route_with(target, |k| std::env::var_os(k))
    }

    /// [`ProxyConfig::route`] with the environment given, for tests.
    pub fn route_with(
        &self,
        target: &url::Url,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Option<ProxyRoute>, ProxyEnvError> {
        match self {
            ProxyConfig::Direct => Ok(None),
            ProxyConfig::Url(proxy) => Ok(Some(ProxyRoute {
                proxy: proxy.clone(),
                var: None,
            })),
            ProxyConfig::Env => from_env(target, &env),
        }
    }

    /// What a status line says about the proxy for `target`: `" via …"`, or nothing for a
    /// direct connection (or a setting the connection attempt will report as unusable).
    pub fn via(&self, target: &url::Url) -> String {
        match self.route(target) {
            Ok(Some(route)) => format!(" via proxy {route}"),
            Ok(None) | Err(_) => String::new(),
        }
    }
}

/// curl's environment rules, except that a variable that applies but cannot be used is an
/// error instead of a direct connection.
fn from_env(
    target: &url::Url,
    env: &impl Fn(&str) -> Option<OsString>,
) -> Result<Option<ProxyRoute>, ProxyEnvError> {
    // The first of `names` that is set; a value of only blanks counts as unset, as an empty
    // one does for curl. One that is not UTF-8 is an error: skipping it could mean a direct
    // connection.
    let first = |names: &[&'static str]| -> Result<Option<(&'static str, String)>, ProxyEnvError> {
        for &var in names {
            let Some(value) = env(var) else { continue };
            let value = value.into_string().map_err(|_| ProxyEnvError {
                var,
                reason: "not valid UTF-8".into(),
            })?;
            if !value.trim().is_empty() {
                return Ok(Some((var, value)));
            }
        }
        Ok(None)
    };
    let secure = matches!(target.scheme(), "wss" | "https");
    let chosen = match first(if secure { HTTPS_VARS } else { HTTP_VARS })? {
        Some(chosen) => Some(chosen),
        None => first(ALL_VARS)?,
    };
    let exempt = || -> Result<bool, ProxyEnvError> {
        let host = target.host_str().unwrap_or_default();
        Ok(first(NO_VARS)?.is_some_and(|(_, no)| no_proxy_exempts(&no, host)))
    };
    let Some((var, value)) = chosen else {
        // curl would connect directly; a daemon is no CGI script, so an uppercase HTTP_PROXY
        // is most likely meant, and guessing wrong either way must not mean a direct
        // connection nobody asked for.
        if !secure && first(&["HTTP_PROXY"])?.is_some() && !exempt()? {
            return Err(ProxyEnvError {
                var: "HTTP_PROXY",
                reason: format!(
                    "not read for {}:// URLs, as curl does not (httpoxy); set http_proxy \
                     instead, or the endpoint's proxy key",
                    target.scheme()
                ),
            });
        }
        return Ok(None);
    };
    // Parsed before NO_PROXY is consulted: a broken setting is reported for every connection
    // it could apply to, not only for hosts that happen to need it.
    let proxy = ProxyUrl::parse(&value).map_err(|reason| ProxyEnvError { var, reason })?;
    if exempt()? {
        return Ok(None);
    }
    Ok(Some(ProxyRoute {
        proxy,
        var: Some(var),
    }))
}

/// Whether a `NO_PROXY` value exempts `host`: curl's rules, matched by hyper-util (names and
/// their subdomains, with or without a leading dot; IP addresses; CIDR blocks), plus two curl
/// rules it lacks: `*` exempts IP addresses too, and an IPv6 entry may be in brackets.
pub fn no_proxy_exempts(no_proxy: &str, host: &str) -> bool {
    let entries: Vec<&str> = no_proxy
        .split(',')
        .map(|e| {
            let e = e.trim();
            e.strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .unwrap_or(e)
        })
        .collect();
    if entries.contains(&"*") {
        return true;
    }
    let Ok(dst) = http::Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query("/")
        .build()
    else {
        // No host hyper-util can read: the proxy is used, never a direct connection.
        return false;
    };
    // hyper-util keeps its NO_PROXY list private: a matcher with a placeholder proxy says
    // whether the list exempts `dst`.
    Matcher::builder()
        .all("http://placeholder.invalid")
        .no(entries.join(","))
        .build()
        .intercept(&dst)
        .is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn route(target: &str, vars: &[(&str, &str)]) -> Result<Option<String>, String> {
        let target = url::Url::parse(target).expect("url");
        ProxyConfig::Env
            .route_with(&target, env(vars))
            .map(|r| r.map(|r| r.to_string()))
            .map_err(|e| e.to_string())
    }

    const WSS: &str = "wss://stream.example.com/x";
    const WS: &str = "ws://stream.example.com/x";

    #[test]
    fn environment_rules_follow_curl() {
        let ok = |s: &str| Ok(Some(s.to_owned()));
        assert_eq!(
            route(WSS, &[("HTTPS_PROXY", "http://p:3128")]),
            ok("http://p:3128 (from HTTPS_PROXY)")
        );
        assert_eq!(
            route(
                WSS,
                &[("https_proxy", "p:8080"), ("HTTPS_PROXY", "http://q:1")]
            ),
            ok("http://p:8080 (from https_proxy)"),
            "lowercase first, no scheme means http"
        );
        assert_eq!(
            route(WS, &[("http_proxy", "http://p:1")]),
            ok("http://p:1 (from http_proxy)")
        );
        assert_eq!(
            route(
                WS,
                &[("HTTP_PROXY", "http://p:1"), ("ALL_PROXY", "http://a:1")]
            ),
            ok("http://a:1 (from ALL_PROXY)"),
            "uppercase HTTP_PROXY is not read"
        );
        assert_eq!(
            route(
                WSS,
                &[("http_proxy", "http://p:1"), ("all_proxy", "http://a:1")]
            ),
            ok("http://a:1 (from all_proxy)"),
            "http_proxy is only for ws"
        );
        assert_eq!(
            route(WS, &[("ALL_PROXY", "socks5h://a:1080")]),
            ok("socks5h://a:1080 (from ALL_PROXY)")
        );
        assert_eq!(
            route(WSS, &[("https_proxy", "  "), ("ALL_PROXY", "socks5://a")]),
            ok("socks5://a (from ALL_PROXY)"),
            "blank counts as unset"
        );
        assert_eq!(route(WSS, &[]), Ok(None));
        let np = [
            ("HTTPS_PROXY", "http://p:1"),
            ("NO_PROXY", "localhost,.example.com"),
        ];
        assert_eq!(route(WSS, &np), Ok(None));
        let target = url::Url::parse(WSS).expect("url");
        assert_eq!(
            ProxyConfig::Direct.route_with(&target, env(&[("HTTPS_PROXY", "http://p:1")])),
            Ok(None)
        );
    }

    #[test]
    fn an_unusable_variable_is_an_error_naming_it_and_never_direct() {
        let err = |target: &str, vars: &[(&str, &str)]| {
            route(target, vars).expect_err("an error, not a direct connection")
        };
        assert_eq!(
            err(WS, &[("http_proxy", "https://127.0.0.1:3129")]),
            "http_proxy: proxy scheme https is not supported (use http, socks5 or socks5h)"
        );
        assert_eq!(
            err(WSS, &[("ALL_PROXY", "socks4://127.0.0.1:1080")]),
            "ALL_PROXY: proxy scheme socks4 is not supported (use http, socks5 or socks5h)"
        );
        assert_eq!(
            err(WSS, &[("https_proxy", "http://[broken")]),
            "https_proxy: invalid proxy URL: invalid IPv6 address"
        );
        // Broken even for a host NO_PROXY exempts: the setting is wrong for everyone.
        assert!(err(
            WSS,
            &[("https_proxy", "http://u:secret@[x"), ("NO_PROXY", "*")]
        )
        .starts_with("https_proxy: invalid proxy URL"));
        let target = url::Url::parse(WS).expect("url");
        let not_utf8 = |k: &str| {
            use std::os::unix::ffi::OsStringExt as _;
            (k == "http_proxy").then(|| OsString::from_vec(b"http://p\xff:1".to_vec()))
        };
        assert_eq!(
            ProxyConfig::Env
                .route_with(&target, not_utf8)
                .map_err(|e| e.to_string()),
            Err("http_proxy: not valid UTF-8".to_owned())
        );
        let e = err(WS, &[("HTTP_PROXY", "http://p:3128")]);
        assert!(e.starts_with("HTTP_PROXY: not read for ws:// URLs"), "{e}");
        assert_eq!(
            route(WS, &[("HTTP_PROXY", "http://p:3128"), ("no_proxy", "*")]),
            Ok(None),
            "exempt hosts are direct anyway"
        );
        for e in [
            err(WS, &[("http_proxy", "https://user:hunter2@p:1")]),
            err(WS, &[("http_proxy", "u:hunter2://p")]),
            err(WS, &[("http_proxy", "http://user:hunter2@p:99999")]),
        ] {
            assert!(!e.contains("hunter2"), "the value is never shown: {e}");
        }
    }

    #[test]
    fn userinfo_is_percent_decoded_and_nothing_else() {
        let creds = |s: &str| {
            ProxyUrl::parse(s)
                .map(|p| p.credentials().map(|(u, p)| (u.to_owned(), p.to_owned())))
                .expect("parses")
        };
        let pair = |u: &str, p: &str| Some((u.to_owned(), p.to_owned()));
        assert_eq!(creds("http://user:pa+ss@h:1"), pair("user", "pa+ss"));
        assert_eq!(creds("http://user:pa&ss@h:1"), pair("user", "pa&ss"));
        assert_eq!(
            creds("http://us%20er:p%40%2B%26s@h:1"),
            pair("us er", "p@+&s")
        );
        assert_eq!(creds("socks5h://u+1:a+b&c=d@h"), pair("u+1", "a+b&c=d"));
        assert_eq!(creds("http://user@h"), pair("user", ""));
        assert_eq!(creds("http://h:1"), None);
        assert!(ProxyUrl::parse("http://u:%FF@h").is_err(), "not UTF-8");
        let long = format!("socks5://u:{}@h", "x".repeat(256));
        assert!(ProxyUrl::parse(&long).is_err());
        assert!(ProxyUrl::parse(&long.replace("socks5", "http")).is_ok());
    }

    #[test]
    fn proxy_urls_are_checked_and_shown_without_password() {
        let p = ProxyUrl::parse("socks5h://user:pa+ss@[::1]").expect("parses");
        assert_eq!(
            (p.scheme(), p.host(), p.port()),
            (ProxyScheme::Socks5h, "::1", 1080)
        );
        assert_eq!(p.redacted(), "socks5h://user:***@[::1]");
        assert_eq!(format!("{p:?}"), "socks5h://user:***@[::1]");
        let p = ProxyUrl::parse("HTTP://proxy:3128/").expect("parses");
        assert_eq!((p.scheme(), p.port()), (ProxyScheme::Http, 3128));
        assert_eq!(ProxyUrl::parse("http://h").expect("parses").port(), 80);
        for bad in [
            "http://[broken",
            "http://h:1/path",
            "http://h:1?q",
            "https://h:1",
            "socks4://h:1",
            "socks4a://h:1",
            "http://:1",
        ] {
            assert!(ProxyUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_proxy_entries() {
        assert!(no_proxy_exempts("*", "anything"));
        assert!(
            no_proxy_exempts("*", "10.1.2.3"),
            "* exempts IP addresses too"
        );
        assert!(no_proxy_exempts("a, *", "[::1]"));
        assert!(no_proxy_exempts("example.com", "a.b.example.com"));
        assert!(no_proxy_exempts(".example.com", "example.com"));
        assert!(no_proxy_exempts("EXAMPLE.com", "www.example.COM"));
        assert!(!no_proxy_exempts("example.com", "notexample.com"));
        assert!(no_proxy_exempts("10.0.0.0/8", "10.1.2.3"));
        assert!(!no_proxy_exempts("10.0.0.0/8", "11.1.2.3"));
        assert!(no_proxy_exempts("127.0.0.1", "127.0.0.1"));
        assert!(no_proxy_exempts("::1", "[::1]"));
        assert!(no_proxy_exempts("[::1]", "[::1]"));
        assert!(no_proxy_exempts("fd00::/8", "[fd12::1]"));
        assert!(!no_proxy_exempts("127.0.0.1", "localhost"));
        assert!(!no_proxy_exempts("", "x"));
    }
}

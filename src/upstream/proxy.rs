//! HTTP CONNECT proxies: which proxy an endpoint uses (its `proxy` setting, or the environment
//! read as curl reads it), and the CONNECT handshake with optional basic auth.

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::failure::{sanitize, Failure};
use crate::config::ProxyConfig;

/// Largest CONNECT response head accepted; a proxy sending more is broken or hostile.
const MAX_HEAD: usize = 16 * 1024;

/// The proxy to use for `target` (a `ws(s)://` upstream or an `http(s)://` token endpoint).
pub fn for_url(cfg: &ProxyConfig, target: &url::Url) -> Option<url::Url> {
    for_url_with(cfg, target, |k| std::env::var(k).ok())
}

/// [`for_url`] with the environment given, for tests.
pub fn for_url_with(
    cfg: &ProxyConfig,
    target: &url::Url,
    env: impl Fn(&str) -> Option<String>,
) -> Option<url::Url> {
    match cfg {
        ProxyConfig::Direct => None,
        ProxyConfig::Url(u) => Some(u.clone()),
        ProxyConfig::Env => {
            let host = target.host_str()?;
            let get = |names: &[&str]| {
                names
                    .iter()
                    .find_map(|n| env(n).filter(|v| !v.trim().is_empty()))
            };
            if let Some(no) = get(&["no_proxy", "NO_PROXY"]) {
                if no_proxy_matches(&no, host) {
                    return None;
                }
            }
            // curl reads only the lowercase http_proxy: an uppercase HTTP_PROXY can be set by a
            // CGI request header ("httpoxy").
            let scheme_var: &[&str] = if matches!(target.scheme(), "wss" | "https") {
                &["https_proxy", "HTTPS_PROXY"]
            } else {
                &["http_proxy"]
            };
            let raw = get(scheme_var).or_else(|| get(&["all_proxy", "ALL_PROXY"]))?;
            let raw = if raw.contains("://") {
                raw
            } else {
                format!("http://{raw}")
            };
            url::Url::parse(&raw).ok().filter(|u| u.scheme() == "http")
        }
    }
}

/// curl's NO_PROXY rules: `*` matches everything; a name matches itself and its subdomains
/// (a leading dot is optional); an IP address or CIDR block matches addresses in it.
pub fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let host_ip: Option<std::net::IpAddr> = host.parse().ok();
    no_proxy.split(',').map(str::trim).any(|entry| {
        if entry.is_empty() {
            return false;
        }
        if entry == "*" {
            return true;
        }
        let entry = entry.to_ascii_lowercase();
        if let Some(ip) = host_ip {
            return ip_matches(&entry, ip);
        }
        let name = entry.trim_start_matches('.');
        host == name || host.ends_with(&format!(".{name}"))
    })
}

fn ip_matches(entry: &str, ip: std::net::IpAddr) -> bool {
    let entry = entry.trim_start_matches('[').trim_end_matches(']');
    let (addr, bits) = match entry.split_once('/') {
        Some((a, b)) => match b.parse::<u8>() {
            Ok(bits) => (a, Some(bits)),
            Err(_) => return false,
        },
        None => (entry, None),
    };
    let Ok(net) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (std::net::IpAddr::V4(n), std::net::IpAddr::V4(i)) => {
            let bits = u32::from(bits.unwrap_or(32).min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (std::net::IpAddr::V6(n), std::net::IpAddr::V6(i)) => {
            let bits = u32::from(bits.unwrap_or(128).min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Opens a tunnel to `host:port` through `proxy`. Failures are retried with backoff: a 407
/// names proxy authentication, other statuses are reported as the proxy's answer.
pub async fn connect(proxy: &url::Url, host: &str, port: u16) -> Result<TcpStream, Failure> {
    let shown = crate::redact::redact_url(proxy);
    let phost = proxy
        .host_str()
        .ok_or_else(|| Failure::fatal(format!("proxy {shown} has no host")))?;
    let pport = proxy.port_or_known_default().unwrap_or(80);
    let mut tcp = TcpStream::connect((phost.trim_start_matches('[').trim_end_matches(']'), pport))
        .await
        .map_err(|e| Failure::retry(format!("proxy {shown}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let authority = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if !proxy.username().is_empty() {
        let user = percent_decode(proxy.username());
        let pass = percent_decode(proxy.password().unwrap_or(""));
        let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| Failure::retry(format!("proxy {shown}: {e}")))?;

    // Read the response head byte by byte-ish: anything after it belongs to the tunnel.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(Failure::retry(format!(
                "proxy {shown}: response head too long"
            )));
        }
        match tcp.read(&mut byte).await {
            Ok(0) => {
                return Err(Failure::retry(format!(
                    "proxy {shown} closed the connection during CONNECT"
                )))
            }
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(Failure::retry(format!("proxy {shown}: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("");
    let code: Option<u16> = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok());
    match code {
        Some(200..=299) => Ok(tcp),
        Some(407) => Err(Failure::retry(format!(
            "proxy {shown}: proxy authentication required (HTTP 407)"
        ))),
        Some(c) => Err(Failure::retry(format!(
            "proxy {shown} refused CONNECT to {authority}: HTTP {c}"
        ))),
        None => Err(Failure::retry(format!(
            "proxy {shown}: malformed response {:?}",
            sanitize(status_line)
        ))),
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn environment_rules_follow_curl() {
        let wss = url::Url::parse("wss://stream.example.com/x").expect("url");
        let ws = url::Url::parse("ws://stream.example.com/x").expect("url");
        let p = |cfg: &ProxyConfig, u: &url::Url, vars: &[(&str, &str)]| {
            for_url_with(cfg, u, env(vars)).map(|u| u.to_string())
        };
        let e = ProxyConfig::Env;
        assert_eq!(
            p(&e, &wss, &[("HTTPS_PROXY", "http://p:3128")]).as_deref(),
            Some("http://p:3128/")
        );
        assert_eq!(
            p(&e, &wss, &[("https_proxy", "p:8080")]).as_deref(),
            Some("http://p:8080/")
        );
        assert_eq!(
            p(&e, &ws, &[("HTTP_PROXY", "http://p:1")]),
            None,
            "uppercase HTTP_PROXY ignored"
        );
        assert_eq!(
            p(&e, &ws, &[("http_proxy", "http://p:1")]).as_deref(),
            Some("http://p:1/")
        );
        assert_eq!(
            p(&e, &ws, &[("ALL_PROXY", "http://a:1")]).as_deref(),
            Some("http://a:1/")
        );
        let np = [
            ("HTTPS_PROXY", "http://p:1"),
            ("NO_PROXY", "localhost,.example.com"),
        ];
        assert_eq!(p(&e, &wss, &np), None);
        assert_eq!(
            p(&ProxyConfig::Direct, &wss, &[("HTTPS_PROXY", "http://p:1")]),
            None
        );
    }

    #[test]
    fn no_proxy_entries() {
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("example.com", "a.b.example.com"));
        assert!(no_proxy_matches(".example.com", "example.com"));
        assert!(!no_proxy_matches("example.com", "notexample.com"));
        assert!(no_proxy_matches("10.0.0.0/8", "10.1.2.3"));
        assert!(!no_proxy_matches("10.0.0.0/8", "11.1.2.3"));
        assert!(no_proxy_matches("127.0.0.1", "127.0.0.1"));
        assert!(no_proxy_matches("::1", "[::1]"));
        assert!(!no_proxy_matches("", "x"));
    }
}

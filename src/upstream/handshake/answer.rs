//! What a 101 answer must say, given what the request offered (RFC 6455 §4.1): `Upgrade` and
//! `Connection` name the upgrade as elements of their token lists, in any case; the accept key
//! matches; no extension, and at most one subprotocol, one that was offered.

use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{HeaderMap, HeaderName};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::upstream::failure::{sanitize, Failure};

/// What the request offered, which the 101 must agree with.
#[derive(Debug)]
pub(super) struct Offer {
    /// The `Sec-WebSocket-Accept` the key sent calls for.
    accept: String,
    /// Subprotocols offered (never shown: some protocols carry a token in them).
    pub(super) protocols: Vec<String>,
}

impl Offer {
    /// Reads the offer from the request headers.
    pub(super) fn of(headers: &HeaderMap) -> Result<Offer, Failure> {
        let key = headers
            .get(SEC_WEBSOCKET_KEY)
            .ok_or_else(|| Failure::fatal("handshake request has no Sec-WebSocket-Key"))?;
        Ok(Offer {
            accept: derive_accept_key(key.as_bytes()),
            protocols: list(headers, &SEC_WEBSOCKET_PROTOCOL),
        })
    }
}

/// Checks a 101 answer against RFC 6455 §4.1; the subprotocol the upstream selected, if any.
///
/// A wrong `Upgrade`, `Connection` or `Sec-WebSocket-Accept` is retried (a middlebox may have
/// mangled it); a selected subprotocol or extension that was not offered is `failed`: that is
/// how the upstream is configured, and like close code 1002 no retry changes it.
pub(super) fn check_101(headers: &HeaderMap, offer: &Offer) -> Result<Option<String>, Failure> {
    for (name, shown, token) in [
        (&UPGRADE, "Upgrade", "websocket"),
        (&CONNECTION, "Connection", "upgrade"),
    ] {
        let values = list(headers, name);
        if !values.iter().any(|v| v.eq_ignore_ascii_case(token)) {
            let got = if values.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", sanitize(&values.join(", ")))
            };
            return Err(Failure::retry(format!(
                "handshake: the 101 answer's {shown} does not name {token} (got {got})"
            )));
        }
    }
    let mut accepts = headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(v), None) if v.as_bytes() == offer.accept.as_bytes() => {}
        (None, _) => {
            return Err(Failure::retry(
                "handshake: the 101 answer has no Sec-WebSocket-Accept",
            ))
        }
        _ => {
            return Err(Failure::retry(
                "handshake: Sec-WebSocket-Accept does not match the key sent",
            ))
        }
    }
    // None is ever offered: the request has no Sec-WebSocket-Extensions (config refuses one in
    // `headers`), so any extension selected is one that was not offered.
    let selected = list(headers, &SEC_WEBSOCKET_EXTENSIONS);
    if !selected.is_empty() {
        let names: Vec<String> = selected
            .iter()
            .map(|e| sanitize(extension_name(e)))
            .collect();
        return Err(Failure::fatal(match names.as_slice() {
            [one] => format!("handshake: upstream selected extension {one}, which was not offered"),
            _ => format!(
                "handshake: upstream selected extensions {}, which were not offered",
                names.join(", ")
            ),
        }));
    }
    match list(headers, &SEC_WEBSOCKET_PROTOCOL).as_slice() {
        [] => Ok(None),
        [one] if offer.protocols.contains(one) => Ok(Some(one.clone())),
        [one] => Err(Failure::fatal(format!(
            "handshake: upstream selected subprotocol {:?}, which was not offered",
            sanitize(one)
        ))),
        many => Err(Failure::fatal(format!(
            "handshake: upstream selected {} subprotocols ({:?}), where one is allowed",
            many.len(),
            sanitize(&many.join(", "))
        ))),
    }
}

/// The elements of a list-valued header over all its field lines (RFC 9110 §5.6.1): split at
/// commas, whitespace trimmed, empty elements skipped.
fn list(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            // Bytes outside ASCII are kept (lossily), so they still count as an element.
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|e| e.trim_matches([' ', '\t']).to_owned())
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An extension's name, without its parameters (`permessage-deflate; client_max_window_bits`).
fn extension_name(element: &str) -> &str {
    element.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::failure::Class;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    /// RFC 6455 §1.3's example answer to `KEY`.
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn offer(protocols: &[&str]) -> Offer {
        let mut h = HeaderMap::new();
        h.insert(SEC_WEBSOCKET_KEY, KEY.parse().expect("key"));
        if !protocols.is_empty() {
            let v = protocols.join(", ");
            h.insert(SEC_WEBSOCKET_PROTOCOL, v.parse().expect("protocols"));
        }
        Offer::of(&h).expect("offer")
    }

    fn answer(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("name");
            h.append(name, value.parse().expect("value"));
        }
        h
    }

    fn valid(extra: &[(&str, &str)]) -> HeaderMap {
        let mut lines = vec![
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", ACCEPT),
        ];
        lines.extend_from_slice(extra);
        answer(&lines)
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(offer(&[]).accept, ACCEPT);
    }

    #[test]
    fn token_lists_match_any_element_in_any_case_over_any_lines() {
        for (upgrade, connection) in [
            ("websocket", "Upgrade, Keep-Alive"),
            ("WebSocket", "keep-alive,UPGRADE"),
            ("websocket, foo", " , upgrade ,"),
            ("WEBSOCKET", "upgrade\t"),
        ] {
            let h = answer(&[
                ("upgrade", upgrade),
                ("connection", connection),
                ("sec-websocket-accept", ACCEPT),
            ]);
            assert_eq!(
                check_101(&h, &offer(&[])),
                Ok(None),
                "{upgrade} / {connection}"
            );
        }
        let split = answer(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("sec-websocket-accept", ACCEPT),
        ]);
        assert_eq!(check_101(&split, &offer(&[])), Ok(None));
    }

    #[test]
    fn a_token_must_be_a_whole_element() {
        for (upgrade, connection, named) in [
            (
                "websocket2",
                "upgrade",
                "Upgrade does not name websocket (got \"websocket2\")",
            ),
            (
                "h2c",
                "upgrade",
                "Upgrade does not name websocket (got \"h2c\")",
            ),
            (
                "websocket",
                "keep-alive, upgraded",
                "Connection does not name upgrade",
            ),
            (
                "websocket",
                "upgrade-insecure",
                "Connection does not name upgrade",
            ),
        ] {
            let h = answer(&[
                ("upgrade", upgrade),
                ("connection", connection),
                ("sec-websocket-accept", ACCEPT),
            ]);
            let f = check_101(&h, &offer(&[])).expect_err(upgrade);
            assert_eq!(f.class, Class::Retry);
            assert!(f.reason.contains(named), "{}", f.reason);
        }
        let none = answer(&[("sec-websocket-accept", ACCEPT)]);
        let f = check_101(&none, &offer(&[])).expect_err("no upgrade");
        assert!(f.reason.ends_with("(got none)"), "{}", f.reason);
    }

    #[test]
    fn the_accept_key_must_be_there_once_and_right() {
        let wrong = answer(&[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-accept", "bm90IHRoZSByaWdodCBrZXk="),
        ]);
        let twice = valid(&[("sec-websocket-accept", ACCEPT)]);
        let missing = answer(&[("upgrade", "websocket"), ("connection", "upgrade")]);
        for h in [wrong, twice, missing] {
            let f = check_101(&h, &offer(&[])).expect_err("refused");
            assert_eq!(f.class, Class::Retry);
            assert!(f.reason.contains("Sec-WebSocket-Accept"), "{}", f.reason);
        }
    }

    #[test]
    fn extensions_never_offered_fail_naming_them() {
        let h = valid(&[(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits=15",
        )]);
        let f = check_101(&h, &offer(&[])).expect_err("unoffered extension");
        assert_eq!(f.class, Class::Fatal);
        assert_eq!(
            f.reason,
            "handshake: upstream selected extension permessage-deflate, which was not offered"
        );
        let two = valid(&[
            ("sec-websocket-extensions", "x-foo"),
            (
                "sec-websocket-extensions",
                "x-bar; p=\"1\", permessage-deflate",
            ),
        ]);
        let f = check_101(&two, &offer(&[])).expect_err("three unoffered");
        assert!(
            f.reason
                .ends_with("extensions x-foo, x-bar, permessage-deflate, which were not offered"),
            "{}",
            f.reason
        );
        let empty = valid(&[("sec-websocket-extensions", " , ")]);
        assert_eq!(
            check_101(&empty, &offer(&[])),
            Ok(None),
            "an empty list names none"
        );
    }

    #[test]
    fn the_subprotocol_must_be_one_of_those_offered() {
        let o = offer(&["v1", "v2"]);
        assert_eq!(
            check_101(&valid(&[("sec-websocket-protocol", "v2")]), &o),
            Ok(Some("v2".to_owned()))
        );
        assert_eq!(
            check_101(&valid(&[]), &o),
            Ok(None),
            "none selected is allowed"
        );
        for (answered, offered, why) in [
            (
                "v3",
                &["v1", "v2"][..],
                "subprotocol \"v3\", which was not offered",
            ),
            (
                "V1",
                &["v1"][..],
                "subprotocol \"V1\", which was not offered",
            ),
            ("v1", &[][..], "subprotocol \"v1\", which was not offered"),
            ("v1, v2", &["v1", "v2"][..], "2 subprotocols (\"v1, v2\")"),
        ] {
            let f = check_101(
                &valid(&[("sec-websocket-protocol", answered)]),
                &offer(offered),
            )
            .expect_err(answered);
            assert_eq!(f.class, Class::Fatal);
            assert!(f.reason.contains(why), "{}", f.reason);
        }
    }
}

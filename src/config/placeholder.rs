//! The placeholders of `config/example.toml`, refused wherever they are left: a copy that was
//! not finished fails `check-config` (and `run`) at once, naming each one, instead of retrying
//! against a host that does not exist.

use config::ValueKind;

use super::value::{Node, Report};

/// The marker config/example.toml puts where the user must write a value of their own.
pub const PLACEHOLDER: &str = "REPLACE_ME";

/// Refuses the placeholders of config/example.toml, so a copy that was not finished fails
/// `check-config` (and `run`) instead of retrying against a host that does not exist: any
/// string holding [`PLACEHOLDER`], and any URL under `.invalid`, a domain that never resolves
/// (RFC 6761).
pub(super) fn check(r: &mut Report, node: &Node<'_>) {
    match &node.value.kind {
        ValueKind::Table(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for k in keys {
                check(r, &node.child(k, &map[k]));
            }
        }
        ValueKind::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                let item = Node {
                    path: format!("{}[{i}]", node.path),
                    value,
                };
                check(r, &item);
            }
        }
        // The value itself is never shown: it may be a secret with the marker left in it.
        ValueKind::String(s) if s.contains(PLACEHOLDER) => r.at(
            node,
            format!("still holds the placeholder {PLACEHOLDER}: replace it with your own value"),
        ),
        ValueKind::String(s) => {
            let host = url::Url::parse(s).ok().and_then(|u| {
                u.host_str()
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            });
            if let Some(host) = host.filter(|h| h == "invalid" || h.ends_with(".invalid")) {
                r.at(
                    node,
                    format!(
                        "{host} is a placeholder (.invalid never resolves): replace the URL with \
                         your upstream's"
                    ),
                );
            }
        }
        _ => {}
    }
}

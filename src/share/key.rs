//! Reading a subscription key out of an inbound message, and putting an id into a JSON
//! document at a pointer (RFC 6901).

use serde_json::Value;

use crate::config::KeyRule;

/// The key `rule` reads from `doc`: a string as it is, a number or boolean as its JSON text;
/// `None` when a pointer has nothing usable.
pub fn extract(rule: &KeyRule, doc: &Value) -> Option<String> {
    match rule {
        KeyRule::Pointer(p) => scalar(doc.pointer(p)?),
        KeyRule::Template(t) => fill(t, doc),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// `{{/pointer}}` and `{{/pointer|lower}}` / `|upper` filled from `doc` (checked by
/// check-config); `None` when a pointer has nothing usable.
fn fill(template: &str, doc: &Value) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}")?;
        let inner = &after[..end];
        let (ptr, case) = inner.split_once('|').unwrap_or((inner, ""));
        let v = scalar(doc.pointer(ptr)?)?;
        match case {
            "lower" => out.push_str(&v.to_lowercase()),
            "upper" => out.push_str(&v.to_uppercase()),
            _ => out.push_str(&v),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Some(out)
}

/// Puts `value` at `pointer` in `doc`, replacing what is there or adding the last member of
/// an object; `false` when the pointer's parent is missing or not an object or array.
pub fn set(doc: &mut Value, pointer: &str, value: Value) -> bool {
    if pointer.is_empty() {
        *doc = value;
        return true;
    }
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            true
        }
        Some(Value::Array(a)) => match last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// Removes the member at `pointer`, if `doc` has one there in an object.
pub fn remove(doc: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
        m.remove(&last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_come_from_a_pointer_or_a_template() {
        let doc = json!({"stream":"btcusdt@trade","s":"BTCUSDT","e":"trade","n":7});
        let p = KeyRule::Pointer("/stream".into());
        assert_eq!(extract(&p, &doc).as_deref(), Some("btcusdt@trade"));
        let n = KeyRule::Pointer("/n".into());
        assert_eq!(extract(&n, &doc).as_deref(), Some("7"));
        let t = KeyRule::Template("{{/s|lower}}@{{/e}}".into());
        assert_eq!(extract(&t, &doc).as_deref(), Some("btcusdt@trade"));
        let missing = KeyRule::Template("{{/x}}@{{/e}}".into());
        assert_eq!(extract(&missing, &doc), None);
        assert_eq!(extract(&KeyRule::Pointer("".into()), &doc), None);
    }

    #[test]
    fn set_replaces_adds_and_refuses() {
        let mut doc = json!({"id":"mine","a":[1,2],"o":{"x/y":1}});
        assert!(set(&mut doc, "/id", json!(7)));
        assert!(set(&mut doc, "/a/1", json!(9)));
        assert!(set(&mut doc, "/o/x~1y", json!(2)));
        assert!(set(&mut doc, "/new", json!(true)));
        assert!(!set(&mut doc, "/a/5", json!(0)));
        assert!(!set(&mut doc, "/nope/x", json!(0)));
        assert_eq!(doc, json!({"id":7,"a":[1,9],"o":{"x/y":2},"new":true}));
        remove(&mut doc, "/new");
        assert_eq!(doc.get("new"), None);
    }
}

//! `{pointer, equals}` message filters, used by subscribers and by `drop`.

use serde_json::Value;

/// A validated filter: the JSON value at `pointer` must equal `equals`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pointer: String,
    equals: Value,
}

/// A filter that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    #[error("filter pointer {0:?} must be empty or start with '/'")]
    BadPointer(String),
}

impl Filter {
    /// Checks the pointer syntax; `equals` may be any JSON value.
    pub fn new(pointer: impl Into<String>, equals: Value) -> Result<Self, FilterError> {
        let pointer = pointer.into();
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(FilterError::BadPointer(pointer));
        }
        Ok(Filter { pointer, equals })
    }

    /// True when the document has `equals` at `pointer`. A string in `equals` also matches a
    /// number, boolean or null whose JSON text is that string, since gRPC filters carry strings.
    pub fn matches(&self, doc: &Value) -> bool {
        let Some(found) = doc.pointer(&self.pointer) else {
            return false;
        };
        if found == &self.equals {
            return true;
        }
        match (&self.equals, found) {
            (Value::String(want), Value::Number(_) | Value::Bool(_) | Value::Null) => {
                let text = found.to_string();
                text == *want
            }
            _ => false,
        }
    }
}

/// True when every filter matches; `doc` is `None` for a payload that is not JSON, which never
/// matches a non-empty filter list.
pub fn all_match(filters: &[Filter], doc: Option<&Value>) -> bool {
    if filters.is_empty() {
        return true;
    }
    match doc {
        Some(doc) => filters.iter().all(|f| f.matches(doc)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_strings_numbers_and_nested() {
        let doc = json!({"type": "trade", "px": 42, "ok": true, "a": {"b": [1, "x"]}});
        let f = |p: &str, v: Value| Filter::new(p, v).expect("valid");
        assert!(f("/type", json!("trade")).matches(&doc));
        assert!(!f("/type", json!("quote")).matches(&doc));
        assert!(f("/px", json!(42)).matches(&doc));
        assert!(f("/px", json!("42")).matches(&doc));
        assert!(f("/ok", json!("true")).matches(&doc));
        assert!(f("/a/b/1", json!("x")).matches(&doc));
        assert!(!f("/missing", json!("x")).matches(&doc));
        assert!(!all_match(&[f("/type", json!("trade"))], None));
        assert!(all_match(&[], None));
    }

    #[test]
    fn rejects_bad_pointer() {
        assert!(Filter::new("type", json!("x")).is_err());
        assert!(Filter::new("", json!("x")).is_ok());
    }
}

//! `{pointer, equals}` message filters, used by subscribers and by `drop`.

use serde_json::Value;

/// A validated filter: the JSON value at `pointer` must equal `equals`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pointer: String,
    equals: Value,
}

/// Most filters one subscription may carry. Filters are AND-ed, so a handful selects anything
/// a subscriber needs; each one costs a JSON-pointer lookup per message under the endpoint
/// log's lock, so hundreds would let one client slow the fan-out for all.
pub const MAX_FILTERS: usize = 64;
/// Longest pointer a subscriber's filter may have, in bytes.
pub const MAX_POINTER: usize = 256;
/// Longest `equals` a subscriber's filter may have, as JSON text, in bytes.
pub const MAX_EQUALS: usize = 1024;

/// A filter that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    #[error("filter pointer {0:?} must be empty or start with '/'")]
    BadPointer(String),
    #[error("too many filters: {0} (at most {MAX_FILTERS} per subscription)")]
    TooMany(usize),
    #[error("filter pointer of {0} bytes is too long (at most {MAX_POINTER})")]
    PointerTooLong(usize),
    #[error("filter value of {0} bytes of JSON is too long (at most {MAX_EQUALS})")]
    ValueTooLong(usize),
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

/// The string a gRPC filter's `equals` stands for: its text, or, when the text is a JSON string
/// literal (`"trade"` with the quotes), the string it quotes. gRPC carries `equals` as text, and
/// a user told "the JSON value" may well quote it; unquoted, it would never match a string.
pub fn equals_text(equals: &str) -> String {
    match serde_json::from_str::<String>(equals) {
        Ok(text) if equals.starts_with('"') => text,
        _ => equals.to_owned(),
    }
}

/// A subscriber's filters, checked against the limits above and then one by one. Only local
/// clients are held to the limits; `drop` filters come from the operator's config.
pub fn for_subscriber(
    specs: impl ExactSizeIterator<Item = (String, Value)>,
) -> Result<Vec<Filter>, FilterError> {
    if specs.len() > MAX_FILTERS {
        return Err(FilterError::TooMany(specs.len()));
    }
    specs
        .map(|(pointer, equals)| {
            if pointer.len() > MAX_POINTER {
                return Err(FilterError::PointerTooLong(pointer.len()));
            }
            let len = json_len(&equals);
            if len > MAX_EQUALS {
                return Err(FilterError::ValueTooLong(len));
            }
            Filter::new(pointer, equals)
        })
        .collect()
}

/// Length of `v` as compact JSON, counted without building the text.
pub fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
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
    fn subscriber_filters_are_bounded() {
        let spec = |p: &str, v: Value| (p.to_owned(), v);
        let ok = vec![spec("/type", json!("trade")); MAX_FILTERS];
        assert_eq!(
            for_subscriber(ok.into_iter()).map(|f| f.len()),
            Ok(MAX_FILTERS)
        );
        let many = vec![spec("/type", json!("trade")); MAX_FILTERS + 1];
        assert_eq!(
            for_subscriber(many.into_iter()),
            Err(FilterError::TooMany(MAX_FILTERS + 1))
        );
        let long = "/a".repeat(MAX_POINTER);
        assert_eq!(
            for_subscriber([spec(&long, json!(1))].into_iter()),
            Err(FilterError::PointerTooLong(2 * MAX_POINTER))
        );
        // A string of n bytes is n + 2 bytes of JSON.
        let at_limit = "x".repeat(MAX_EQUALS - 2);
        assert!(for_subscriber([spec("/a", json!(at_limit))].into_iter()).is_ok());
        let over = "x".repeat(MAX_EQUALS - 1);
        assert_eq!(
            for_subscriber([spec("/a", json!(over))].into_iter()),
            Err(FilterError::ValueTooLong(MAX_EQUALS + 1))
        );
        assert!(for_subscriber([spec("a", json!(1))].into_iter()).is_err());
    }

    #[test]
    fn rejects_bad_pointer() {
        assert!(Filter::new("type", json!("x")).is_err());
        assert!(Filter::new("", json!("x")).is_ok());
    }
}

//! The config's templates with their placeholders filled in: `{{token}}` (the current credential)
//! and `{{last_id}}` (the last upstream id delivered), in `on_connect`, `resume.frame` and
//! `auth.renew_frame` frames and the `auth.format` header.
//!
//! One pass over the template, so a value that happens to contain `{{…}}` is never expanded
//! again. In frames, a string value goes in as the body of a JSON string (quotes, backslashes
//! and control characters escaped), so `"{{token}}"` stays valid JSON whatever the value holds;
//! an integer id goes in as its digits. `check-config` refuses a placeholder a template cannot
//! have a value for, so rendering only fails if that promise is broken.

use super::resume::UpstreamId;
use crate::secret::SecretString;

/// The values placeholders can take now.
#[derive(Clone, Copy, Default)]
pub struct Values<'a> {
    pub token: Option<&'a SecretString>,
    pub last_id: Option<&'a UpstreamId>,
}

/// A placeholder without a value when a template was rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{{{{{0}}}}} has no value yet")]
pub struct Missing(pub &'static str);

/// `template` as a text frame.
pub fn frame(template: &str, v: Values<'_>) -> Result<SecretString, Missing> {
    render(template, v, |s, out| {
        let quoted = serde_json::Value::String(s.to_owned()).to_string();
        out.push_str(&quoted[1..quoted.len() - 1]);
    })
}

/// `template` as a header value: the token goes in as it is (a secret with a character a
/// header cannot carry is refused when the header is built).
pub fn header(template: &str, v: Values<'_>) -> Result<SecretString, Missing> {
    render(template, v, |s, out| out.push_str(s))
}

fn render(
    template: &str,
    v: Values<'_>,
    string: impl Fn(&str, &mut String),
) -> Result<SecretString, Missing> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        match &after[..end] {
            "token" => string(v.token.ok_or(Missing("token"))?.expose(), &mut out),
            "last_id" => match v.last_id.ok_or(Missing("last_id"))? {
                UpstreamId::Int(n) => out.push_str(&n.to_string()),
                UpstreamId::Str(s) => string(s, &mut out),
            },
            // Not a placeholder (check-config refuses unknown words): kept as written.
            _ => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(SecretString::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_once_and_escaped_in_frames() {
        let token = SecretString::new(r#"t"o\k{{last_id}}"#.into());
        let id = UpstreamId::Str("a\"b".into());
        let v = Values {
            token: Some(&token),
            last_id: Some(&id),
        };
        let f = frame(
            r#"{"token":"{{token}}","from":"{{last_id}}","x":"{{other}}"}"#,
            v,
        )
        .expect("renders");
        let doc: serde_json::Value = serde_json::from_str(f.expose()).expect("valid JSON");
        assert_eq!(doc["token"], r#"t"o\k{{last_id}}"#, "not expanded twice");
        assert_eq!(doc["from"], "a\"b");
        assert_eq!(doc["x"], "{{other}}");
        let n = UpstreamId::Int(42);
        let f = frame(
            r#"{"op":6,"seq":{{last_id}}}"#,
            Values {
                token: None,
                last_id: Some(&n),
            },
        );
        assert_eq!(f.expect("renders").expose(), r#"{"op":6,"seq":42}"#);
        assert_eq!(
            header("Bearer {{token}}", v).expect("renders").expose(),
            r#"Bearer t"o\k{{last_id}}"#
        );
        assert_eq!(
            frame("{{token}}", Values::default()).err(),
            Some(Missing("token"))
        );
        assert_eq!(
            frame("{{ unclosed", Values::default())
                .expect("kept")
                .expose(),
            "{{ unclosed"
        );
    }
}

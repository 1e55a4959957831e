//! Which `{{…}}` placeholders a config value may hold. The daemon fills in `{{token}}` (with
//! `auth`) in `auth.format`, `auth.renew_frame`, `on_connect` and `resume.frame`, and
//! `{{last_id}}` in `resume.frame` only (it is sent once an id is known). Anything else that
//! looks like a placeholder would go upstream as written, a setting that does nothing, so it is
//! refused here, with what to do instead.

use config::Value;

use super::value::string;

/// The placeholders a value may hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Allowed {
    /// `{{token}}`: only where `auth` gives one.
    pub token: bool,
    /// `{{last_id}}`: only in `resume.frame`.
    pub last_id: bool,
}

/// A template holding only the placeholders `allowed`.
pub(super) fn template(allowed: Allowed) -> impl Fn(&Value) -> Result<String, String> {
    move |v| {
        let s = string(v)?;
        for name in placeholders(&s)? {
            match name {
                "token" if allowed.token => {}
                "token" => return Err("{{token}} needs auth.token: nothing would fill it in".into()),
                "last_id" if allowed.last_id => {}
                "last_id" => {
                    return Err("{{last_id}} has a value only in resume.frame, which is sent once an id is known".into())
                }
                other => {
                    return Err(format!(
                        "unknown placeholder {{{{{other}}}}}: templates know {{{{token}}}} and {{{{last_id}}}}"
                    ))
                }
            }
        }
        Ok(s)
    }
}

/// Refuses a placeholder in a value that is used as written; `instead` says what to use.
pub(super) fn literal(s: &str, instead: &str) -> Result<(), String> {
    match placeholders(s)?.first() {
        Some(name) => Err(format!(
            "{{{{{name}}}}} is not filled in here, the value is used as written: {instead}"
        )),
        None => Ok(()),
    }
}

/// The `{{word}}` placeholders of `s`, as the renderer reads them; `{{ word }}` is refused,
/// since the renderer would send it as written.
fn placeholders(s: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        rest = &after[end + 2..];
        let raw = &after[..end];
        let name = raw.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if name != raw {
            return Err(format!(
                "write {{{{{name}}}}} without spaces inside the braces"
            ));
        }
        names.push(name);
    }
    Ok(names)
}

//! Placeholder: being written.
pub fn redact_url(url: &url::Url) -> String {
    url.to_string()
}
pub fn redact_url_with(url: &url::Url, _extra: &[&str]) -> String {
    url.to_string()
}

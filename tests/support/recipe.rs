//! Recipes from `docs/recipes/` as written, for tests that run them end to end against fakes.

use std::time::Duration;

use ws_sidecar::config::{Config, EndpointConfig, TokenSource};
use ws_sidecar::secret::Secret;

use super::daemon::parse_config;

/// `docs/recipes/<file>.toml` with endpoint `name` pointed at `url`, its token (if any) set to
/// `token`, and `adjust` applied (shorter timings for a test).
pub fn recipe(
    file: &str,
    name: &str,
    url: &str,
    adjust: impl FnOnce(&mut EndpointConfig),
) -> Config {
    let path = format!("{}/docs/recipes/{file}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("recipe exists");
    let mut cfg = parse_config(&text);
    let ep = cfg.endpoints.get_mut(name).expect("recipe endpoint");
    ep.url = ws_sidecar::config::UrlSource::Fixed(url::Url::parse(url).expect("test URL"));
    if let Some(auth) = ep.auth.as_mut() {
        auth.token = TokenSource::Secret(Secret::Plain(TOKEN.into()));
    }
    ep.backoff.initial = Duration::from_millis(20);
    ep.backoff.min_delay = Duration::from_millis(10);
    adjust(ep);
    cfg
}

/// The token a recipe's `auth` gets: quoted, so a template that does not escape it shows.
pub const TOKEN: &str = "test-token-\"quoted\"";

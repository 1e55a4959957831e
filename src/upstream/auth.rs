//! The credential put on each connection attempt (SPEC §6), resolved afresh every time so a
//! reconnect never reuses a stale token.

use crate::config::{AuthConfig, AuthPlacement, TokenSource};
use crate::secret::SecretString;

use super::failure::Failure;

/// Where this attempt's credential goes.
pub enum Credential {
    Header(String, SecretString),
    Query(String, SecretString),
}

/// Resolves the token and formats it for its placement.
pub async fn credential(auth: &AuthConfig) -> Result<Credential, Failure> {
    let token = match &auth.token {
        TokenSource::Secret(secret) => secret
            .resolve()
            .await
            .map_err(|e| Failure::retry(format!("auth token: {e}")))?,
        TokenSource::OAuth2 { .. } => {
            return Err(Failure::fatal(
                "auth token: the oauth2 token source is not available in this version",
            ))
        }
    };
    Ok(match &auth.placement {
        AuthPlacement::Header { name, format } => Credential::Header(
            name.clone(),
            SecretString::new(format.replace("{{token}}", token.expose())),
        ),
        AuthPlacement::Query { name } => Credential::Query(name.clone(), token),
    })
}

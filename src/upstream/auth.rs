//! Credentials (SPEC §6): where the token comes from (a secret reference or OAuth2 client
//! credentials), when it expires (JWT `exp`, OAuth2 `expires_in`, or `ttl`), when to renew it
//! (`refresh_before` ahead), and how it is put on a connection attempt (header or query).
//!
//! Secret references are resolved afresh for every attempt, so a rotated file or env value is
//! used at once; an OAuth2 token is reused until it nears expiry or is refused.

use std::time::{Duration, SystemTime};

use base64::Engine as _;

use super::failure::Failure;
use super::oauth2;
use crate::config::{AuthConfig, AuthPlacement, EndpointConfig, RenewMode, TokenSource};
use crate::dialogue::template;
use crate::secret::SecretString;

/// Where this attempt's credential goes.
pub enum Credential {
    Header(String, SecretString),
    Query(String, SecretString),
}

/// A token and when it stops being valid.
#[derive(Clone)]
struct Token {
    value: SecretString,
    expires_at: Option<SystemTime>,
    /// When it was fetched: renewal is never planned sooner than [`MIN_RENEW_AFTER`] later.
    fetched_at: SystemTime,
}

/// The shortest time a token is used before it is renewed, whatever its lifetime: a token that
/// lives less than `refresh_before` (or arrives already expired) must not make every
/// connection renew at once, which with `renew = "reconnect"` is a reconnect storm.
pub const MIN_RENEW_AFTER: Duration = Duration::from_secs(2);

/// When to renew a token fetched at `fetched_at` that expires at `expires_at`: `refresh_before`
/// ahead of expiry, but no more than halfway through its lifetime, and never sooner than
/// [`MIN_RENEW_AFTER`] after it was fetched.
pub fn renew_time(
    fetched_at: SystemTime,
    expires_at: SystemTime,
    refresh_before: Duration,
) -> SystemTime {
    let lifetime = expires_at.duration_since(fetched_at).unwrap_or_default();
    let lead = refresh_before.min(lifetime / 2);
    let at = expires_at.checked_sub(lead).unwrap_or(fetched_at);
    at.max(fetched_at + MIN_RENEW_AFTER)
}

/// The credential state of one endpoint; outlives connections.
pub struct Auth {
    cfg: AuthConfig,
    current: Option<Token>,
}

impl Auth {
    /// Starts with no token; the first attempt fetches one.
    pub fn new(cfg: AuthConfig) -> Self {
        Auth { cfg, current: None }
    }

    /// How a renewed token reaches a live connection.
    pub fn renew_mode(&self) -> RenewMode {
        self.cfg.renew
    }

    /// When the current token expires, if known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.current.as_ref().and_then(|t| t.expires_at)
    }

    /// When renewal should start (see [`renew_time`]); never with `renew = "none"`, whose
    /// token only opens connections: a live one outlives it.
    pub fn renew_at(&self) -> Option<SystemTime> {
        if self.cfg.renew == RenewMode::None {
            return None;
        }
        let t = self.current.as_ref()?;
        Some(renew_time(
            t.fetched_at,
            t.expires_at?,
            self.cfg.refresh_before,
        ))
    }

    /// Forgets the token, e.g. after the upstream refused it.
    pub fn invalidate(&mut self) {
        self.current = None;
    }

    /// The credential for a connection attempt: re-resolved for secret references, reused for
    /// OAuth2 while it is not due for renewal, and fetched afresh for every connection with
    /// `renew = "none"` (such tokens are typically valid only briefly, to open or subscribe).
    pub async fn credential(&mut self, ep: &EndpointConfig) -> Result<Credential, Failure> {
        let reuse = matches!(self.cfg.token, TokenSource::OAuth2 { .. })
            && self.cfg.renew != RenewMode::None
            && self.current.is_some()
            && self.renew_at().is_none_or(|r| SystemTime::now() < r);
        if !reuse {
            self.renew(ep).await.map_err(Failure::retry)?;
        }
        let token = self
            .current
            .as_ref()
            .map(|t| t.value.clone())
            .ok_or_else(|| Failure::retry("auth token: none available"))?;
        Ok(self.place(token))
    }

    /// Fetches a new token now; the old one stays in use if this fails.
    pub async fn renew(&mut self, ep: &EndpointConfig) -> Result<(), String> {
        let fetched_at = SystemTime::now();
        let (value, expires_in) = match &self.cfg.token {
            TokenSource::Secret(secret) => {
                let v = secret
                    .resolve()
                    .await
                    .map_err(|e| format!("auth token: {e}"))?;
                (v, None)
            }
            TokenSource::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let secret = client_secret
                    .resolve()
                    .await
                    .map_err(|e| format!("auth client_secret: {e}"))?;
                let granted = oauth2::fetch(oauth2::Request {
                    token_url,
                    client_id,
                    client_secret: &secret,
                    scope: scope.as_deref(),
                    tls: &ep.tls,
                    proxy: &ep.proxy,
                    timeout: ep.connect_timeout,
                })
                .await
                .map_err(|e| format!("auth token: {e}"))?;
                (granted.access_token, granted.expires_in)
            }
        };
        if value.expose().is_empty() {
            return Err("auth token: the source gave an empty token".into());
        }
        let expires_at = jwt_expiry(value.expose())
            .or_else(|| expires_in.map(|d| fetched_at + d))
            .or_else(|| self.cfg.ttl.map(|d| fetched_at + d));
        if let Some(e) = expires_at.filter(|_| self.cfg.renew != RenewMode::None) {
            let lifetime = e.duration_since(fetched_at).unwrap_or_default();
            if lifetime <= self.cfg.refresh_before {
                let renew_in = renew_time(fetched_at, e, self.cfg.refresh_before)
                    .duration_since(fetched_at)
                    .unwrap_or_default();
                tracing::warn!(
                    lifetime = %crate::fmt::duration(lifetime),
                    refresh_before = %crate::fmt::duration(self.cfg.refresh_before),
                    renew_in = %crate::fmt::duration(renew_in),
                    "auth token lives no longer than auth.refresh_before; renewing halfway through its life instead (at least {} after it was fetched)",
                    crate::fmt::duration(MIN_RENEW_AFTER)
                );
            }
        }
        self.current = Some(Token {
            value,
            expires_at,
            fetched_at,
        });
        Ok(())
    }

    /// The renewal frame's template for a live connection (`renew = "frame"`), rendered by the
    /// connection with its own values.
    pub fn renew_frame(&self) -> Option<&str> {
        self.cfg.renew_frame.as_deref()
    }

    /// The current token, for `{{token}}` in frames.
    pub fn token(&self) -> Option<&SecretString> {
        self.current.as_ref().map(|t| &t.value)
    }

    fn place(&self, token: SecretString) -> Credential {
        match &self.cfg.placement {
            AuthPlacement::Header { name, format } => {
                let values = template::Values {
                    token: Some(&token),
                    ..template::Values::default()
                };
                // `format` holds {{token}} (check-config insists), which has a value here.
                let value = template::header(format, values)
                    .unwrap_or_else(|_| SecretString::new(String::new()));
                Credential::Header(name.clone(), value)
            }
            AuthPlacement::Query { name } => Credential::Query(name.clone(), token),
        }
    }
}

/// The `exp` claim of a JWT, if the token is one.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    if !exp.is_finite() || exp < 0.0 {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: u64) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b(r#"{"alg":"none"}"#),
            b(&format!(r#"{{"exp":{exp},"sub":"x"}}"#))
        )
    }

    #[test]
    fn renewal_is_never_due_at_once() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        // Long-lived: refresh_before ahead of expiry.
        assert_eq!(renew_time(t0, t0 + s(3600), s(60)), t0 + s(3540));
        // Shorter than refresh_before: halfway.
        assert_eq!(renew_time(t0, t0 + s(30), s(60)), t0 + s(15));
        assert_eq!(renew_time(t0, t0 + s(60), s(60)), t0 + s(30));
        // Tiny, expired or refresh_before zero: never sooner than the floor.
        assert_eq!(renew_time(t0, t0 + s(2), s(60)), t0 + MIN_RENEW_AFTER);
        assert_eq!(renew_time(t0, t0 - s(100), s(60)), t0 + MIN_RENEW_AFTER);
        assert_eq!(renew_time(t0, t0 + s(30), s(0)), t0 + s(30));
    }

    #[test]
    fn reads_jwt_exp() {
        assert_eq!(
            jwt_expiry(&jwt(2_000_000_000)),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("opaque-token"), None);
        assert_eq!(jwt_expiry("a.b.c.d"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
    }
}

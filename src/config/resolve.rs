//! What `check-config` finds by trying what the daemon will do: every secret reference resolved
//! (the variable read, the file read, the command run within its time limit), every user and
//! group of an access list looked up, every TLS file read. A config that parses can still never
//! work; these problems are warnings (errors with `check-config --strict`), each naming its key.
//!
//! The daemon itself does not run this at start: a secret is resolved for every connection
//! attempt, so one that is missing now (a credential helper not yet up) is retried with backoff
//! rather than refused. Nothing here ever shows a secret's value or a command's output.

use std::path::{Path, PathBuf};

use super::value::join_key;
use super::{Config, Discovery, Principal, TokenSource, UrlSource};
use crate::secret::{Secret, SecretError};

/// `<file>: <key.path>: <what failed>` for every reference, user, group and file that does not
/// resolve; empty when all do. Commands run concurrently, each bounded by
/// [`crate::secret::COMMAND_LIMIT`].
pub async fn resolve(cfg: &Config) -> Vec<String> {
    let mut secrets: Vec<(String, &Secret)> = Vec::new();
    let mut problems: Vec<(String, String)> = Vec::new();
    for (name, ep) in &cfg.endpoints {
        let at = |keys: &[&str]| {
            keys.iter().fold(join_key("endpoints", name), |path, key| {
                join_key(&path, key)
            })
        };
        for (header, value) in &ep.headers {
            secrets.push((join_key(&at(&["headers"]), header), value));
        }
        match ep.auth.as_ref().map(|a| &a.token) {
            Some(TokenSource::Secret(s)) => secrets.push((at(&["auth", "token"]), s)),
            Some(TokenSource::OAuth2 { client_secret, .. }) => secrets.push((
                at(&["auth", "token", "oauth2", "client_secret"]),
                client_secret,
            )),
            None => {}
        }
        if let UrlSource::Discover(Discovery::Http(h)) = &ep.url {
            if let Some(token) = &h.token {
                secrets.push((at(&["url", "token"]), token));
            }
            for (header, value) in &h.headers {
                secrets.push((join_key(&at(&["url", "headers"]), header), value));
            }
        }
        for (key, file) in [
            ("ca_file", &ep.tls.ca_file),
            ("client_cert", &ep.tls.client_cert),
            ("client_key", &ep.tls.client_key),
        ] {
            if let Some(path) = file {
                if let Err(e) = std::fs::File::open(path) {
                    problems.push((
                        at(&["tls", key]),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                }
            }
        }
        let accounts = crate::access::accounts();
        for (list, entries) in [
            ("subscribe", &ep.access.subscribe),
            ("publish", &ep.access.publish),
        ] {
            for (i, p) in entries.iter().flatten().enumerate() {
                let key = format!("{}[{i}]", at(&["access", list]));
                match p {
                    Principal::User(user) if accounts.uid_of(user).is_none() => problems.push((
                        key,
                        format!("no user {user:?} in /etc/passwd: nobody matches this entry"),
                    )),
                    Principal::Group(group) if accounts.gid_of(group).is_none() => problems.push((
                        key,
                        format!("no group {group:?} in /etc/group: nobody matches this entry"),
                    )),
                    _ => {}
                }
            }
        }
    }
    if let Some(c) = &cfg.cluster {
        secrets.extend(
            c.user
                .as_ref()
                .map(|(_, p)| ("cluster.password".to_owned(), p)),
        );
        secrets.extend(c.token.as_ref().map(|t| ("cluster.token".to_owned(), t)));
        let (cert, key) = c.tls_client.as_ref().map(|(c, k)| (c, k)).unzip();
        for (key, file) in [
            ("tls_ca", c.tls_ca.as_ref()),
            ("tls_cert", cert),
            ("tls_key", key),
        ] {
            if let Some(path) = file {
                if let Err(e) = std::fs::File::open(path) {
                    problems.push((
                        join_key("cluster", key),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                }
            }
        }
    }
    let resolved = futures_util::future::join_all(
        secrets
            .iter()
            .filter(|(_, s)| !s.is_plain())
            .map(|(key, s)| async move { (key.clone(), check_secret(s).await) }),
    )
    .await;
    problems.extend(
        resolved
            .into_iter()
            .filter_map(|(key, r)| r.err().map(|e| (key, e))),
    );
    problems.sort();
    let source = cfg.source.display();
    problems
        .into_iter()
        .map(|(key, what)| format!("{source}: {key}: {what}"))
        .collect()
}

/// Resolves `secret` as a connection attempt would; the error never holds its value.
async fn check_secret(secret: &Secret) -> Result<(), String> {
    match secret.resolve().await {
        Ok(_) => Ok(()),
        Err(SecretError::Env(var)) => Err(format!("environment variable {var} is not set")),
        Err(SecretError::File { source, .. }) => {
            let Secret::File(path) = secret else {
                return Err("cannot read the secret file".into());
            };
            Err(format!(
                "cannot read secret file {}: {source}{}",
                looked_for(path).display(),
                where_relative(path)
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The absolute path a `{ file = … }` reference is read from.
fn looked_for(path: &Path) -> PathBuf {
    let path = crate::secret::credential_path(path);
    if path.is_relative() {
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(path);
        }
    }
    path
}

/// Why a relative path was looked for where it was: under systemd it is the credentials
/// directory, by hand usually not.
fn where_relative(path: &Path) -> &'static str {
    if !path.is_relative() {
        ""
    } else if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
        " (a relative path is read in $CREDENTIALS_DIRECTORY)"
    } else {
        " (a relative path is read in $CREDENTIALS_DIRECTORY, which is not set here, so in the \
         current directory; under systemd LoadCredential= sets it)"
    }
}

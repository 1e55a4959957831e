//! Secret references (`{env}`, `{file}`, `{command}` or a plain string) and the resolved value.
//!
//! Both types print `***` (or only where the secret comes from), so a secret cannot reach a log
//! line, a status output or an error message by accident through `{:?}` or `{}`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a secret comes from; resolved afresh for every connection attempt.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in the config file itself (`check-config` warns about it).
    Plain(String),
    /// `{ env = "VAR" }`.
    Env(String),
    /// `{ file = "path" }`; a relative path resolves in `$CREDENTIALS_DIRECTORY` when set.
    File(PathBuf),
    /// `{ command = ["prog", "arg"] }`: its trimmed stdout.
    Command(Vec<String>),
}

/// Why a secret could not be resolved; never contains the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set or not unicode")]
    Env(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret command {prog}: {reason}")]
    Command { prog: String, reason: String },
}

impl Secret {
    /// True for secrets written into the config file in clear.
    pub fn is_plain(&self) -> bool {
        matches!(self, Secret::Plain(_))
    }

    /// Resolves the secret now; file and command sources do blocking I/O.
    pub fn resolve_blocking(&self) -> Result<SecretString, SecretError> {
        match self {
            Secret::Plain(s) => Ok(SecretString::new(s.clone())),
            Secret::Env(var) => std::env::var(var)
                .map(SecretString::new)
                .map_err(|_| SecretError::Env(var.clone())),
            Secret::File(path) => {
                let path = credential_path(path);
                std::fs::read_to_string(&path)
                    .map(|s| SecretString::new(s.trim_end_matches(['\r', '\n']).to_owned()))
                    .map_err(|source| SecretError::File { path, source })
            }
            Secret::Command(argv) => run_command(argv),
        }
    }

    /// Resolves the secret without blocking the runtime.
    pub async fn resolve(&self) -> Result<SecretString, SecretError> {
        match self {
            Secret::Plain(_) | Secret::Env(_) => self.resolve_blocking(),
            _ => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.resolve_blocking())
                    .await
                    .unwrap_or_else(|e| {
                        Err(SecretError::Command {
                            prog: "resolver".into(),
                            reason: e.to_string(),
                        })
                    })
            }
        }
    }
}

fn credential_path(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}

fn run_command(argv: &[String]) -> Result<SecretString, SecretError> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(SecretError::Command {
            prog: String::new(),
            reason: "empty command".into(),
        });
    };
    let err = |reason: String| SecretError::Command {
        prog: prog.clone(),
        reason,
    };
    let out = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        // stderr is not shown: a failing credential helper may echo what it was given.
        return Err(err(format!("exited with {}", out.status)));
    }
    let text = String::from_utf8(out.stdout).map_err(|_| err("output is not UTF-8".into()))?;
    Ok(SecretString::new(text.trim().to_owned()))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("***"),
            Secret::Env(v) => write!(f, "{{env = {v:?}}}"),
            Secret::File(p) => write!(f, "{{file = {p:?}}}"),
            Secret::Command(a) => write!(f, "{{command = {:?}}}", a.first()),
        }
    }
}

/// A resolved secret value; `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a resolved value.
    pub fn new(s: String) -> Self {
        SecretString(s)
    }

    /// The secret itself: call only where it is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_plain_value() {
        let s = Secret::Plain("hunter2".into());
        assert_eq!(format!("{s:?}"), "***");
        let v = s.resolve_blocking().expect("plain resolves");
        assert_eq!(format!("{v:?} {v}"), "*** ***");
        assert_eq!(v.expose(), "hunter2");
    }

    #[test]
    fn command_output_is_trimmed() {
        let s = Secret::Command(vec!["echo".into(), "  tok  ".into()]);
        assert_eq!(s.resolve_blocking().expect("echo runs").expose(), "tok");
    }

    #[test]
    fn failing_command_is_an_error() {
        let s = Secret::Command(vec!["false".into()]);
        assert!(s.resolve_blocking().is_err());
    }
}

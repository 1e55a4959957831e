//! Secret references (`{env}`, `{file}`, `{command}` or a plain string) and the resolved value.
//!
//! Both types print `***` (or only where the secret comes from), so a secret cannot reach a log
//! line, a status output or an error message by accident through `{:?}` or `{}`.
//!
//! One rule cleans every value, whatever its source and wherever it is placed (header, query
//! parameter, frame): surrounding whitespace (spaces, tabs, CR, LF) is removed, since a file or a
//! command's output ends with a newline and an environment variable may too; a value that then
//! still holds a control character is refused here, with an error naming its source, rather
//! than sent percent-encoded in a URL or refused later only as a header.

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
    /// `{ command = ["prog", "arg"] }`: its stdout.
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
    #[error(
        "the value of {0} contains a control character (only surrounding whitespace is removed)"
    )]
    Control(String),
}

impl Secret {
    /// True for secrets written into the config file in clear.
    pub fn is_plain(&self) -> bool {
        matches!(self, Secret::Plain(_))
    }

    /// The one rule for every source (see the module doc).
    fn clean(&self, raw: &str) -> Result<SecretString, SecretError> {
        let value = raw.trim_matches([' ', '\t', '\r', '\n']);
        if value.chars().any(char::is_control) {
            return Err(SecretError::Control(self.source()));
        }
        Ok(SecretString::new(value.to_owned()))
    }

    /// Where the value comes from, as an error may name it.
    fn source(&self) -> String {
        match self {
            Secret::Plain(_) => "a secret written in the config file".into(),
            Secret::Env(var) => format!("environment variable {var}"),
            Secret::File(path) => format!("secret file {}", credential_path(path).display()),
            Secret::Command(argv) => format!(
                "the output of secret command {}",
                argv.first().map_or("", String::as_str)
            ),
        }
    }

    /// Resolves the secret without blocking the runtime: a file is read on the blocking pool,
    /// a command runs for at most [`COMMAND_LIMIT`] (then it is killed).
    pub async fn resolve(&self) -> Result<SecretString, SecretError> {
        let raw = match self {
            Secret::Command(argv) => return command_output(argv, COMMAND_LIMIT).await,
            Secret::Plain(s) => s.clone(),
            Secret::Env(var) => std::env::var(var).map_err(|_| SecretError::Env(var.clone()))?,
            Secret::File(path) => {
                let path = credential_path(path);
                tokio::fs::read_to_string(&path)
                    .await
                    .map_err(|source| SecretError::File { path, source })?
            }
        };
        self.clean(&raw)
    }
}

/// Longest a secret command may run: a credential helper that hangs (a vault that does not
/// answer) fails the attempt, which is retried with backoff, instead of stalling it for good.
pub const COMMAND_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `argv` and returns its stdout cleaned by the one rule (see the module doc), killing the
/// program if it has not finished within `limit`. What a secret command's output is used for
/// besides a secret (a discovered URL) goes through here, with the same errors.
pub async fn command_output(
    argv: &[String],
    limit: std::time::Duration,
) -> Result<SecretString, SecretError> {
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
    let child = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(limit, child).await {
        Ok(out) => out.map_err(|e| err(e.to_string()))?,
        Err(_) => {
            return Err(err(format!(
                "no answer within {}, killed",
                crate::fmt::duration(limit)
            )))
        }
    };
    if !out.status.success() {
        // stderr is not shown: a failing helper may echo what it was given.
        return Err(err(format!("exited with {}", out.status)));
    }
    let raw = String::from_utf8(out.stdout).map_err(|_| err("output is not UTF-8".into()))?;
    Secret::Command(argv.to_vec()).clean(&raw)
}

/// Where a `{ file = … }` reference is read: a relative path in `$CREDENTIALS_DIRECTORY` when
/// it is set, else as given.
pub fn credential_path(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
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

    #[tokio::test]
    async fn debug_never_shows_plain_value() {
        let s = Secret::Plain("hunter2".into());
        assert_eq!(format!("{s:?}"), "***");
        let v = s.resolve().await.expect("plain resolves");
        assert_eq!(format!("{v:?} {v}"), "*** ***");
        assert_eq!(v.expose(), "hunter2");
    }

    #[tokio::test]
    async fn command_output_is_trimmed() {
        let s = Secret::Command(vec!["echo".into(), "  tok  ".into()]);
        assert_eq!(s.resolve().await.expect("echo runs").expose(), "tok");
    }

    #[tokio::test]
    async fn every_source_is_cleaned_by_one_rule() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("tok");
        std::fs::write(&file, "tok-123\r\n").expect("write");
        let sources = [
            Secret::Plain(" tok-123\n".into()),
            Secret::File(file.clone()),
            Secret::Command(vec!["printf".into(), "tok-123\n\n".into()]),
        ];
        for s in &sources {
            assert_eq!(s.resolve().await.expect("resolves").expose(), "tok-123");
        }
        std::fs::write(&file, "tok\n123\n").expect("write");
        let e = Secret::File(file.clone())
            .resolve()
            .await
            .expect_err("refused");
        assert_eq!(
            e.to_string(),
            format!(
                "the value of secret file {} contains a control character (only surrounding whitespace is removed)",
                file.display()
            )
        );
        let e = Secret::Plain("s3kr1t\u{7f}x".into())
            .resolve()
            .await
            .expect_err("refused");
        assert!(
            !e.to_string().contains("s3kr1t"),
            "the value is never shown: {e}"
        );
    }

    #[tokio::test]
    async fn command_output_is_cleaned_and_bounded_in_time() {
        let echo = ["printf".to_owned(), "wss://h/x?ticket=1\n".to_owned()];
        let out = command_output(&echo, std::time::Duration::from_secs(5))
            .await
            .expect("printf runs");
        assert_eq!(out.expose(), "wss://h/x?ticket=1");
        let started = std::time::Instant::now();
        let hang = ["sleep".to_owned(), "30".to_owned()];
        let e = command_output(&hang, std::time::Duration::from_millis(200))
            .await
            .expect_err("killed");
        assert_eq!(
            e.to_string(),
            "secret command sleep: no answer within 200ms, killed"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let e = command_output(&["false".to_owned()], std::time::Duration::from_secs(5))
            .await
            .expect_err("fails");
        assert_eq!(
            e.to_string(),
            "secret command false: exited with exit status: 1"
        );
    }

    #[tokio::test]
    async fn failing_command_is_an_error() {
        let s = Secret::Command(vec!["false".into()]);
        assert!(s.resolve().await.is_err());
    }
}

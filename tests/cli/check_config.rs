//! `check-config` resolves what a connection attempt would (secret references, access-list
//! users and groups) and warns about what fails, naming the key; `--strict` makes that refuse.

use std::path::Path;
use std::process::{Command, Output};

use crate::support;
use crate::support::process::{write_config, BIN};

/// A file whose every reference fails in its own way; `dir` is where it is run from.
fn unresolvable(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("creds")).expect("mkdir");
    std::fs::write(dir.join("creds/present-token"), "tok\n").expect("write");
    r#"
[endpoints.prices]
url = "wss://stream.example.com/prices"
headers = { X-Api-Key = { env = "WS_SIDECAR_TEST_UNSET_VAR" }, X-Ok = { env = "WS_SIDECAR_TEST_SET_VAR" } }

[endpoints.prices.auth]
token = { file = "missing-token" }

[endpoints.prices.access]
publish = ["user:no-such-user-wss", "group:no-such-group-wss", "uid:0", "user:root"]

[endpoints.chat]
url = "wss://chat.example.com/ws"
auth = { query = "t", token = { command = ["sh", "-c", "echo leaked-s3cret; echo more-s3cret >&2; exit 3"] } }

[endpoints.fine]
url = "wss://fine.example.com/ws"
auth = { token = { file = "creds/present-token" } }
"#
    .into()
}

fn check(dir: &Path, path: &Path, strict: bool) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config").arg("--config").arg(path);
    if strict {
        cmd.arg("--strict");
    }
    cmd.current_dir(dir)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("WS_SIDECAR_TEST_UNSET_VAR")
        .env("WS_SIDECAR_TEST_SET_VAR", "set")
        .output()
        .expect("run check-config")
}

#[test]
fn check_config_warns_about_what_cannot_resolve_naming_the_key() {
    let dir = support::temp_dir();
    let path = write_config(dir.path(), &unresolvable(dir.path()));
    let out = check(dir.path(), &path, false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "warnings only:\n{err}");
    let file = path.display();
    let cwd = dir.path().canonicalize().expect("canonical");
    let expected = [
        format!("warning: {file}: endpoints.chat.auth.token: secret command sh: exited with exit status: 3"),
        format!(
            "warning: {file}: endpoints.prices.access.publish[0]: no user \"no-such-user-wss\" in \
             /etc/passwd: nobody matches this entry"
        ),
        format!(
            "warning: {file}: endpoints.prices.access.publish[1]: no group \"no-such-group-wss\" \
             in /etc/group: nobody matches this entry"
        ),
        format!(
            "warning: {file}: endpoints.prices.auth.token: cannot read secret file {}/missing-token: \
             No such file or directory (os error 2) (a relative path is read in \
             $CREDENTIALS_DIRECTORY, which is not set here, so in the current directory; under \
             systemd LoadCredential= sets it)",
            cwd.display()
        ),
        format!(
            "warning: {file}: endpoints.prices.headers.X-Api-Key: environment variable \
             WS_SIDECAR_TEST_UNSET_VAR is not set"
        ),
    ];
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings, expected, "{err}");
    assert!(
        !err.contains("s3cret") && !String::from_utf8_lossy(&out.stdout).contains("s3cret"),
        "a secret command's output is never shown:\n{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(&format!("{file}: ok\n")));
}

#[test]
fn strict_check_config_refuses_a_file_with_warnings() {
    let dir = support::temp_dir();
    let path = write_config(dir.path(), &unresolvable(dir.path()));
    let out = check(dir.path(), &path, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.ends_with(&format!(
            "{}: refused by --strict: 5 warnings\n",
            path.display()
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no summary for a refused file");
    // A file with nothing to warn about passes --strict.
    let clean = write_config(
        dir.path(),
        "[endpoints.fine]\nurl = \"wss://fine.example.com/ws\"\n\
         auth = { token = { file = \"creds/present-token\" } }\n",
    );
    let out = check(dir.path(), &clean, true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_prints_warnings_alongside_errors() {
    let dir = support::temp_dir();
    let path = write_config(
        dir.path(),
        r#"
[endpoints.prices]
url = "wss://stream.example.com/prices"
headers = { Authorization = "Bearer in-clear", X-Key = { env = "WS_SIDECAR_TEST_UNSET_VAR" } }
conect_timeout = "5s"
"#,
    );
    let out = check(dir.path(), &path, false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    let file = path.display();
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            format!(
                "{file}: endpoints.prices.conect_timeout: unknown key, did you mean \
                 `connect_timeout`?"
            ),
            format!(
                "warning: {file}: endpoints.prices.headers.Authorization: secret written in \
                 clear text; prefer {{ env = \"VAR\" }}, {{ file = \"path\" }} or \
                 {{ command = [\"prog\"] }}"
            ),
            format!(
                "warning: {file}: endpoints.prices.headers.X-Key: environment variable \
                 WS_SIDECAR_TEST_UNSET_VAR is not set"
            ),
        ],
        "{err}"
    );
    assert!(!err.contains("in-clear"));
}

/// `--quiet` (the unit's ExecStartPre=) prints the verdict and what is wrong, not the summary
/// of a valid file; and under the journal (`$JOURNAL_STREAM` naming stderr) each stderr line
/// carries its syslog priority, so `journalctl -p warning` shows why a start failed.
#[test]
fn quiet_prints_the_verdict_and_the_journal_gets_priorities() {
    use std::os::unix::fs::MetadataExt;
    let dir = support::temp_dir();
    let path = write_config(
        dir.path(),
        "[endpoints.prices]\nurl = \"wss://stream.example.com/prices\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--quiet", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: ok\n", path.display())
    );

    std::fs::write(
        &path,
        "[endpoints.prices]\nurl = \"wss://stream.example.com/prices\"\nheaders = { Authorization = \"Bearer x\" }\nconect_timeout = \"5s\"\n",
    )
    .expect("write");
    let stderr = dir.path().join("stderr");
    let file = std::fs::File::create(&stderr).expect("create");
    let meta = file.metadata().expect("stat");
    let out = Command::new(BIN)
        .args(["check-config", "--quiet", "--config"])
        .arg(&path)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = std::fs::read_to_string(&stderr).expect("read");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("<3>") && lines[0].contains("conect_timeout"),
        "{err}"
    );
    assert!(lines[1].starts_with("<4>warning: "), "{err}");
}

/// `[cluster]` in check-config: an unused section and a password in clear text are warned
/// about, its references and TLS files are resolved like an endpoint's, and the summary shows
/// the cluster without its secrets.
#[test]
fn check_config_warns_about_and_summarises_the_cluster_without_its_secrets() {
    let dir = support::temp_dir();
    let path = write_config(
        dir.path(),
        r#"
[endpoints.prices]
url = "wss://stream.example.com/prices"

[cluster]
nats = "nats://nats-1.internal:4222"
name = "web-1"
user = "sidecar"
password = "pw-s3cret"
tls_ca = "missing-ca.pem"
"#,
    );
    let out = check(dir.path(), &path, false);
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "warnings only:\n{err}");
    let file = path.display();
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            format!(
                "warning: {file}: cluster.password: secret written in clear text; prefer \
                 {{ env = \"VAR\" }}, {{ file = \"path\" }} or {{ command = [\"prog\"] }}"
            ),
            format!(
                "warning: {file}: cluster: no endpoint sets cluster = true: nothing is shared \
                 through these NATS servers"
            ),
            format!(
                "warning: {file}: cluster.tls_ca: cannot read missing-ca.pem: No such file or \
                 directory (os error 2)"
            ),
        ],
        "{err}"
    );
    assert!(
        stdout.contains("cluster   nats://nats-1.internal:4222\n")
            && stdout.contains("auth user sidecar, password in the config file\n"),
        "{stdout}"
    );
    assert!(!err.contains("pw-s3cret") && !stdout.contains("pw-s3cret"));

    // Clustered, with the token from an unset variable: that is the only warning left.
    std::fs::write(
        &path,
        "[endpoints.prices]\nurl = \"wss://stream.example.com/prices\"\ncluster = true\n\
         [cluster]\nnats = \"nats://nats-1.internal:4222\"\n\
         token = { env = \"WS_SIDECAR_TEST_UNSET_VAR\" }\n",
    )
    .expect("write");
    let out = check(dir.path(), &path, false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [format!(
            "warning: {file}: cluster.token: environment variable WS_SIDECAR_TEST_UNSET_VAR is \
             not set"
        )],
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("auth token from env WS_SIDECAR_TEST_UNSET_VAR\n")
            && stdout.contains("  cluster     shared with the fleet"),
        "{stdout}"
    );
}

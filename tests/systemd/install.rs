//! README's "Install as a service", run as written inside a box: every line of the fenced block
//! right after `<!-- systemd test -->` in README.md, in order, from the directory that holds
//! the checkout's `systemd/` and `config/`, each of which must exit 0.
//!
//! The only differences from a person at a Debian 12 host, each for a reason:
//! - `cargo build --release --locked` is not run: the binary this test run built (the same
//!   code; a release build would add minutes) is shown at `target/release/ws-sidecar`.
//! - `sudo` is a stand-in (`tests/systemd/sudo`) that runs the command as root, or as the user
//!   of `-u USER` through runuser: everything in the box already runs as root, and Debian does
//!   not install sudo by default.
//! - `sudoedit FILE` (an editor, by hand) becomes writing the test's config into FILE, which
//!   keeps the mode and group the line before gave it.
//! - `app-user` exists: the test creates it, standing for a local app's user.

use crate::sysbox::{SysBox, SRC};

const MARKER: &str = "<!-- systemd test -->";

/// The user README's last line adds to group ws-sidecar.
pub const APP_USER: &str = "app-user";
/// A user that is not in group ws-sidecar.
pub const OUTSIDER: &str = "outsider";

/// The lines of the marked block in README.md.
pub fn readme_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut it = readme.lines();
    let mut found = None;
    while let Some(l) = it.next() {
        if l.trim() != MARKER {
            continue;
        }
        assert!(found.is_none(), "README.md has {MARKER} twice");
        assert_eq!(
            it.next().unwrap_or_default(),
            "```sh",
            "{MARKER} must precede a fenced shell block"
        );
        found = Some(
            it.by_ref()
                .take_while(|l| !l.starts_with("```"))
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
    }
    found.unwrap_or_else(|| panic!("README.md has no {MARKER} block"))
}

/// Creates the app's users, then runs README's install block line by line with `config` as
/// the file `sudoedit` would have produced. Returns the lines run.
pub async fn install_as_readme_says(b: &SysBox, config: &str) -> Vec<String> {
    for user in [APP_USER, OUTSIDER] {
        b.must(&["useradd", "--create-home", "--user-group", user])
            .await;
    }
    let mut ran = Vec::new();
    for line in readme_lines() {
        let cmd = line.trim();
        if cmd.is_empty() || cmd.starts_with('#') {
            continue;
        }
        if cmd.starts_with("cargo build") {
            continue;
        }
        let out = if let Some(rest) = cmd.strip_prefix("sudoedit ") {
            let file = rest.split_whitespace().next().expect("sudoedit's file");
            b.run_with_input(&["sh", "-c", "cat > \"$1\"", "sh", file], config)
                .await
        } else {
            b.run(&["sh", "-ec", &format!("cd {SRC}\n{cmd}")]).await
        };
        assert!(
            out.success(),
            "README's install line failed in the box: {cmd}\nexit {:?}\n{}{}\n{}",
            out.code,
            out.stdout,
            out.stderr,
            b.journal_text("ws-sidecar.service").await
        );
        if cmd.contains("-u ws-sidecar ws-sidecar check-config") {
            // The service account sees the places the service uses, not ones under its home.
            assert!(
                out.stdout.contains("unix:/run/ws-sidecar/grpc.sock")
                    && out.stdout.contains("/var/lib/ws-sidecar/store")
                    && !out.stdout.contains(".local"),
                "check-config as ws-sidecar shows the service's places:\n{}",
                out.stdout
            );
        }
        ran.push(cmd.to_owned());
    }
    let has = |what: &str| ran.iter().any(|l| l.contains(what));
    for step in [
        "install -D -m 0755 target/release/ws-sidecar",
        "systemd-sysusers",
        "check-config",
        "enable --now ws-sidecar.socket",
        "enable --now ws-sidecar.service",
        "usermod -aG ws-sidecar app-user",
    ] {
        assert!(
            has(step),
            "README's install block has no `{step}` line: {ran:#?}"
        );
    }
    ran
}

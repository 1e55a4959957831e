//! One booted box: `boot.sh` to start it, commands run inside with nsenter (as root or as a
//! given user), `teardown.sh` when the handle drops, a panicking test included.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::netns::BoxNet;
use crate::support::process::BIN;
use crate::T;

/// Where the box shows the files README's install commands read (`systemd/`, `config/`,
/// `target/release/ws-sidecar`): the directory they are run from.
pub const SRC: &str = "/srv/ws-sidecar";

/// PATH inside the box: the sudo stand-in in /usr/local/sbin, the installed binary in
/// /usr/local/bin.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/systemd")
}

/// A running box. Dropping it powers the box off and removes its cgroup subtree.
pub struct SysBox {
    /// Host pid of the box's systemd: the target of every nsenter.
    pid1: u32,
    /// The box's network namespace, for the fakes and the HTTP client.
    pub net: BoxNet,
    /// The box's state files (boot.sh's BOXDIR); removed last.
    dir: tempfile::TempDir,
    /// The staged checkout the box shows at [`SRC`].
    _src: tempfile::TempDir,
}

/// What a command inside the box did.
#[derive(Debug)]
pub struct Out {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl SysBox {
    /// Boots a box, or returns `None` after printing why this machine cannot (not root, no
    /// systemd, namespaces or overlay refused). Under CI (`CI=true`) that is a failure instead.
    pub fn boot(test: &str) -> Option<SysBox> {
        // Its own temporary directory: its unique name names the box's cgroup.
        let dir = crate::support::temp_dir();
        let src = crate::support::temp_dir();
        stage_checkout(src.path());
        let state = dir.path();
        let out = Command::new("bash")
            .arg(here().join("boot.sh"))
            .arg(state)
            .arg(src.path())
            .arg(BIN)
            .stdin(Stdio::null())
            .output()
            .expect("run tests/systemd/boot.sh");
        let stderr = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "; ");
        if out.status.code() == Some(77) {
            // A refusal half-way (overlay) leaves a cgroup behind.
            teardown(state);
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !ci,
                "{test}: CI=true and this machine cannot boot a systemd box: {stderr}"
            );
            // Past libtest's capture, which would hide the line of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "tests/systemd {test}: skipped, cannot boot a systemd box here: {stderr}"
            );
            return None;
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pid1 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("pid1="))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(pid1) = pid1.filter(|_| out.status.success()) else {
            teardown(state);
            panic!(
                "{test}: boot.sh failed ({}):\n{stdout}\n{stderr}",
                out.status
            );
        };
        let net = match BoxNet::enter(pid1) {
            Ok(net) => net,
            Err(e) => {
                teardown(state);
                panic!("{test}: cannot enter the box's network namespace: {e}");
            }
        };
        Some(SysBox {
            pid1,
            net,
            dir,
            _src: src,
        })
    }

    /// Runs `argv` inside the box as root, its output kept; fails the test after [`T`].
    pub async fn run(&self, argv: &[&str]) -> Out {
        self.exec(None, argv, None).await
    }

    /// Runs `argv` inside the box as `user` (runuser: that user's groups, as a login gives).
    pub async fn run_as(&self, user: &str, argv: &[&str]) -> Out {
        self.exec(Some(user), argv, None).await
    }

    /// Runs `argv` as root with `stdin` as its standard input.
    pub async fn run_with_input(&self, argv: &[&str], stdin: &str) -> Out {
        self.exec(None, argv, Some(stdin)).await
    }

    /// Runs `argv` as root and returns its stdout, failing the test unless it exits 0.
    pub async fn must(&self, argv: &[&str]) -> String {
        let out = self.run(argv).await;
        assert!(out.success(), "{argv:?} failed: {out:?}");
        out.stdout
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub async fn show(&self, unit: &str, prop: &str) -> String {
        let v = self
            .must(&["systemctl", "show", "-p", prop, "--value", unit])
            .await;
        v.trim().to_owned()
    }

    /// The journal entries `journalctl -o json ARGS` selects.
    pub async fn journal(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut argv = vec!["journalctl", "--no-pager", "-o", "json"];
        argv.extend_from_slice(args);
        let out = self.must(&argv).await;
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journal line {l}: {e}")))
            .collect()
    }

    /// The cursor of the unit's latest journal entry: with `--after-cursor=`, what came after.
    pub async fn cursor(&self, unit: &str) -> String {
        let last = self.journal(&["-u", unit, "-n", "1"]).await;
        last.first()
            .and_then(|e| e["__CURSOR"].as_str())
            .unwrap_or_else(|| panic!("no journal entry of {unit}"))
            .to_owned()
    }

    /// The unit's journal as text, for failure messages.
    pub async fn journal_text(&self, unit: &str) -> String {
        self.run(&["journalctl", "--no-pager", "-u", unit])
            .await
            .stdout
    }

    async fn exec(&self, user: Option<&str>, argv: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.args(["-t", &self.pid1.to_string(), "-a", "--"]).args([
            "env",
            "-i",
            &format!("PATH={PATH}"),
            "LANG=C.UTF-8",
        ]);
        match user {
            // runuser sets HOME, USER and LOGNAME for the user.
            Some(user) => cmd.args(["runuser", "-u", user, "--"]),
            None => cmd.arg("HOME=/root"),
        };
        cmd.args(argv)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn nsenter for {argv:?}: {e}"));
        if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
            w.write_all(input.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("stdin of {argv:?}: {e}"));
        }
        let out = tokio::time::timeout(T, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{argv:?} (as {user:?}) did not end within {T:?}"))
            .unwrap_or_else(|e| panic!("wait for {argv:?}: {e}"));
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Polls `probe` until it returns `Some`, failing the test after `within` with `what`.
    /// For states systemd reports only when asked (properties, STATUS=).
    pub async fn until<F, Fut, R>(&self, what: &str, within: Duration, mut probe: F) -> R
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<R>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(r) = probe().await {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{what}: not within {within:?}\n{}",
                    self.journal_text("ws-sidecar.service").await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SysBox {
    fn drop(&mut self) {
        let left = teardown(self.dir.path());
        if let Some(why) = left {
            if std::thread::panicking() {
                let _ = writeln!(std::io::stderr(), "{why}");
            } else {
                panic!("{why}");
            }
        }
    }
}

/// Stops the box; `Some(why)` when something of it was left behind.
fn teardown(state: &Path) -> Option<String> {
    let out = Command::new("bash")
        .arg(here().join("teardown.sh"))
        .arg(state)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "tests/systemd/teardown.sh {}: {}",
            state.display(),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!("tests/systemd/teardown.sh: {e}")),
    }
}

/// Copies what README's install commands read from the checkout into `src`, which the box
/// shows at [`SRC`] (the binary is shown there as `target/release/ws-sidecar` by stage2.sh).
fn stage_checkout(src: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["systemd", "config"] {
        std::fs::create_dir_all(src.join(dir)).expect("stage a directory");
        for entry in std::fs::read_dir(root.join(dir)).expect("read the checkout") {
            let entry = entry.expect("a directory entry");
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::copy(entry.path(), src.join(dir).join(entry.file_name()))
                    .expect("stage a file");
            }
        }
    }
}

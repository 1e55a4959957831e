//! The real binary as a child process, for tests that need signals, crashes or exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `ws-sidecar` binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_ws-sidecar");

/// A child process killed (and reaped) when dropped: a test that fails midway leaves no daemon
/// behind, a SIGSTOPped one included. Derefs to the [`Child`].
pub struct Spawned(Option<Child>);

impl Spawned {
    pub fn new(child: Child) -> Spawned {
        Spawned(Some(child))
    }

    /// The child, no longer killed on drop (for what must wait on it by value).
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("a child until dropped")
    }
}

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("a child until dropped")
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("a child until dropped")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `body` as `dir/config.toml`.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let mut f = std::fs::File::create(&path).expect("create config");
    f.write_all(body.as_bytes()).expect("write config");
    path
}

/// Config sections putting sockets and the store in `dir`, plus `endpoints` verbatim.
pub fn daemon_config(dir: &Path, endpoints: &str) -> String {
    format!(
        "[grpc]\nlisten = [\"unix:{0}/grpc.sock\"]\n[stream]\npath = \"{0}/stream.sock\"\n[http]\nlisten = \"\"\n[store]\npath = \"{0}/store\"\n{1}\n",
        dir.display(),
        endpoints
    )
}

/// Starts `ws-sidecar run` with `daemon_config(dir, endpoints)`. Its log goes to
/// `dir/daemon.log`: a pipe nobody reads fills after 64 KiB and then blocks the daemon's logging
/// thread (and with it a runtime worker), which hung the crash test once a backing-off endpoint
/// had logged enough.
pub fn spawn_daemon(dir: &Path, endpoints: &str) -> Spawned {
    let path = write_config(dir, &daemon_config(dir, endpoints));
    let log = std::fs::File::create(dir.join("daemon.log")).expect("create daemon.log");
    Spawned::new(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon"),
    )
}

/// Waits until `dir/grpc.sock` answers connections.
pub fn wait_ready(dir: &Path) {
    let sock = dir.join("grpc.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "daemon did not listen on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `unix:` address of the daemon's gRPC socket in `dir`.
pub fn grpc_addr(dir: &Path) -> String {
    format!("unix:{}", dir.join("grpc.sock").display())
}

/// Kills the child with SIGKILL, as a crash would.
pub fn crash(mut child: Spawned) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// Stops the child with SIGTERM, as systemd does, and checks it exits 0 within 5 s.
pub fn stop(mut child: Spawned) {
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success(), "SIGTERM delivered");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0), "clean exit after SIGTERM");
            return;
        }
        assert!(Instant::now() < deadline, "no exit within 5 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary with `args`, `stdin` written to it and closed, to its end within 20 s: exit
/// code, stdout, stderr.
pub async fn run_cli(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    use tokio::io::AsyncWriteExt as _;
    const T: Duration = Duration::from_secs(20);
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ws-sidecar");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not exit within {T:?}"))
        .expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The uid and gid to run commands as a normal user: `nobody` when the tests run as root (CI
/// does), else `None` (run as ourselves), so that the non-root behaviour is what is tested.
pub fn normal_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok()?;
    (me == 0).then_some((65534, 65534))
}

/// `program` run as [`normal_user`] (through setpriv(1) when we are root), with an empty
/// environment but `PATH`.
pub fn as_normal_user(program: &str) -> Command {
    let mut cmd = match normal_user() {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
                program,
            ]);
            c
        }
        None => Command::new(program),
    };
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    cmd
}

/// Hands `path` and everything under it to [`normal_user`].
pub fn give_to_normal_user(path: &Path) {
    let Some((uid, gid)) = normal_user() else {
        return;
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read_dir") {
            give_to_normal_user(&e.expect("entry").path());
        }
    }
}

/// A pseudo-terminal: the side the test reads and writes, and the terminal the child uses as
/// its stdin, stdout or stderr.
pub fn pty() -> (std::fs::File, std::fs::File) {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::os::unix::fs::OpenOptionsExt;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let name = name.to_str().expect("utf-8 pty name").to_owned();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        // Never this test's controlling terminal.
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(&name)
        .expect("open the terminal side");
    (std::fs::File::from(master), terminal)
}

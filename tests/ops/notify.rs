//! sd_notify with the real binary: READY=1 once the listeners answer, STATUS following endpoint
//! states, WATCHDOG=1 when asked for, STOPPING=1 on SIGTERM.

use crate::support::process::Spawned;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UnixDatagram;

use crate::support::process::{daemon_config, write_config, BIN};
use crate::support::{self, FakeUpstream, Reply};
use crate::{free_port, sigterm_and_wait, T};

/// Assignments from the daemon's datagrams, one per line (READY=1 and its STATUS= come in
/// one datagram), in order.
struct Notifications {
    sock: UnixDatagram,
    seen: Vec<String>,
    /// Entries of `seen` already looked at by a `wait_for`.
    read: usize,
}

impl Notifications {
    fn bind(path: &std::path::Path) -> Notifications {
        Notifications {
            sock: UnixDatagram::bind(path).expect("bind notify socket"),
            seen: Vec::new(),
            read: 0,
        }
    }

    /// The next assignment satisfying `pred`; the ones before it are passed over.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + T;
        loop {
            while self.read < self.seen.len() {
                self.read += 1;
                if pred(&self.seen[self.read - 1]) {
                    return self.seen[self.read - 1].clone();
                }
            }
            match tokio::time::timeout_at(deadline, self.sock.recv(&mut buf)).await {
                Ok(Ok(n)) => self.seen.extend(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .map(str::to_owned),
                ),
                Ok(Err(e)) => panic!("notify socket: {e}"),
                Err(_) => panic!("no {what} within {T:?}; got {:?}", self.seen),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_status_watchdog_and_stopping_reach_notify_socket() {
    let (up, accept) = FakeUpstream::start_gated(true, 503).await;
    let dir = support::temp_dir();
    let notify_path = dir.path().join("notify.sock");
    let mut notes = Notifications::bind(&notify_path);
    let backoff = "initial = \"100ms\"\nmax = \"200ms\"\nmin_delay = \"50ms\"";
    // `b` points at a port nothing listens on, so it stays in backoff.
    let eps = format!(
        "[endpoints.a]\nurl = \"{}\"\n[endpoints.a.backoff]\n{backoff}\n\
         [endpoints.b]\nurl = \"ws://127.0.0.1:{}/\"\n[endpoints.b.backoff]\n{backoff}\n",
        up.url("/"),
        free_port()
    );
    let config = write_config(dir.path(), &daemon_config(dir.path(), &eps));
    let mut child = Spawned::new(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon"),
    );

    notes.wait_for("READY=1", |m| m == "READY=1").await;
    assert_eq!(notes.read, 1, "READY=1 comes first: {:?}", notes.seen);
    // READY=1 promises every listener is bound: they answer at once.
    std::os::unix::net::UnixStream::connect(dir.path().join("grpc.sock")).expect("grpc socket");
    std::os::unix::net::UnixStream::connect(dir.path().join("stream.sock")).expect("stream socket");

    let status = notes
        .wait_for("STATUS with a connected and b in backoff", |m| {
            m.starts_with("STATUS=2 endpoints: 1 connected, 1 backoff (b: ")
        })
        .await;
    assert!(!status.contains("retrying in"), "{status:?}");

    // `a` loses its upstream and cannot get back: both in backoff, both named.
    let conn = up.next_accepted_within(T).await.expect("a connected");
    accept.store(false, Ordering::SeqCst);
    conn.close(1011, "going away").await.expect("close");
    let status = notes
        .wait_for("STATUS with both in backoff", |m| {
            m.starts_with("STATUS=2 endpoints: 2 backoff (a: ")
        })
        .await;
    assert!(status.contains(", b: "), "{status:?}");

    // WATCHDOG_USEC = 0.4 s: a ping every 0.2 s.
    notes.wait_for("WATCHDOG=1", |m| m == "WATCHDOG=1").await;
    notes
        .wait_for("a second WATCHDOG=1", |m| m == "WATCHDOG=1")
        .await;

    tokio::task::block_in_place(|| sigterm_and_wait(&mut child));
    notes.wait_for("STOPPING=1", |m| m == "STOPPING=1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_watchdog_pings_for_another_pid() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let notify_path = dir.path().join("notify.sock");
    let mut notes = Notifications::bind(&notify_path);
    let eps = format!("[endpoints.a]\nurl = \"{}\"\n", up.url("/"));
    let config = write_config(dir.path(), &daemon_config(dir.path(), &eps));
    let mut child = Spawned::new(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "200000")
            // The watchdog is meant for pid 1 here, not for the daemon.
            .env("WATCHDOG_PID", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon"),
    );
    notes.wait_for("READY=1", |m| m == "READY=1").await;
    notes
        .wait_for("STATUS connected", |m| {
            m == "STATUS=1 endpoint: 1 connected"
        })
        .await;
    // Ten watchdog periods with no WATCHDOG=1; the STOPPING=1 at the end shows the socket works.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| sigterm_and_wait(&mut child));
    notes.wait_for("STOPPING=1", |m| m == "STOPPING=1").await;
    assert!(
        !notes.seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "{:?}",
        notes.seen
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_between_reloading_and_ready_and_refuses_an_invalid_file() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let dir = support::temp_dir();
    let notify_path = dir.path().join("notify.sock");
    let mut notes = Notifications::bind(&notify_path);
    let one = format!("[endpoints.a]\nurl = \"{}\"\n", up.url("/a"));
    let config = write_config(dir.path(), &daemon_config(dir.path(), &one));
    let mut child = Spawned::new(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon"),
    );
    notes.wait_for("READY=1", |m| m == "READY=1").await;
    let _a = up.next_accepted_within(T).await.expect("a connects");

    // Add `b`.
    let two = format!("{one}[endpoints.b]\nurl = \"{}\"\n", up.url("/b"));
    write_config(dir.path(), &daemon_config(dir.path(), &two));
    let pid = child.id().to_string();
    let hup = || {
        let st = Command::new("kill").args(["-HUP", &pid]).status();
        assert!(st.expect("kill").success());
    };
    hup();
    notes.wait_for("RELOADING=1", |m| m == "RELOADING=1").await;
    notes
        .wait_for("READY=1 after the reload", |m| m == "READY=1")
        .await;
    let b = up.next_accepted_within(T).await.expect("b connects");
    assert_eq!(b.uri().path(), "/b");
    // The upstream accepting is not yet the daemon calling it connected: the STATUS= after the
    // refused reload below reports the states of that moment, and once said "1 connecting".
    notes
        .wait_for("STATUS with both endpoints connected", |m| {
            m.starts_with("STATUS=") && m.ends_with("2 endpoints: 2 connected")
        })
        .await;

    // An invalid file changes nothing and the daemon stays up.
    write_config(
        dir.path(),
        &daemon_config(dir.path(), "[endpoints.a]\nurl = 5\n"),
    );
    hup();
    notes.wait_for("RELOADING=1", |m| m == "RELOADING=1").await;
    notes
        .wait_for("READY=1 after the refused reload", |m| m == "READY=1")
        .await;
    assert!(child.try_wait().expect("wait").is_none(), "still running");
    assert_eq!(up.accepted(), 2, "no endpoint reconnected");
    // systemd shows the refusal until a reload succeeds.
    let status = notes
        .wait_for("STATUS saying the reload was refused", |m| {
            m.starts_with("STATUS=reload refused: ")
        })
        .await;
    assert!(
        status.contains("config.toml: endpoints.a.url: expected a ws:// or wss:// URL")
            && status.ends_with("; 2 endpoints: 2 connected"),
        "{status}"
    );
    write_config(dir.path(), &daemon_config(dir.path(), &two));
    hup();
    notes.wait_for("RELOADING=1", |m| m == "RELOADING=1").await;
    let status = notes
        .wait_for("STATUS without the refusal", |m| {
            m.starts_with("STATUS=2 endpoints")
        })
        .await;
    assert!(status.contains("2 connected"), "{status}");
    assert_eq!(up.accepted(), 2, "no endpoint reconnected");
    tokio::task::block_in_place(|| sigterm_and_wait(&mut child));
}

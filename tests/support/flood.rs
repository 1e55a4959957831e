//! A stream of numbered ~1 KB text messages from the fake upstream, paced by a reading
//! subscriber so that the reader never falls out of a small replay window, however starved the
//! machine running the test is: the tests that use it are about the *other* subscriber, the one
//! that stopped reading.

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::UpConn;

/// Lets the flood run ahead of the reader by at most a fixed number of messages.
pub struct Pace(watch::Sender<u64>);

impl Pace {
    /// Records that the reader has everything up to `seq`.
    pub fn read(&self, seq: u64) {
        self.0.send_replace(seq);
    }
}

/// Sends messages `1..=n` (payload `{i:08}` then 1,000 `x`), never more than `ahead` past the
/// last seq given to [`Pace::read`]; the task then keeps the connection open, so the endpoint
/// stays connected until the test ends.
pub fn paced(conn: UpConn, n: u64, ahead: u64) -> (JoinHandle<()>, Pace) {
    let (tx, mut rx) = watch::channel(0u64);
    let payload = "x".repeat(1000);
    let task = tokio::spawn(async move {
        for i in 1..=n {
            // A reader that is done (its Pace dropped) no longer holds the flood back.
            let _ = rx.wait_for(|read| i <= read + ahead).await;
            conn.send_text(&format!("{i:08}{payload}"))
                .await
                .expect("send");
        }
        std::future::pending::<()>().await;
    });
    (task, Pace(tx))
}

/// Sends messages `1..=n` as fast as the socket takes them, for tests with no reader to pace by.
pub fn unpaced(conn: UpConn, n: u64) -> JoinHandle<()> {
    let (task, pace) = paced(conn, n, n);
    drop(pace);
    task
}

//! What a protocol fake saw, kept one way for the fakes written from public specifications
//! ([`super::jsonrpc`], [`super::graphql_ws`], [`super::socketio`]): its connections in accept
//! order (0-based), the frames each one received, the fake's own per-connection protocol state,
//! and the breaches of the protocol it caught. Everything lives in one `watch` channel so a test
//! waits for any condition over it ([`Journal::wait`]) instead of sleeping.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::anyhow;
use serde_json::Value;
use tokio::sync::watch;

use super::UpConn;

/// One connection as the fake saw it.
#[derive(Clone, Debug, Default)]
pub struct ConnLog<C> {
    /// Every text frame received, in order: parsed JSON where the protocol is JSON, else the
    /// raw text as a JSON string.
    pub frames: Vec<Value>,
    /// False once the socket is gone.
    pub open: bool,
    /// The fake's protocol state for this connection.
    pub state: C,
}

/// Everything a fake saw so far.
#[derive(Clone, Debug)]
pub struct Seen<C> {
    pub conns: Vec<ConnLog<C>>,
    pub faults: Vec<String>,
}

/// The record of one fake server; `C` is its per-connection state.
pub struct Journal<C> {
    /// Names the fake in messages.
    name: &'static str,
    seen: watch::Sender<Seen<C>>,
    /// The socket of every connection, by index.
    wires: Mutex<Vec<UpConn>>,
}

impl<C: Clone + Default> Journal<C> {
    /// An empty journal for the fake called `name`.
    pub fn new(name: &'static str) -> Journal<C> {
        Journal {
            name,
            seen: watch::Sender::new(Seen {
                conns: Vec::new(),
                faults: Vec::new(),
            }),
            wires: Mutex::new(Vec::new()),
        }
    }

    /// Registers a newly accepted connection; returns its index.
    pub fn open(&self, conn: UpConn) -> usize {
        let mut wires = lock(&self.wires);
        wires.push(conn);
        let index = wires.len() - 1;
        // Under the wires lock, so indexes in both lists agree.
        self.seen.send_modify(|seen| {
            seen.conns.push(ConnLog {
                frames: Vec::new(),
                open: true,
                state: C::default(),
            })
        });
        index
    }

    /// Marks connection `index` as gone.
    pub fn close(&self, index: usize) {
        self.conn(index, |c| c.open = false);
    }

    /// Records a frame connection `index` received.
    pub fn frame(&self, index: usize, frame: Value) {
        self.conn(index, |c| c.frames.push(frame));
    }

    /// Records a breach of the protocol.
    pub fn fault(&self, why: String) {
        eprintln!("fake {}: {why}", self.name);
        self.seen.send_modify(|seen| seen.faults.push(why));
    }

    /// Changes anything and wakes the waiters; returns what `f` returns.
    pub fn update<R>(&self, f: impl FnOnce(&mut Seen<C>) -> R) -> R {
        let mut out = None;
        self.seen.send_modify(|seen| out = Some(f(seen)));
        out.expect("send_modify runs its closure")
    }

    /// Changes connection `index` (if it exists); returns what `f` returns.
    pub fn conn<R: Default>(&self, index: usize, f: impl FnOnce(&mut ConnLog<C>) -> R) -> R {
        self.update(|seen| seen.conns.get_mut(index).map(f).unwrap_or_default())
    }

    /// A copy of everything seen so far.
    pub fn snapshot(&self) -> Seen<C> {
        self.seen.borrow().clone()
    }

    /// Every breach caught so far; tests assert it is empty.
    pub fn faults(&self) -> Vec<String> {
        self.seen.borrow().faults.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.seen.borrow().conns.len()
    }

    /// The frames connection `index` received so far.
    pub fn frames(&self, index: usize) -> Vec<Value> {
        self.seen
            .borrow()
            .conns
            .get(index)
            .map(|c| c.frames.clone())
            .unwrap_or_default()
    }

    /// The state of connection `index`.
    pub fn state(&self, index: usize) -> Option<C> {
        self.seen.borrow().conns.get(index).map(|c| c.state.clone())
    }

    /// The socket of connection `index`.
    pub fn wire(&self, index: usize) -> Option<UpConn> {
        lock(&self.wires).get(index).cloned()
    }

    /// Every connection still open, with its index.
    pub fn open_wires(&self) -> Vec<(usize, UpConn)> {
        let open: Vec<bool> = self.seen.borrow().conns.iter().map(|c| c.open).collect();
        lock(&self.wires)
            .iter()
            .enumerate()
            .filter(|(index, _)| open.get(*index).copied().unwrap_or(false))
            .map(|(index, wire)| (index, wire.clone()))
            .collect()
    }

    /// Resets the TCP of every open connection (no close frame), as a network failure does, so
    /// the client has to reconnect; returns how many there were.
    pub async fn drop_all(&self) -> usize {
        let wires = self.open_wires();
        for (index, wire) in &wires {
            let _ = wire.reset().await;
            self.close(*index);
        }
        wires.len()
    }

    /// Waits until `f` holds over what was seen, at most `within`; `what` names the condition in
    /// the error, which also lists the faults.
    pub async fn wait(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&Seen<C>) -> bool,
    ) -> anyhow::Result<Seen<C>> {
        let mut rx = self.seen.subscribe();
        let found = match tokio::time::timeout(within, rx.wait_for(|seen| f(seen))).await {
            Ok(Ok(seen)) => Some(seen.clone()),
            _ => None,
        };
        match found {
            Some(seen) => Ok(seen),
            None => Err(anyhow!(
                "fake {}: not {what} within {within:?} ({} connection(s), faults {:?})",
                self.name,
                self.connections(),
                self.faults()
            )),
        }
    }

    /// Waits until `n` connections have been accepted in total.
    pub async fn wait_connections(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let what = format!("{n} connection(s)");
        self.wait(within, &what, |seen| seen.conns.len() >= n)
            .await
            .map(drop)
    }

    /// Waits until connection `index` has received `n` frames; returns them all.
    pub async fn wait_frames(
        &self,
        index: usize,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let what = format!("{n} frame(s) on connection {index}");
        let seen = self
            .wait(within, &what, |seen| {
                seen.conns.get(index).is_some_and(|c| c.frames.len() >= n)
            })
            .await?;
        Ok(seen.conns[index].frames.clone())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

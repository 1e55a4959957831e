//! A fake Discord gateway (API v10) on top of [`FakeUpstream`], written from the gateway
//! documentation (https://discord.com/developers/docs/events/gateway) and enforcing it: Hello
//! first, and nothing from the client before it; Identify or Resume within one heartbeat
//! interval; a heartbeat at least every interval (plus slack) or the connection is closed with
//! 4000, carrying the last sequence received (never one not sent, never going back to an older
//! one or to null); an Identify with a wrong token closes with 4004, a second one with 4005, anything but
//! a heartbeat before it with 4003; a Resume anywhere but on the session's resume_gateway_url,
//! or for a session that is unknown or forgotten, or from a sequence it never sent, gets
//! Invalid Session (op 9, d = false); a Resume replays every dispatch after the given sequence,
//! then RESUMED. Sequence numbers start at 1 in every session. With `compress=zlib-stream` in
//! the URL every message goes out as the next sync-flushed part of one zlib stream per
//! connection. Every breach is recorded in [`FakeDiscord::faults`].

use super::compress::sync_flushed;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, FlushCompress};
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex};
use tokio_tungstenite::tungstenite::Message;

use super::recipe::TOKEN;
use super::{FakeUpstream, Reply, UpConn};

/// How long the gateway waits before its Hello: a client that speaks first is caught.
const HELLO_DELAY: Duration = Duration::from_millis(60);

/// One connection's sending half: the socket and, with zlib-stream, its compression context.
struct Wire {
    conn: UpConn,
    /// One zlib stream for the connection's life, as Discord's transport compression is.
    z: Mutex<Option<Compress>>,
    /// Which connection this is (0-based, in accept order).
    index: usize,
}

impl Wire {
    async fn send(&self, v: &Value) {
        let text = v.to_string();
        let mut z = self.z.lock().await;
        let _ = match z.as_mut() {
            Some(c) => {
                self.conn
                    .send_binary(sync_flushed(c, text.as_bytes()))
                    .await
            }
            None => self.conn.send_text(&text).await,
        };
    }
}

/// A gateway session: its dispatches (for Resume) and the connection it is attached to.
struct GwSession {
    seq: u64,
    log: Vec<(u64, Value)>,
    /// Where dispatches go now; `None` while nobody is attached (they wait for a Resume).
    wire: Option<Arc<Wire>>,
    /// After a Reconnect (op 7): how many more dispatches still go to the old connection.
    in_flight: Option<usize>,
}

/// A heartbeat the gateway received.
#[derive(Debug, Clone)]
pub struct Beat {
    /// The connection it came on.
    pub conn: usize,
    pub d: Value,
    pub at: Instant,
}

/// What the gateway saw, for assertions.
#[derive(Default)]
struct Gw {
    sessions: HashMap<String, GwSession>,
    /// The session dispatches go to (the latest identified).
    current: Option<String>,
    made: usize,
    faults: Vec<String>,
    identifies: usize,
    /// (session id, seq) of every accepted Resume.
    resumes: Vec<(String, u64)>,
    invalid_sessions: usize,
    /// Paths of every connection, in accept order.
    paths: Vec<String>,
}

struct Shared {
    gw: Mutex<Gw>,
    heartbeat: Duration,
    /// Every heartbeat, in order.
    beats: watch::Sender<Vec<Beat>>,
    resume_url: std::sync::OnceLock<String>,
    conns: AtomicUsize,
}

/// A fake Discord gateway. The test makes dispatches happen ([`FakeDiscord::dispatch`]) and
/// plays Discord's part in reconnects ([`FakeDiscord::reconnect`],
/// [`FakeDiscord::forget_sessions`], [`FakeDiscord::close_current`]).
pub struct FakeDiscord {
    pub up: FakeUpstream,
    shared: Arc<Shared>,
}

impl FakeDiscord {
    /// A gateway that asks for a heartbeat every `heartbeat`.
    pub async fn start(heartbeat: Duration) -> FakeDiscord {
        let shared = Arc::new(Shared {
            gw: Mutex::new(Gw::default()),
            heartbeat,
            beats: watch::Sender::new(Vec::new()),
            resume_url: std::sync::OnceLock::new(),
            conns: AtomicUsize::new(0),
        });
        let on_accept = {
            let shared = Arc::clone(&shared);
            move |c: UpConn| {
                let index = shared.conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(Arc::clone(&shared), c, index));
            }
        };
        let up = FakeUpstream::start_with_handler(|_, _| Reply::Accept, on_accept).await;
        let _ = shared.resume_url.set(up.url("/resume"));
        FakeDiscord { up, shared }
    }

    /// The gateway URL, with the query an app would use.
    pub fn url(&self, compress: bool) -> String {
        let z = if compress {
            "&compress=zlib-stream"
        } else {
            ""
        };
        self.up.url(&format!("/?v=10&encoding=json{z}"))
    }

    /// A MESSAGE_CREATE dispatch in the current session, carrying `n`; returns its sequence.
    pub async fn dispatch(&self, n: u64) -> u64 {
        let mut gw = self.shared.gw.lock().await;
        let Some(id) = gw.current.clone() else {
            panic!("fake Discord: no session to dispatch in");
        };
        let s = gw.sessions.get_mut(&id).expect("current session");
        s.seq += 1;
        let v = json!({"op": 0, "t": "MESSAGE_CREATE", "s": s.seq, "d": {"content": "hi", "n": n}});
        s.log.push((s.seq, v.clone()));
        let to = s.wire.clone();
        if let Some(left) = s.in_flight.as_mut() {
            if *left == 0 {
                s.wire = None;
            } else {
                *left -= 1;
            }
        }
        let seq = s.seq;
        if let Some(w) = to.filter(|_| s.wire.is_some()) {
            w.send(&v).await;
        }
        seq
    }

    /// Sends Reconnect (op 7) on the current session's connection; the next `in_flight`
    /// dispatches still go there (they were on their way), later ones wait for a Resume. The
    /// connection is closed `close_after` later if the client has not left by then.
    pub async fn reconnect(&self, in_flight: usize, close_after: Duration) {
        let gw = &mut *self.shared.gw.lock().await;
        let id = gw.current.clone().expect("a session");
        let s = gw.sessions.get_mut(&id).expect("current session");
        let w = s.wire.clone().expect("attached");
        s.in_flight = Some(in_flight);
        w.send(&json!({"op": 7, "d": null, "s": null, "t": null}))
            .await;
        tokio::spawn(async move {
            tokio::time::sleep(close_after).await;
            let _ = w.conn.close(4000, "reconnect").await;
        });
    }

    /// Forgets every session and closes their connections with `code`, as a gateway restart
    /// does: a Resume gets Invalid Session.
    pub async fn forget_sessions(&self, code: u16) {
        let wires: Vec<Arc<Wire>> = {
            let mut gw = self.shared.gw.lock().await;
            gw.sessions.drain().filter_map(|(_, s)| s.wire).collect()
        };
        for w in wires {
            let _ = w.conn.close(code, "restarting").await;
        }
    }

    /// Closes the connection of the current session with `code`.
    pub async fn close_current(&self, code: u16) {
        let gw = self.shared.gw.lock().await;
        let w = gw
            .current
            .as_ref()
            .and_then(|id| gw.sessions.get(id))
            .and_then(|s| s.wire.clone());
        drop(gw);
        if let Some(w) = w {
            let _ = w.conn.close(code, "closing").await;
        }
    }

    /// Waits until the heartbeats so far satisfy `f`, within `within`; returns them.
    pub async fn wait_beats(&self, within: Duration, f: impl Fn(&[Beat]) -> bool) -> Vec<Beat> {
        let mut rx = self.shared.beats.subscribe();
        let found = match tokio::time::timeout(within, rx.wait_for(|b| f(b))).await {
            Ok(Ok(beats)) => Some(beats.clone()),
            _ => None,
        };
        found.unwrap_or_else(|| {
            panic!(
                "fake Discord: heartbeats not as expected within {within:?}: {:?}",
                self.beats()
            )
        })
    }

    /// Every heartbeat so far.
    pub fn beats(&self) -> Vec<Beat> {
        self.shared.beats.borrow().clone()
    }

    /// Asks the current session's connection for a heartbeat now (op 1).
    pub async fn request_heartbeat(&self) {
        let gw = self.shared.gw.lock().await;
        let w = gw
            .current
            .as_ref()
            .and_then(|id| gw.sessions.get(id))
            .and_then(|s| s.wire.clone())
            .expect("attached");
        drop(gw);
        w.send(&json!({"op": 1, "d": null, "s": null, "t": null}))
            .await;
    }

    /// Every breach of the gateway's rules the client committed.
    pub async fn faults(&self) -> Vec<String> {
        self.shared.gw.lock().await.faults.clone()
    }

    /// (identifies, accepted resumes, invalid sessions sent, connection paths).
    pub async fn tally(&self) -> (usize, Vec<(String, u64)>, usize, Vec<String>) {
        let gw = self.shared.gw.lock().await;
        (
            gw.identifies,
            gw.resumes.clone(),
            gw.invalid_sessions,
            gw.paths.clone(),
        )
    }
}

async fn fault(shared: &Shared, c: &UpConn, code: u16, why: String) {
    eprintln!("fake Discord: {why}");
    shared.gw.lock().await.faults.push(why);
    let _ = c.close(code, "fake Discord: rule broken").await;
}

/// One gateway connection, from Hello to its end.
async fn serve(shared: Arc<Shared>, c: UpConn, index: usize) {
    let target = c.uri().to_string();
    shared.gw.lock().await.paths.push(c.uri().path().to_owned());
    let query = c.uri().query().unwrap_or_default().to_owned();
    let params: Vec<&str> = query.split('&').collect();
    if !params.contains(&"v=10") || !params.contains(&"encoding=json") {
        return fault(
            &shared,
            &c,
            4012,
            format!("connected to {target} without v=10&encoding=json"),
        )
        .await;
    }
    let compress = params.contains(&"compress=zlib-stream");
    let wire = Arc::new(Wire {
        conn: c.clone(),
        z: Mutex::new(compress.then(|| Compress::new(Compression::default(), true))),
        index,
    });
    if let Ok(Some(m)) = c.recv_timeout(HELLO_DELAY).await {
        return fault(
            &shared,
            &c,
            4002,
            format!("conn {index}: sent before Hello: {m:?}"),
        )
        .await;
    }
    let hb = shared.heartbeat;
    wire.send(&json!({"op": 10, "d": {"heartbeat_interval": hb.as_millis() as u64}, "s": null, "t": null}))
        .await;
    let slack = hb / 2 + Duration::from_millis(400);
    let hello_at = tokio::time::Instant::now();
    let mut last_beat = hello_at;
    let mut session: Option<String> = None;
    // The sequence the last heartbeat carried: a later one never goes back (nor to null).
    let mut last_d: Option<u64> = None;
    loop {
        let mut deadline = last_beat + hb + slack;
        if session.is_none() {
            deadline = deadline.min(hello_at + hb + slack);
        }
        let m = match tokio::time::timeout_at(deadline, c.recv()).await {
            Err(_) => {
                let why = match session {
                    None => "no Identify or Resume within the heartbeat interval",
                    Some(_) => "no heartbeat within the interval",
                };
                return fault(&shared, &c, 4000, format!("conn {index}: {why}")).await;
            }
            Ok(None) | Ok(Some(Message::Close(_))) => break,
            Ok(Some(Message::Text(t))) => t,
            Ok(Some(other)) => {
                return fault(
                    &shared,
                    &c,
                    4002,
                    format!("conn {index}: not JSON text: {other:?}"),
                )
                .await
            }
        };
        let Ok(v) = serde_json::from_str::<Value>(m.as_str()) else {
            return fault(&shared, &c, 4002, format!("conn {index}: not JSON: {m}")).await;
        };
        match v["op"].as_u64() {
            Some(1) => {
                let mut gw = shared.gw.lock().await;
                let sent = session
                    .as_ref()
                    .and_then(|id| gw.sessions.get(id))
                    .map_or(0, |s| s.seq);
                let d = v["d"].clone();
                let ok = match d.as_u64() {
                    Some(n) => n <= sent && last_d.is_none_or(|l| n >= l),
                    None => d.is_null() && last_d.is_none(),
                };
                last_d = d.as_u64().or(last_d);
                if !ok {
                    gw.faults.push(format!(
                        "conn {index}: heartbeat {v} but the session is at {sent}"
                    ));
                }
                drop(gw);
                shared.beats.send_modify(|b| {
                    b.push(Beat {
                        conn: index,
                        d,
                        at: Instant::now(),
                    })
                });
                last_beat = tokio::time::Instant::now();
                wire.send(&json!({"op": 11, "d": null, "s": null, "t": null}))
                    .await;
            }
            Some(2) => {
                if session.is_some() {
                    return fault(&shared, &c, 4005, format!("conn {index}: identified twice"))
                        .await;
                }
                let d = &v["d"];
                let props = &d["properties"];
                if d["token"] != TOKEN
                    || !d["intents"].is_u64()
                    || !props["os"].is_string()
                    || !props["browser"].is_string()
                    || !props["device"].is_string()
                {
                    return fault(&shared, &c, 4004, format!("conn {index}: bad Identify {v}"))
                        .await;
                }
                let mut gw = shared.gw.lock().await;
                gw.identifies += 1;
                gw.made += 1;
                let id = format!("session-{}", gw.made);
                let ready = json!({"op": 0, "t": "READY", "s": 1, "d": {
                    "v": 10, "session_id": id,
                    "resume_gateway_url": shared.resume_url.get().expect("set"),
                    "user": {"id": "1", "username": "bot"}, "guilds": []}});
                gw.sessions.insert(
                    id.clone(),
                    GwSession {
                        seq: 1,
                        log: vec![(1, ready.clone())],
                        wire: Some(Arc::clone(&wire)),
                        in_flight: None,
                    },
                );
                gw.current = Some(id.clone());
                wire.send(&ready).await;
                session = Some(id);
            }
            Some(6) => {
                if session.is_some() {
                    return fault(
                        &shared,
                        &c,
                        4005,
                        format!("conn {index}: resumed after identifying"),
                    )
                    .await;
                }
                let d = &v["d"];
                if d["token"] != TOKEN {
                    return fault(&shared, &c, 4004, format!("conn {index}: bad Resume token"))
                        .await;
                }
                let id = d["session_id"].as_str().unwrap_or_default().to_owned();
                let from = d["seq"].as_u64();
                let mut gw = shared.gw.lock().await;
                let on_resume_url = c.uri().path().starts_with("/resume");
                let known = gw.sessions.get(&id).map(|s| s.seq);
                match (known, from) {
                    (Some(at), Some(from)) if on_resume_url && from <= at => {
                        gw.resumes.push((id.clone(), from));
                        gw.current = Some(id.clone());
                        let s = gw.sessions.get_mut(&id).expect("known");
                        s.wire = Some(Arc::clone(&wire));
                        s.in_flight = None;
                        for (_, m) in s.log.iter().filter(|(n, _)| *n > from) {
                            wire.send(m).await;
                        }
                        s.seq += 1;
                        let resumed = json!({"op": 0, "t": "RESUMED", "s": s.seq, "d": null});
                        s.log.push((s.seq, resumed.clone()));
                        wire.send(&resumed).await;
                        session = Some(id);
                    }
                    _ => {
                        eprintln!("fake Discord: conn {index}: cannot resume {id} from {from:?} on {target}");
                        gw.invalid_sessions += 1;
                        wire.send(&json!({"op": 9, "d": false, "s": null, "t": null}))
                            .await;
                    }
                }
            }
            _ if session.is_none() => {
                return fault(
                    &shared,
                    &c,
                    4003,
                    format!("conn {index}: {v} before identifying"),
                )
                .await;
            }
            _ => {
                shared
                    .gw
                    .lock()
                    .await
                    .faults
                    .push(format!("conn {index}: unexpected {v}"));
            }
        }
    }
    // The connection ended: its session waits for a Resume.
    let mut gw = shared.gw.lock().await;
    for s in gw.sessions.values_mut() {
        if s.wire.as_ref().is_some_and(|w| w.index == index) {
            s.wire = None;
        }
    }
}

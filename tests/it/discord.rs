//! `docs/recipes/discord.toml` as written (only the URLs, the token and timings swapped) against
//! a fake Discord gateway that enforces the documented rules ([`FakeDiscord`]): a new session
//! with its heartbeats, a Reconnect (op 7) resumed on resume_gateway_url, a dropped connection
//! resumed, a forgotten session identified afresh, a daemon restart resumed. The app only
//! subscribes; it sees every dispatch once, in order.

use std::time::Duration;

use ws_sidecar::config::EndpointConfig;
use ws_sidecar::proto;

use crate::support::daemon::{next_message, start_with, subscribe};
use crate::support::discord::FakeDiscord;
use crate::support::recipe::recipe;

const T: Duration = Duration::from_secs(10);

/// The recipe pointed at `fake`: the gateway URL swapped, and its query kept as the recipe
/// writes it (with or without compression); resume.url is the recipe's own.
fn discord(fake: &FakeDiscord, compress: bool) -> ws_sidecar::config::Config {
    recipe("discord", "discord", &fake.url(compress), |ep| {
        if !compress {
            plain_json(ep);
        }
    })
}

/// What the recipe's comment says to change for plain JSON.
fn plain_json(ep: &mut EndpointConfig) {
    ep.decode = Default::default();
    let r = ep.resume.as_mut().expect("resume");
    r.url = r
        .url
        .as_ref()
        .map(|u| u.replace("&compress=zlib-stream", ""));
}

fn payload(m: &proto::Message) -> serde_json::Value {
    serde_json::from_slice(&m.data).unwrap_or(serde_json::Value::Null)
}

/// Reads messages until `n` MESSAGE_CREATE dispatches came; returns their `n`s and the event
/// names of the others (READY, RESUMED), checking seqs stay contiguous and every dispatch has
/// an `s` above the last one of its session.
async fn read_events(
    sub: &mut tonic::Streaming<proto::Event>,
    n: usize,
    last_seq: &mut u64,
) -> (Vec<u64>, Vec<String>) {
    let (mut got, mut others) = (Vec::new(), Vec::new());
    while got.len() < n {
        let m = next_message(sub, T).await;
        assert_eq!(m.seq, *last_seq + 1, "seqs contiguous");
        *last_seq = m.seq;
        let v = payload(&m);
        assert_eq!(v["op"], 0, "only dispatches reach apps: {v}");
        match v["t"].as_str() {
            Some("MESSAGE_CREATE") => got.push(v["d"]["n"].as_u64().expect("n")),
            Some(t) => others.push(t.to_owned()),
            None => panic!("a dispatch without t: {v}"),
        }
    }
    (got, others)
}

async fn identify_then_events(compress: bool) {
    let fake = FakeDiscord::start(Duration::from_millis(800)).await;
    let d = start_with(discord(&fake, compress)).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "discord", None).await;
    let ready = payload(&next_message(&mut sub, T).await);
    assert_eq!(
        (ready["t"].as_str(), ready["s"].as_u64()),
        (Some("READY"), Some(1))
    );
    let mut last_seq = 1;
    for n in 0..20 {
        fake.dispatch(n).await;
    }
    let (got, others) = read_events(&mut sub, 20, &mut last_seq).await;
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert!(others.is_empty(), "{others:?}");
    // The heartbeat carries the last sequence the session sent.
    fake.wait_beats(T, |b| b.iter().any(|b| b.d == 21)).await;
    // Asked for a heartbeat right after one, the daemon answers at once, not at the next one.
    let n = fake.beats().len();
    fake.wait_beats(T, |b| b.len() > n).await;
    let asked = std::time::Instant::now();
    fake.request_heartbeat().await;
    let beats = fake.wait_beats(T, |b| b.iter().any(|b| b.at > asked)).await;
    let answer = beats.iter().find(|b| b.at > asked).expect("found").at - asked;
    assert!(
        answer < Duration::from_millis(400),
        "op 1 answered at once, not after {answer:?}"
    );
    let (identifies, resumes, invalid, _) = fake.tally().await;
    assert_eq!((identifies, resumes.len(), invalid), (1, 0, 0));
    assert_eq!(fake.faults().await, Vec::<String>::new());
    d.stop().await;
}

#[tokio::test]
async fn a_new_session_delivers_ready_and_dispatches_and_heartbeats_carry_the_seq() {
    identify_then_events(true).await;
}

#[tokio::test]
async fn plain_json_without_compression_works_the_same() {
    identify_then_events(false).await;
}

/// Reconnect (op 7): the daemon opens a connection to resume_gateway_url while the old one
/// still delivers, resumes from the last dispatch it had when it began; the gateway replays
/// from there (the three dispatches the old connection carried after op 7 among them, which
/// are dropped as duplicates) and what waited for the Resume.
#[tokio::test]

async fn reconnect_resumes_on_the_resume_url_and_every_dispatch_arrives_once() {
    let fake = FakeDiscord::start(Duration::from_millis(800)).await;
    let d = start_with(discord(&fake, true)).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "discord", None).await;
    assert_eq!(payload(&next_message(&mut sub, T).await)["t"], "READY");
    let mut last_seq = 1;
    for n in 0..10 {
        fake.dispatch(n).await;
    }
    let (got, _) = read_events(&mut sub, 10, &mut last_seq).await;
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    fake.reconnect(3, Duration::from_secs(3)).await;
    for n in 10..15 {
        fake.dispatch(n).await;
    }
    let (got, _) = read_events(&mut sub, 5, &mut last_seq).await;
    assert_eq!(
        got,
        (10..15).collect::<Vec<_>>(),
        "nothing lost across the switch"
    );
    for n in 15..20 {
        fake.dispatch(n).await;
    }
    let (got, others) = read_events(&mut sub, 5, &mut last_seq).await;
    assert_eq!(got, (15..20).collect::<Vec<_>>(), "each once, in order");
    assert_eq!(others, vec!["RESUMED".to_owned()]);
    let (identifies, resumes, invalid, paths) = fake.tally().await;
    assert_eq!(paths, ["/", "/resume/"], "resumed on resume_gateway_url");
    assert_eq!((identifies, resumes.len(), invalid), (1, 1, 0));
    assert_eq!(fake.faults().await, Vec::<String>::new());
    d.stop().await;
}

/// The gateway drops the connection: the daemon reconnects to resume_gateway_url and resumes;
/// what was dispatched meanwhile is replayed and delivered once.
#[tokio::test]
async fn a_dropped_connection_resumes_on_the_resume_url() {
    let fake = FakeDiscord::start(Duration::from_millis(800)).await;
    let d = start_with(discord(&fake, true)).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "discord", None).await;
    assert_eq!(payload(&next_message(&mut sub, T).await)["t"], "READY");
    let mut last_seq = 1;
    for n in 0..10 {
        fake.dispatch(n).await;
    }
    let (got, _) = read_events(&mut sub, 10, &mut last_seq).await;
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    fake.close_current(4000).await;
    // Dispatched while nobody is attached: they wait for the Resume.
    for n in 10..15 {
        fake.dispatch(n).await;
    }
    let (got, others) = read_events(&mut sub, 5, &mut last_seq).await;
    assert_eq!(
        got,
        (10..15).collect::<Vec<_>>(),
        "replayed, once, in order"
    );
    for n in 15..20 {
        fake.dispatch(n).await;
    }
    let (more, after) = read_events(&mut sub, 5, &mut last_seq).await;
    assert_eq!(more, (15..20).collect::<Vec<_>>());
    let names: Vec<String> = others.into_iter().chain(after).collect();
    assert_eq!(names, vec!["RESUMED".to_owned()]);
    let (identifies, resumes, invalid, paths) = fake.tally().await;
    assert_eq!(paths, ["/", "/resume/"]);
    assert_eq!(
        resumes,
        vec![("session-1".to_owned(), 11)],
        "from the last dispatch delivered"
    );
    assert_eq!((identifies, invalid), (1, 0));
    assert_eq!(fake.faults().await, Vec::<String>::new());
    d.stop().await;
}

/// The gateway forgot the session: the Resume gets Invalid Session (d = false), and the daemon
/// identifies afresh on a new connection; the app gets the new READY and the new session's
/// dispatches, whose sequence starts at 1 again (not dropped as old ids).
#[tokio::test]
async fn a_forgotten_session_is_identified_afresh() {
    let fake = FakeDiscord::start(Duration::from_millis(800)).await;
    let d = start_with(discord(&fake, true)).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "discord", None).await;
    assert_eq!(payload(&next_message(&mut sub, T).await)["t"], "READY");
    let mut last_seq = 1;
    for n in 0..5 {
        fake.dispatch(n).await;
    }
    let (got, _) = read_events(&mut sub, 5, &mut last_seq).await;
    assert_eq!(got, (0..5).collect::<Vec<_>>());
    fake.forget_sessions(4000).await;
    let ready = next_message(&mut sub, T).await;
    assert_eq!(ready.seq, last_seq + 1);
    last_seq = ready.seq;
    let ready = payload(&ready);
    assert_eq!(
        (
            ready["t"].as_str(),
            ready["s"].as_u64(),
            ready["d"]["session_id"].as_str()
        ),
        (Some("READY"), Some(1), Some("session-2"))
    );
    for n in 5..10 {
        fake.dispatch(n).await;
    }
    let (got, others) = read_events(&mut sub, 5, &mut last_seq).await;
    assert_eq!(
        got,
        (5..10).collect::<Vec<_>>(),
        "s 2..6 again, a new session's"
    );
    assert!(others.is_empty(), "{others:?}");
    let (identifies, resumes, invalid, paths) = fake.tally().await;
    assert_eq!(paths, ["/", "/resume/", "/"]);
    assert_eq!((identifies, resumes.len(), invalid), (2, 0, 1));
    assert_eq!(fake.faults().await, Vec::<String>::new());
    d.stop().await;
}

/// A daemon restart resumes the session: what was dispatched while it was down is replayed
/// on resume_gateway_url and delivered after what the app already had.
#[tokio::test]

async fn a_daemon_restart_resumes_the_session() {
    let fake = FakeDiscord::start(Duration::from_millis(800)).await;
    let d = start_with(discord(&fake, true)).await;
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "discord", None).await;
    assert_eq!(payload(&next_message(&mut sub, T).await)["t"], "READY");
    let mut last_seq = 1;
    for n in 0..5 {
        fake.dispatch(n).await;
    }
    read_events(&mut sub, 5, &mut last_seq).await;
    drop((sub, client));
    let d = d.restart(discord(&fake, true)).await;
    for n in 5..10 {
        fake.dispatch(n).await;
    }
    let mut client = d.grpc().await;
    let mut sub = subscribe(&mut client, "discord", Some(last_seq)).await;
    let (got, mut others) = read_events(&mut sub, 5, &mut last_seq).await;
    assert_eq!(got, (5..10).collect::<Vec<_>>());
    // RESUMED follows the replay: before these dispatches if the daemon resumed before they
    // were sent, after them if they were replayed.
    if others.is_empty() {
        let v = payload(&next_message(&mut sub, T).await);
        others.push(v["t"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(others, vec!["RESUMED".to_owned()]);
    let (identifies, resumes, invalid, paths) = fake.tally().await;
    assert_eq!(paths, ["/", "/resume/"]);
    assert_eq!(resumes, vec![("session-1".to_owned(), 6)]);
    assert_eq!((identifies, invalid), (1, 0));
    assert_eq!(fake.faults().await, Vec::<String>::new());
    d.stop().await;
}

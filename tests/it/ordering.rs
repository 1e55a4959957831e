//! Per endpoint, every subscriber sees messages and state changes in the order they happened
//! (issue 12, item 11): a state change is delivered after every message that arrived before it.

use std::time::Duration;

use ws_sidecar::endpoint::State;
use ws_sidecar::proto::event::Event as Ev;

use crate::support::daemon::{next_event, start_daemon, state_name, subscribe};
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(10);

/// Messages per connection before the upstream closes it.
const BURST: usize = 40;

/// An upstream that sends a burst and closes right after the last frame, `rounds` times: the
/// `backoff` that follows each close must reach a subscriber after the whole burst.
async fn burst_then_close(extra: &str, rounds: usize) {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\n{extra}\n[endpoints.feed.backoff]\ninitial = \"1ms\"\nmax = \"5ms\"\nmin_delay = \"1ms\"\n",
        up.url("/feed")
    ))
    .await;
    let mut client = d.grpc().await;
    let mut grpc = subscribe(&mut client, "feed", None).await;
    let mut ndjson = d.ndjson().await;
    ndjson
        .send(serde_json::json!({"op": "subscribe", "endpoint": "feed"}))
        .await;
    // The NDJSON subscription is live once its first state line is out.
    ndjson.recv_type("state", T).await;
    d.wait_state("feed", State::Connected, T).await;

    let upstream = async {
        for round in 0..rounds {
            let conn = up.next_accepted_within(T).await.expect("connection");
            for i in 0..BURST {
                conn.send_text(&format!(
                    "{{\"id\":{},\"round\":{round},\"i\":{i}}}",
                    round * BURST + i + 1
                ))
                .await
                .expect("send");
            }
            conn.close(1001, "going away").await.expect("close");
        }
    };
    let check_grpc =
        async {
            // Messages of the round in progress seen so far.
            let (mut round, mut seen) = (0usize, 0usize);
            while round < rounds {
                match next_event(&mut grpc, T).await {
                    Ev::Key(k) => panic!("a Subscribe stream carries no key changes: {k:?}"),
                    Ev::Message(m) => {
                        let v: serde_json::Value = serde_json::from_slice(&m.data).expect("json");
                        assert_eq!(v["round"], round as u64, "messages of one round in order");
                        assert_eq!(v["i"], seen as u64);
                        seen += 1;
                    }
                    Ev::State(st) => {
                        // `connecting` and `connected` come before a round's first message,
                        // `backoff` after its last.
                        let want = if state_name(&st) == "backoff" {
                            BURST
                        } else {
                            0
                        };
                        assert_eq!(
                        seen, want,
                        "gRPC: `{}` ({}) arrived after {seen} of round {round}'s {BURST} messages",
                        state_name(&st), st.reason
                    );
                        if state_name(&st) == "backoff" {
                            round += 1;
                            seen = 0;
                        }
                    }
                    Ev::Gap(g) => panic!("unexpected gap {g:?}"),
                }
            }
        };
    let check_ndjson = async {
        let (mut round, mut seen) = (0usize, 0usize);
        while round < rounds {
            let v = ndjson.recv(T).await;
            match v["type"].as_str() {
                Some("message") => {
                    let m: serde_json::Value =
                        serde_json::from_str(v["data"].as_str().expect("text")).expect("json");
                    assert_eq!(m["round"], round as u64, "messages of one round in order");
                    assert_eq!(m["i"], seen as u64);
                    seen += 1;
                }
                Some("state") => {
                    let want = if v["state"] == "backoff" { BURST } else { 0 };
                    assert_eq!(
                        seen, want,
                        "NDJSON: {v} arrived after {seen} of round {round}'s {BURST} messages"
                    );
                    if v["state"] == "backoff" {
                        round += 1;
                        seen = 0;
                    }
                }
                _ => panic!("unexpected line {v}"),
            }
        }
    };
    tokio::join!(upstream, check_grpc, check_ndjson);
}

#[tokio::test]
async fn a_state_change_never_overtakes_the_messages_before_it() {
    burst_then_close("", 40).await;
}

#[tokio::test]
async fn a_state_change_never_overtakes_messages_waiting_for_their_commit() {
    // With resume every message is committed before subscribers see it: the close is read
    // while the burst's commit is still under way.
    burst_then_close("[endpoints.feed.resume]\nid_pointer = \"/id\"\n", 40).await;
}

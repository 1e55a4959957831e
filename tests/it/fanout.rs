//! One upstream, several subscribers on both APIs: same messages, contiguous seqs, kinds kept.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use ws_sidecar::endpoint::State;
use ws_sidecar::proto::Kind;

use crate::support::daemon::{next_message, start_daemon, subscribe};
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn one_upstream_fans_out_to_grpc_and_ndjson() {
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.feed]\nurl = \"{}\"\n",
        up.url("/feed")
    ))
    .await;
    let conn = up.next_accepted_within(T).await.expect("daemon connects");
    d.wait_state("feed", State::Connected, T).await;

    let mut grpc = Vec::new();
    for _ in 0..3 {
        let mut c = d.grpc().await;
        grpc.push(subscribe(&mut c, "feed", None).await);
    }
    let mut nd = d.ndjson().await;
    nd.send(json!({"op": "subscribe", "endpoint": "feed"}))
        .await;
    let st = nd.recv_type("state", T).await;
    assert_eq!(st["state"], "connected");

    const N: usize = 60;
    for i in 0..N {
        if i % 2 == 0 {
            conn.send_text(&format!("{{\"n\":{i}}}"))
                .await
                .expect("send");
        } else {
            conn.send_binary([i as u8, 0xff, 0x00]).await.expect("send");
        }
    }

    for s in &mut grpc {
        for i in 0..N {
            let m = next_message(s, T).await;
            assert_eq!(m.seq, i as u64 + 1, "contiguous seq");
            assert_eq!(m.endpoint, "feed");
            if i % 2 == 0 {
                assert_eq!(m.kind, Kind::Text as i32);
                assert_eq!(&m.data[..], format!("{{\"n\":{i}}}").as_bytes());
            } else {
                assert_eq!(m.kind, Kind::Binary as i32);
                assert_eq!(&m.data[..], &[i as u8, 0xff, 0x00]);
            }
        }
    }
    for i in 0..N {
        let m = nd.recv_type("message", T).await;
        assert_eq!(m["seq"], i as u64 + 1);
        if i % 2 == 0 {
            assert_eq!(m["binary"], false);
            assert_eq!(m["data"], format!("{{\"n\":{i}}}"));
        } else {
            assert_eq!(m["binary"], true);
            let raw = base64::engine::general_purpose::STANDARD
                .decode(m["data"].as_str().expect("string"))
                .expect("base64");
            assert_eq!(raw, vec![i as u8, 0xff, 0x00]);
        }
    }
    let ep = d.endpoint("feed");
    assert_eq!(ep.log.last_seq(), N as u64);
    assert_eq!(ep.log.subscribers(), 4);
    d.stop().await;
}

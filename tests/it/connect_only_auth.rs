//! `auth.renew = "none"` (issue 13, item 7): a credential that only opens a connection, as
//! Kraken's REST token (valid 15 minutes to start a subscription) or Coinbase's JWT (2 minutes,
//! checked only when subscribing). The connection outlives the token; the next one gets a
//! fresh token, in its handshake and in its `on_connect` frames.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ws_sidecar::endpoint::State;

use crate::support::access::token_endpoint;
use crate::support::daemon::{next_message, start_daemon, subscribe};
use crate::support::{FakeUpstream, Reply};

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn connection_outlives_its_token_and_the_next_one_gets_a_fresh_token() {
    // Tokens `tok-N` living 2 s: renewal (either other mode) would be due at expiry.
    let tokens = token_endpoint("tok-").await;
    let up = FakeUpstream::start_with(|_, _| Reply::Accept).await;
    let d = start_daemon(&format!(
        "[endpoints.a]\nurl = \"{}\"\n\
         on_connect = ['{{\"method\":\"subscribe\",\"params\":{{\"channel\":\"executions\",\"token\":\"{{{{token}}}}\"}}}}']\n\
         [endpoints.a.auth]\n\
         token = {{ oauth2 = {{ token_url = \"{}\", client_id = \"app\", client_secret = \"s3cret-client\" }} }}\n\
         renew = \"none\"\n",
        up.url("/"),
        tokens.url
    ))
    .await;
    let c1 = up.next_accepted_within(T).await.expect("connects");
    assert_eq!(c1.header("authorization"), Some("Bearer tok-1"));
    assert_eq!(
        c1.recv_text().await,
        r#"{"method":"subscribe","params":{"channel":"executions","token":"tok-1"}}"#
    );
    let mut client = d.grpc().await;
    let mut s = subscribe(&mut client, "a", None).await;

    // Past the token's expiry (shown in status), with margin for a renewal that would have
    // been due at expiry: the connection is still the first one.
    let ep = d.endpoint("a");
    let expires_nanos = ep.stats.auth_expires_at.load(Ordering::Relaxed);
    assert!(expires_nanos > 0, "the token's expiry is known");
    let expires = UNIX_EPOCH + Duration::from_nanos(expires_nanos);
    let wait = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_millis(1500);
    tokio::time::sleep(wait).await;
    c1.send_text(r#"{"channel":"executions","n":1}"#)
        .await
        .expect("send");
    let m = next_message(&mut s, T).await;
    assert_eq!(&m.data[..], br#"{"channel":"executions","n":1}"#);
    assert!(!c1.is_closed(), "the connection outlived its token");
    assert_eq!(up.accepted(), 1, "no reconnect at expiry");
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 1, "no renewal");
    assert_eq!(ep.stats.auth_renewals_ok.load(Ordering::Relaxed), 0);
    assert_eq!(ep.state().state, State::Connected);

    // The upstream drops it: the next connection opens with a fresh token.
    c1.close(1001, "going away").await.expect("close");
    let c2 = up.next_accepted_within(T).await.expect("reconnects");
    assert_eq!(c2.header("authorization"), Some("Bearer tok-2"));
    assert_eq!(
        c2.recv_text().await,
        r#"{"method":"subscribe","params":{"channel":"executions","token":"tok-2"}}"#
    );
    d.stop().await;
}

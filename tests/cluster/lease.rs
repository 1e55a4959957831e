//! Leadership per endpoint (`src/cluster/lease.rs`): the KV lease against a real server.

use std::time::{Duration, Instant};

use ws_sidecar::cluster::lease::{LeaseError, LeaseEvent, Leases, RenewError};

use crate::support::nats::NatsServer;
use crate::support::with_timeout;
use crate::{connect, start};

/// Short, so that waiting a TTL out keeps the tests quick; the shortest JetStream allows.
const TTL: Duration = Duration::from_secs(1);

/// How long after the TTL the server may take to notice an expiry and say so.
const EXPIRY_SLACK: Duration = Duration::from_secs(10);

/// Two hosts' lease handles on one server (kept alive by the first value); `None` when there
/// is no server binary.
async fn two_hosts(test: &str) -> Option<(NatsServer, Leases, Leases)> {
    let (server, js_a) = start(test).await?;
    let a = Leases::open(&js_a, TTL).await.expect("open leases on a");
    let b = Leases::open(&connect(&server).await, TTL)
        .await
        .expect("open leases on b");
    Some((server, a, b))
}

#[tokio::test]
async fn two_contenders_exactly_one_holds() {
    let Some((_server, a, b)) = two_hosts("two_contenders_exactly_one_holds").await else {
        return;
    };
    let (got_a, got_b) = with_timeout(Duration::from_secs(10), async {
        tokio::join!(a.acquire("prices", "host-a"), b.acquire("prices", "host-b"))
    })
    .await;
    let (got_a, got_b) = (got_a.expect("acquire a"), got_b.expect("acquire b"));
    let held = match (got_a, got_b) {
        (Some(held), None) | (None, Some(held)) => held,
        (a, b) => panic!("exactly one holder expected, got a={a:?} b={b:?}"),
    };
    let holder = a.holder("prices").await.expect("read holder");
    let (name, epoch) = holder.expect("someone holds it");
    assert!(name == "host-a" || name == "host-b", "holder {name}");
    assert_eq!(epoch, held.epoch());
    // Another endpoint is another lease.
    assert!(a
        .acquire("orders", "host-a")
        .await
        .expect("acquire")
        .is_some());
}

#[tokio::test]
async fn the_holder_renews_and_keeps_it_past_several_ttls() {
    let Some((_server, a, b)) = two_hosts("the_holder_renews_and_keeps_it_past_several_ttls").await
    else {
        return;
    };
    let mut held = a
        .acquire("prices", "host-a")
        .await
        .expect("acquire")
        .expect("free");
    let first_epoch = held.epoch();
    let start = Instant::now();
    // Renewing at a third of the TTL is the renewal schedule under test, not a synchronisation.
    let mut every = tokio::time::interval(TTL / 3);
    while start.elapsed() < TTL * 3 + TTL / 2 {
        every.tick().await;
        let before = held.epoch();
        held = with_timeout(Duration::from_secs(5), held.clone().renew())
            .await
            .expect("renew");
        assert!(held.epoch() > before, "epoch grows on renew");
        assert_eq!(held.term(), first_epoch, "the term stays");
        assert!(held.valid_until() > Instant::now());
        let taken = b.acquire("prices", "host-b").await.expect("acquire b");
        assert!(
            taken.is_none(),
            "b took a renewed lease at {:?}",
            start.elapsed()
        );
    }
    let (name, _) = b.holder("prices").await.expect("holder").expect("held");
    assert_eq!(name, "host-a");
}

#[tokio::test]
async fn a_holder_that_stops_renewing_loses_it_and_the_other_takes_over() {
    let Some((_server, a, b)) =
        two_hosts("a_holder_that_stops_renewing_loses_it_and_the_other_takes_over").await
    else {
        return;
    };
    let acquired = Instant::now();
    let old = a
        .acquire("prices", "host-a")
        .await
        .expect("acquire")
        .expect("free");
    // The follower's way: watch first, then try, then wait for the vacancy.
    let mut watch = b.watch("prices").await.expect("watch");
    assert!(b
        .acquire("prices", "host-b")
        .await
        .expect("try b")
        .is_none());
    with_timeout(TTL + EXPIRY_SLACK, watch.vacated())
        .await
        .expect("watch the lease");
    assert!(
        acquired.elapsed() >= TTL,
        "vacant after {:?}, before the ttl",
        acquired.elapsed()
    );
    let new = b
        .acquire("prices", "host-b")
        .await
        .expect("acquire b")
        .expect("vacant");
    assert!(
        new.epoch() > old.epoch(),
        "{} > {}",
        new.epoch(),
        old.epoch()
    );
    assert_eq!(
        with_timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("event"),
        LeaseEvent::Held {
            holder: "host-b".into(),
            epoch: new.epoch()
        }
    );
}

#[tokio::test]
async fn a_stale_holders_renew_is_lost_once_another_holds() {
    let Some((_server, a, b)) = two_hosts("a_stale_holders_renew_is_lost_once_another_holds").await
    else {
        return;
    };
    let stale = a
        .acquire("prices", "host-a")
        .await
        .expect("acquire")
        .expect("free");
    let mut watch = b.watch("prices").await.expect("watch");
    with_timeout(TTL + EXPIRY_SLACK, watch.vacated())
        .await
        .expect("watch");
    let new = b
        .acquire("prices", "host-b")
        .await
        .expect("acquire b")
        .expect("vacant");
    assert!(
        Instant::now() >= stale.valid_until(),
        "a's own deadline passed too"
    );
    match stale.renew().await {
        Err(RenewError::Lost(lost)) => {
            assert_eq!(lost.endpoint, "prices");
            let text = lost.to_string();
            assert!(text.contains("lost"), "{text}");
        }
        other => panic!("a stale renew must be lost, got {other:?}"),
    }
    // The new holder is unaffected.
    let renewed = new.renew().await.expect("b renews");
    assert_eq!(
        b.holder("prices").await.expect("holder"),
        Some(("host-b".into(), renewed.epoch()))
    );
}

#[tokio::test]
async fn a_bucket_with_another_ttl_is_refused() {
    let Some((_server, js)) = start("a_bucket_with_another_ttl_is_refused").await else {
        return;
    };
    Leases::open(&js, TTL).await.expect("create with 1s");
    match Leases::open(&js, TTL * 2).await {
        Err(e @ LeaseError::TtlMismatch { .. }) => {
            assert!(e.to_string().contains("same lease ttl"), "{e}")
        }
        other => panic!("expected a ttl mismatch, got {other:?}"),
    }
    assert!(matches!(
        Leases::open(&js, Duration::from_millis(500)).await,
        Err(LeaseError::TtlTooShort(_))
    ));
}

//! The outbox's unit tests: limits, idempotency keys, wait-for-sent, restore from the store.

use super::*;
use crate::store::RestoreLimits;

fn outbox(max_messages: usize, max_bytes: usize, max_age: Duration) -> Outbox {
    Outbox::new(OutboxConfig {
        max_messages,
        max_bytes,
        max_age,
        durable: false,
    })
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

async fn push(o: &Outbox, s: &'static str) -> Result<u64, PublishError> {
    o.push(Kind::Text, b(s), None, false).await.map(|r| r.0)
}

#[tokio::test]
async fn fifo_and_removal_only_after_sent() {
    let o = outbox(10, 1000, Duration::from_secs(60));
    for s in ["a", "b", "c"] {
        push(&o, s).await.expect("room");
    }
    let first = o.peek_after(0, 2);
    assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
    // Nothing marked sent: a new connection starts from the head again.
    assert_eq!(o.peek_after(0, 10).len(), 3);
    o.mark_sent(2);
    assert_eq!(o.depth(), 1);
    assert_eq!(o.peek_after(0, 10)[0].data, b("c"));
}

#[tokio::test]
async fn limits_refuse() {
    let o = outbox(2, 1000, Duration::from_secs(60));
    push(&o, "a").await.expect("room");
    push(&o, "b").await.expect("room");
    assert!(matches!(
        push(&o, "c").await,
        Err(PublishError::Full { depth: 2, .. })
    ));
    let o = outbox(10, 3, Duration::from_secs(60));
    push(&o, "ab").await.expect("room");
    assert!(push(&o, "cd").await.is_err());
    assert_eq!(push(&o, "abcd").await, Err(PublishError::TooLarge(4)));
}

#[tokio::test]
async fn idempotency_key_queues_once() {
    let o = outbox(10, 1000, Duration::from_secs(60));
    let (a, _) = o
        .push(Kind::Text, b("x"), Some("k1"), false)
        .await
        .expect("room");
    let (b2, _) = o
        .push(Kind::Text, b("x"), Some("k1"), false)
        .await
        .expect("room");
    assert_eq!(a, b2);
    assert_eq!(o.depth(), 1);
}

#[tokio::test]
async fn wait_sent_and_expiry() {
    let o = outbox(10, 1000, Duration::from_millis(50));
    let (id, rx) = o.push(Kind::Text, b("x"), None, true).await.expect("room");
    o.mark_sent(id);
    assert_eq!(rx.expect("asked").await, Ok(SentOutcome::Sent));
    let (_, rx) = o.push(Kind::Text, b("y"), None, true).await.expect("room");
    tokio::time::sleep(Duration::from_millis(80)).await;
    o.expire();
    assert_eq!(rx.expect("asked").await, Ok(SentOutcome::Expired));
    assert_eq!(o.expired(), 1);
    assert_eq!(o.depth(), 0);
}

#[tokio::test]
async fn durable_entries_survive_a_reopen_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("store");
    let cfg = OutboxConfig {
        max_messages: 1000,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        durable: true,
    };
    let store = Store::open(&path).expect("open");
    let o = Arc::new(Outbox::restored(
        cfg.clone(),
        Arc::from("ep"),
        Some(store.clone()),
        &Restored::default(),
    ));
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let o = Arc::clone(&o);
        tasks.push(tokio::spawn(async move {
            o.push(
                Kind::Binary,
                Bytes::from(i.to_be_bytes().to_vec()),
                None,
                false,
            )
            .await
            .map(|r| r.0)
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("stored");
    }
    o.push(Kind::Text, b("k"), Some("key"), false)
        .await
        .expect("stored");
    o.mark_sent(10);
    store.close();
    drop((o, store));

    let store = Store::open(&path).expect("reopen");
    let restored = store
        .restore("ep", RestoreLimits::default())
        .expect("restore");
    let o = Outbox::restored(cfg, Arc::from("ep"), Some(store), &restored);
    let ids: Vec<u64> = o.peek_after(0, 1000).iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (11..=65).collect::<Vec<_>>(),
        "unsent entries come back in order"
    );
    let (again, _) = o
        .push(Kind::Text, b("k"), Some("key"), false)
        .await
        .expect("known");
    assert_eq!(again, 65, "idempotency key survives the restart");
    let (next, _) = o
        .push(Kind::Text, b("n"), None, false)
        .await
        .expect("stored");
    assert_eq!(next, 66, "ids continue");
}

#[tokio::test]
async fn clear_drops_a_prefix_and_keeps_fifo_and_keys() {
    let o = outbox(10, 1000, Duration::from_secs(60));
    let (first, _) = o
        .push(Kind::Text, b("a"), Some("k1"), false)
        .await
        .expect("room");
    let (_, waiter) = o.push(Kind::Text, b("bb"), None, true).await.expect("room");
    push(&o, "c").await.expect("room");
    let seen = o.snapshot();
    assert_eq!(
        (seen.depth, seen.bytes, seen.oldest_id, seen.newest_id),
        (3, 4, 1, 3)
    );
    // Published after the operator looked: not theirs to drop.
    push(&o, "d").await.expect("room");
    let cleared = o.clear(Some(seen.newest_id)).await.expect("cleared");
    assert_eq!(
        cleared,
        Cleared {
            messages: 3,
            bytes: 4
        }
    );
    assert_eq!(
        waiter.expect("asked").await,
        Ok(SentOutcome::Cleared),
        "a wait=SENT publisher learns its message will never be sent"
    );
    let left: Vec<Bytes> = o.peek_after(0, 10).into_iter().map(|e| e.data).collect();
    assert_eq!(left, vec![b("d")]);
    let (again, _) = o
        .push(Kind::Text, b("a"), Some("k1"), false)
        .await
        .expect("known key");
    assert_eq!(
        again, first,
        "a cleared message's key is still not queued twice"
    );
    assert_eq!(push(&o, "e").await, Ok(5), "ids continue");
    assert_eq!(o.clear(None).await.expect("cleared").messages, 2);
    assert_eq!(o.snapshot(), Snapshot::default());
    assert_eq!(o.clear(None).await.expect("nothing"), Cleared::default());
}

#[tokio::test]
async fn a_cleared_durable_outbox_stays_cleared_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("store");
    let cfg = OutboxConfig {
        max_messages: 1000,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        durable: true,
    };
    let store = Store::open(&path).expect("open");
    let o = Outbox::restored(
        cfg.clone(),
        Arc::from("ep"),
        Some(store.clone()),
        &Restored::default(),
    );
    for s in ["a", "b", "c"] {
        push(&o, s).await.expect("stored");
    }
    o.push(Kind::Text, b("k"), Some("key"), false)
        .await
        .expect("stored");
    let cleared = o.clear(Some(3)).await.expect("cleared");
    assert_eq!(cleared.messages, 3);
    store.close();
    drop((o, store));
    let store = Store::open(&path).expect("reopen");
    let restored = store
        .restore("ep", RestoreLimits::default())
        .expect("restore");
    let o = Outbox::restored(cfg, Arc::from("ep"), Some(store), &restored);
    let ids: Vec<u64> = o.peek_after(0, 1000).iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        vec![4],
        "only the message after the cleared ones is back"
    );
    assert_eq!(push(&o, "n").await, Ok(5), "ids are not reused");
}
